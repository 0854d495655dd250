"""Coupled L2 regularisation on every parameter (weights and biases)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.base import PlasticityMethod
from clenv.metrics.hessian import trainable_parameters


class L2(PlasticityMethod):
    """Coupled L2: ``grad += weight_decay * theta`` before the optimizer step.

    This is the gradient of ``weight_decay / 2 * ||theta||^2`` added to the task
    gradient, on all parameters, biases included, as both LoP and SC do. With SGD it
    equals ``SGD(weight_decay=...)``; with Adam it is Adam's own (coupled)
    ``weight_decay``, *not* AdamW: the decay goes through Adam's normalisation.

    Where the term is added (the result is the same; the cost is not):

    * **in the optimizer's fused update** (``fuse``): with ``SGD(fused=True)`` or
      ``Adam(fused=True)`` the method sets the optimizer's own ``weight_decay`` to
      ``weight_decay`` for the duration of each ``optimizer.step()`` (step pre- and
      post-hooks), so the fused kernel adds it in the pass it makes anyway: L2 costs
      nothing. ``.grad`` then holds the task gradient only, and the optimizer's
      state_dict keeps its own ``weight_decay`` (0), so checkpoints load either way.
      The default (``fuse=None``) does this whenever it is exact: a fused SGD or Adam
      (not AdamW, not ``maximize``) whose groups hold exactly the model's parameters
      and have no weight decay of their own.
    * **in** ``after_backward`` (otherwise): one in-place ``torch._foreach_add_``
      over every gradient. At batch 1 that memory-bound pass costs about a quarter of
      a plain step of a large MLP.
    * **inside** ``loss.backward()`` (``in_backward=True``): a post-accumulate-grad
      hook adds it while each gradient is still in cache. Then *every*
      ``.backward()`` that accumulates into ``.grad`` adds ``weight_decay * theta``
      (as if the penalty were part of each loss backpropagated): with gradient
      accumulation over k backward calls per step it is added k times, and a
      gradient written without ``backward()`` gets none.

    A fast path that updates weights without ``.grad`` applies the term itself:
    ``theta -= lr * weight_decay * theta`` (SGD).

    Args:
        model: the network.
        optimizer: the optimizer that steps ``model``; needed only to fuse.
        weight_decay: lambda (SC: 1e-3; LoP PMNIST: 1e-4).
        in_backward: add the term during ``backward()`` instead of in
            ``after_backward``.
        fuse: add the term in the optimizer's update: ``None`` (default) when exact
            (see above), ``True`` always (an error says why when it cannot be
            exact; an unfused optimizer is allowed but then slower than
            ``after_backward``), ``False`` never.
    """

    name = "l2"
    order = 20

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        weight_decay: float = 1e-3,
        in_backward: bool = False,
        fuse: bool | None = None,
    ):
        check_range("weight_decay", weight_decay, 0)
        self.weight_decay = float(weight_decay)
        self.in_backward = bool(in_backward)
        self.params = trainable_parameters(model)
        self._hooks = []
        reason = _cannot_fuse(optimizer, self.params)
        if fuse and (reason or self.in_backward):
            raise ValueError(
                "L2(fuse=True) cannot add the term in the optimizer's update: "
                + (reason or "in_backward=True adds it during backward() already")
                + "; pass fuse=None to fall back to after_backward"
            )
        self.fused = (
            not self.in_backward
            and reason is None
            and (bool(fuse) or (fuse is None and _is_fused(optimizer)))
        )
        if self.fused:
            self._hooks = [
                optimizer.register_step_pre_hook(self._set_decay),
                optimizer.register_step_post_hook(self._unset_decay),
            ]
        elif self.in_backward:
            self._hooks = [
                p.register_post_accumulate_grad_hook(self._add_to_grad)
                for p in self.params
            ]

    def _set_decay(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        for group in optimizer.param_groups:
            group["weight_decay"] = self.weight_decay

    @staticmethod
    def _unset_decay(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        for group in optimizer.param_groups:
            group["weight_decay"] = 0.0

    def _add_to_grad(self, param: torch.Tensor) -> None:
        if self.weight_decay:
            param.grad.add_(param.detach(), alpha=self.weight_decay)

    def remove(self) -> None:
        """Remove the hooks (``in_backward`` or fused) from the parameters/optimizer."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def after_backward(self) -> None:
        if self.weight_decay == 0 or self.in_backward or self.fused:
            return
        params = [p for p in self.params if p.grad is not None]
        if params:
            torch._foreach_add_(
                [p.grad for p in params], params, alpha=self.weight_decay
            )

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "weight_decay": self.weight_decay,
            "in_backward": self.in_backward,
            "fused": self.fused,
        }


def _is_fused(optimizer: torch.optim.Optimizer | None) -> bool:
    return optimizer is not None and all(g.get("fused") for g in optimizer.param_groups)


def _cannot_fuse(
    optimizer: torch.optim.Optimizer | None, params: list[nn.Parameter]
) -> str | None:
    """Why the optimizer's own weight_decay is not this L2 exactly (None: it is)."""
    if optimizer is None:
        return "no optimizer was given"
    if not isinstance(optimizer, torch.optim.SGD | torch.optim.Adam):
        return f"{type(optimizer).__name__} is not SGD or Adam"
    groups = optimizer.param_groups
    if any(g.get("decoupled_weight_decay") for g in groups):
        return f"{type(optimizer).__name__}'s weight decay is decoupled (AdamW)"
    if any(g.get("maximize") for g in groups):
        return "the optimizer maximizes (it would negate the term)"
    if any(g["weight_decay"] for g in groups):
        return "the optimizer has a weight_decay of its own"
    stepped = {id(p) for g in groups for p in g["params"]}
    if stepped != {id(p) for p in params}:
        return "the optimizer's parameters are not exactly the model's"
    return None
