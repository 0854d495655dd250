"""``make_loss``: the supervised learner's loss by name, ``(logits, labels) -> loss``.

- ``"cross_entropy"`` (the default): ``F.cross_entropy(logits, labels)``, the mean over
  the batch, exactly the call the supervised agent makes.
- ``"mse"``: the squared error between the outputs and the one-hot labels, averaged
  over the batch *and* the classes: SC's ``bp_mse`` (Prakash et al. 2026,
  ``permuted_mnist/train_permuted_mnist.py:131-133``: ``jnp.mean((output -
  one_hot) ** 2)``; selected by ``loss_type='mse'`` in
  ``permuted_mnist/scripts/hyperparams/bp_mse.py:15``, SC's only MSE runs, on
  Permuted MNIST). No factor 1/2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

LOSSES = ("cross_entropy", "mse")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def one_hot_mse(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean((logits - one_hot(labels)) ** 2)`` over the batch and the classes.

    Logits set to -inf (the classes :func:`clenv.evaluation.masked_logits` hides on
    Incremental CIFAR) are left out: the mean runs over the live entries.

    Example:
        >>> logits = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        >>> one_hot_mse(logits, torch.tensor([0, 1])).item()  # (0 + 0 + 0 + 1) / 4
        0.25
    """
    target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    live = torch.isfinite(logits)
    if bool(live.all()):
        return F.mse_loss(logits, target)
    # Classes masked with -inf (clenv.evaluation.masked_logits) are left out of the
    # mean; filling them before squaring keeps their gradient 0, not NaN.
    error = (logits.masked_fill(~live, 0.0) - target).square().masked_fill(~live, 0.0)
    return error.sum() / live.sum()


def make_loss(name: str = "cross_entropy") -> Loss:
    """The loss ``name`` as a callable ``(logits, labels) -> scalar``.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "mse":
        return one_hot_mse
    raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
