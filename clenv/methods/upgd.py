"""Utility-based Perturbed Gradient Descent (Elsayed & Mahmood, *Addressing Loss of
Plasticity and Catastrophic Forgetting in Continual Learning*, ICLR 2024; official
code ``github.com/mohmdelsayed/upgd``).

UPGD is an optimizer. Here it rewrites ``.grad`` in ``after_backward`` so that the
plain SGD step that follows is UPGD's update, which keeps it a ``--reg`` method that
composes with the others and runs in both agents' loops unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.base import PlasticityMethod, SeededGenerator
from clenv.metrics.hessian import trainable_parameters


def _not_plain_sgd(optimizer: torch.optim.Optimizer | None) -> str | None:
    """Why ``optimizer.step()`` is not ``theta -= lr * grad`` (None when it is)."""
    if optimizer is None:
        return "no optimizer was given"
    if type(optimizer) is not torch.optim.SGD:
        return f"the optimizer is {type(optimizer).__name__}"
    for group in optimizer.param_groups:
        for key in ("momentum", "weight_decay"):
            if group.get(key):
                return f"the SGD has {key}={group[key]}"
        for key in ("nesterov", "maximize"):
            if group.get(key):
                return f"the SGD has {key}=True"
    return None


class UPGD(PlasticityMethod):
    """UPGD's update through a plain SGD step (step size alpha = SGD's ``lr``).

    Every step, for every parameter w with gradient g (``.grad`` as the
    regularisers' ``after_backward`` terms have left it: UPGD's order, 35, comes
    after L2, L2 Init, spectral, Parseval and S&P's decay):

    * utility trace ``u <- beta u + (1 - beta) (-g * w)`` (the first-order utility);
    * ``eta`` = the largest entry of every trace (one global maximum);
    * scaled utility ``s = sigmoid((u / (1 - beta^t)) / eta)``;
    * ``.grad <- weight_decay * w + (g + xi) * (1 - s)``, xi ~ N(0, sigma^2),

    so SGD's ``w <- w - alpha .grad`` is UPGD's
    ``w <- (1 - alpha weight_decay) w - alpha (g + xi)(1 - s)``: the official
    ``FirstOrderGlobalUPGD`` (``core/optim/weight_upgd/first_order.py:74-111``,
    re-read against the official repository for issue 14), Algorithm 1 of the paper. The weight decay is not gated by the utility. With
    ``protect_gradient=False`` only the noise is gated,
    ``(g + xi (1 - s))``: the official ``FirstOrderNonprotectingGlobalUPGD``
    (``first_order.py:5-42``).

    The README of the official repository writes the step as
    ``(1 - alpha weight_decay) w - 2 alpha (...)``; that is this update with SGD's lr
    set to 2 alpha and ``weight_decay`` halved.

    UPGD needs the step to be exactly ``w -= lr * grad``: a ``torch.optim.SGD`` with
    no momentum, no weight decay of its own, not nesterov, not maximize. Any other
    optimizer (PPO's Adam) is refused with a ValueError; so is a missing one, at the
    first step.

    Defaults are the UPGD class of the official README (``README.md:8-37``:
    ``weight_decay`` 1e-3,
    ``beta_utility`` 0.999, ``sigma`` 1e-3; the paper tunes them per problem over
    beta 0.999/0.9999, sigma 0.01..1, weight decay 0..0.1,
    ``experiments/input_permuted_mnist.py``). Neither SC nor LoP runs UPGD, so no
    preset sets it.

    Args:
        model: the network.
        optimizer: the plain SGD that steps ``model``.
        weight_decay: lambda of the (unprotected) weight decay.
        beta_utility: decay of the utility trace.
        sigma: standard deviation of the perturbation.
        protect_gradient: gate the gradient by the utility as well as the noise
            (UPGD); ``False``: the non-protecting variant.
        seed: seed of the noise generator.
    """

    name = "upgd"
    order = 35

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        weight_decay: float = 1e-3,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        protect_gradient: bool = True,
        seed: int = 0,
    ):
        check_range("beta_utility", beta_utility, 0, 1)
        check_range("sigma", sigma, 0)
        check_range("weight_decay", weight_decay, 0)
        self.reason = _not_plain_sgd(optimizer)
        if self.reason and optimizer is not None:
            raise ValueError(self._refusal())
        self.weight_decay = float(weight_decay)
        self.beta_utility = float(beta_utility)
        self.sigma = float(sigma)
        self.protect_gradient = bool(protect_gradient)
        self.params = trainable_parameters(model)
        self.utilities = [torch.zeros_like(p) for p in self.params]
        self.noises = [torch.empty_like(p) for p in self.params]  # drawn each step
        self.rng = SeededGenerator(self.params[0].device, seed)
        # to be filled in runtime
        self.step = 0

    def _refusal(self) -> str:
        return (
            f"upgd rewrites .grad so that a plain SGD step is UPGD's update, but "
            f"{self.reason}; build the model's optimizer as torch.optim.SGD(params, "
            "lr=...) (no momentum, no weight decay: UPGD has its own)"
        )

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.reason:
            raise ValueError(self._refusal())
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [p.grad for p in params]
        utilities = [self.utilities[i] for i in live]
        noises = [self.noises[i] for i in live]
        self.step += 1
        beta = self.beta_utility
        # u <- beta u + (1 - beta) (-g * w). Every torch._foreach_* call runs the
        # kernel that one call per tensor runs, so the numbers are those of the
        # per-tensor loop (bit for bit), with less Python per step.
        torch._foreach_mul_(utilities, beta)
        products = torch._foreach_mul(grads, params)
        torch._foreach_add_(utilities, products, alpha=-(1 - beta))
        global_max = torch.stack(torch._foreach_max(utilities)).max()
        bias_correction = 1 - beta**self.step
        for noise in noises:  # one draw per tensor, in order: the same stream
            torch.randn(noise.shape, generator=self.rng.generator, out=noise)
        torch._foreach_mul_(noises, self.sigma)
        # gate = 1 - sigmoid((u / (1 - beta^t)) / eta)
        gates = torch._foreach_div(utilities, bias_correction)
        torch._foreach_div_(gates, global_max)
        torch._foreach_sigmoid_(gates)
        torch._foreach_neg_(gates)
        torch._foreach_add_(gates, 1)
        if self.protect_gradient:
            torch._foreach_add_(grads, noises)
            torch._foreach_mul_(grads, gates)
        else:
            torch._foreach_mul_(noises, gates)
            torch._foreach_add_(grads, noises)
        torch._foreach_add_(grads, params, alpha=self.weight_decay)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "weight_decay": self.weight_decay,
            "beta_utility": self.beta_utility,
            "sigma": self.sigma,
            "protect_gradient": self.protect_gradient,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "utilities": [u.clone() for u in self.utilities],
            "rng": self.rng.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for utility, saved in zip(self.utilities, state["utilities"], strict=True):
            utility.copy_(saved)
        self.rng.load(state["rng"])
