"""Loss closures ``loss_fn(model, batch) -> scalar`` for the curvature metrics.

Every curvature function of :mod:`clenv.metrics` takes a model, a loss closure and a
list of batches, so any objective works: cross-entropy on ``(inputs, labels)``, or a
PPO clipped loss over a rollout (see tests/test_metrics_curvature.py). A closure
returns the *mean* loss over its batch; the dataset loss is the sample-weighted mean
over batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    """Mean cross-entropy of ``model(inputs)`` against integer ``labels``.

    With this loss, G in :func:`~clenv.metrics.kfac_rank` is the *empirical* Fisher
    factor (true labels).
    """
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels)


def sampled_cross_entropy_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Cross-entropy against labels drawn from the model's own softmax.

    Its gradients are those of the *model-sampled* (Monte-Carlo) Fisher, the "type-2
    / MC" G factor of KFAC (Martens & Grosse 2015, Sec. 5); pass it to
    :func:`~clenv.metrics.kfac_rank` for that variant. The batch's labels are ignored.
    Uses the global torch RNG (callers wrap it in a forked RNG).
    """
    inputs, _ = batch
    logits = model(inputs)
    with torch.no_grad():
        labels = torch.distributions.Categorical(logits=logits).sample()
    return F.cross_entropy(logits, labels)


def batch_size(batch: Any) -> int:
    """Leading dimension of the first tensor found in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise ValueError("a batch tensor needs a leading sample dimension")
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, Sequence | type({}.values())):
        for value in values:
            try:
                return batch_size(value)
            except ValueError:
                continue
    raise ValueError(
        f"cannot infer the batch size of a {type(batch).__name__}: no tensor inside; "
        "pass batch_size_fn=lambda batch: <number of samples>"
    )


def split_batch(batch: Any, max_size: int) -> list[Any]:
    """Split a batch (tensor, tuple/list/dict of tensors sharing dim 0) into chunks.

    Curvature products cost memory linear in the chunk size; e.g. 2000 samples of a
    wide ConvNet fit a GPU in chunks of 500. Non-tensor leaves are repeated.

    Example:
        >>> x, y = torch.zeros(5, 2), torch.arange(5)
        >>> [tuple(c[0].shape) for c in split_batch((x, y), 2)]
        [(2, 2), (2, 2), (1, 2)]
    """
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    total = batch_size(batch)
    return [
        _slice(batch, start, min(start + max_size, total))
        for start in range(0, total, max_size)
    ]


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {key: _slice(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_slice(value, start, stop) for value in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_slice(value, start, stop) for value in batch)
    return batch
