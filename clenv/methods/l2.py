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
    tensor. At batch 1 that pass over every gradient is memory-bound and costs about a
    quarter of a plain step of a large MLP; ``in_backward=True`` instead adds the term
    inside ``loss.backward()``, from a post-accumulate-grad hook, while each gradient
    is still in cache (see docs/methods.md for the measured difference). Then *every*
    ``.backward()`` that accumulates into ``.grad`` adds ``weight_decay * theta`` (as
    if the penalty were part of each loss backpropagated): with gradient accumulation
    over k backward calls per step it is added k times, and a gradient written
    without ``backward()`` gets none. A fast path that updates weights without
    ``.grad`` applies the term itself: ``theta -= lr * weight_decay * theta`` (SGD).

    Args:
        model: the network.
        optimizer: unused; kept so every method has the same signature.
        weight_decay: lambda (SC: 1e-3; LoP PMNIST: 1e-4).
        in_backward: add the term during ``backward()`` instead of in
            ``after_backward``.
    """

    name = "l2"
    order = 20

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        weight_decay: float = 1e-3,
        in_backward: bool = False,
    ):
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.in_backward = bool(in_backward)
        self.params = trainable_parameters(model)
        self._hooks = []
        if self.in_backward:
            self._hooks = [
                p.register_post_accumulate_grad_hook(self._add_to_grad)
                for p in self.params
            ]

    def _add_to_grad(self, param: torch.Tensor) -> None:
        if self.weight_decay:
            param.grad.add_(param.detach(), alpha=self.weight_decay)

    def remove(self) -> None:
        """Remove the backward hooks (``in_backward=True``) from the parameters."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def after_backward(self) -> None:
        if self.weight_decay == 0 or self.in_backward:
            return
        params = [p for p in self.params if p.grad is not None]
        if params:
            torch._foreach_add_(
                [p.grad for p in params], params, alpha=self.weight_decay
            )

    def hyperparameters(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay, "in_backward": self.in_backward}
