"""Coupled L2 regularisation on every parameter (weights and biases)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod, trainable_parameters


class L2(PlasticityMethod):
    """Coupled L2: ``grad += weight_decay * theta`` before the optimizer step.

    This is the gradient of ``weight_decay / 2 * ||theta||^2`` added to the task
    gradient, on all parameters, biases included, as both LoP and SC do. With SGD it
    equals ``SGD(weight_decay=...)``; with Adam it is Adam's own (coupled)
    ``weight_decay``, *not* AdamW: the decay goes through Adam's normalisation.

    ``after_backward`` runs one in-place ``torch._foreach_add_`` and allocates no
    tensor. A fast path that updates weights without ``.grad`` applies the same term
    itself: ``theta -= lr * weight_decay * theta`` with SGD.

    Args:
        model: the network.
        optimizer: unused; kept so every method has the same signature.
        weight_decay: lambda (SC: 1e-3; LoP PMNIST: 1e-4).
    """

    name = "l2"
    order = 20

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        weight_decay: float = 1e-3,
    ):
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.params = trainable_parameters(model)

    def after_backward(self) -> None:
        if self.weight_decay == 0:
            return
        params = [p for p in self.params if p.grad is not None]
        if params:
            torch._foreach_add_(
                [p.grad for p in params], params, alpha=self.weight_decay
            )

    def hyperparameters(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay}
