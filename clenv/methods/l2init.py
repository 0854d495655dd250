"""L2 Init, regenerative regularisation (Kumar, Marklund & Van Roy, *Maintaining
Plasticity in Continual Learning via Regenerative Regularization*, CoLLAs 2024,
arXiv:2308.11958): L2 toward the initial parameters instead of toward zero."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod
from clenv.metrics.hessian import trainable_parameters


class L2Init(PlasticityMethod):
    """``grad += weight_decay * (theta - theta_0)`` before the optimizer step.

    ``theta_0`` is every trainable parameter (weights and biases) as it is when the
    method is built: build it right after the model's initialisation. With SGD of
    step size alpha the update is Kumar et al.'s (App. A.3)
    ``theta <- (1 - alpha lambda) theta + alpha lambda theta_0 - alpha grad L``; the
    paper writes the penalty ``lambda ||theta - theta_0||^2`` (Sec. 3), whose gradient
    would carry a factor 2 that its own update (App. A.3) and this method leave out,
    as :class:`clenv.methods.L2` does for ``lambda/2 ||theta||^2``.

    ``theta_0`` travels in :meth:`state_dict`, so a resumed run regularises toward the
    first run's initial weights, not toward those of the model it was rebuilt with.
    A full reset (``reset``) does not move ``theta_0``.

    Args:
        model: the network.
        optimizer: unused (the term goes through whatever optimizer steps).
        weight_decay: lambda. Default 1e-2: Kumar et al. sweep 1e-2..1e-5 and find
            1e-2 best across their problems (App. A.2.5, Fig. 12). Neither SC nor LoP
            runs L2 Init, so no preset sets it.
    """

    name = "l2init"
    order = 21

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        weight_decay: float = 1e-2,
    ):
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.params = trainable_parameters(model)
        self.initial = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.weight_decay == 0:
            return
        for param, initial in zip(self.params, self.initial, strict=True):
            pull = (param - initial).mul_(self.weight_decay)
            if param.grad is None:
                param.grad = pull
            else:
                param.grad.add_(pull)

    def hyperparameters(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay}

    def state_dict(self) -> dict[str, Any]:
        return {"initial": [t.clone() for t in self.initial]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["initial"]) != len(self.initial):
            raise ValueError(
                f"l2init state holds {len(state['initial'])} tensors, this model has "
                f"{len(self.initial)} parameters; build the same model before loading"
            )
        for initial, saved in zip(self.initial, state["initial"], strict=True):
            initial.copy_(saved)
