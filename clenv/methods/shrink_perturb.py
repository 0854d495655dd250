"""Shrink & Perturb, continual form (LoP, Dohare et al. 2024, Methods; after Ash &
Adams, "On warm-starting neural network training", NeurIPS 2020).

Every step: coupled weight decay (the shrink; the same ``grad += lambda * theta`` as
:class:`clenv.methods.L2`) and, after the optimizer step, Gaussian noise
N(0, noise_std^2) added to every parameter (the perturb).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.base import SeededGenerator
from clenv.methods.l2 import L2


class ShrinkPerturb(L2):
    """Weight decay as :class:`L2` does it, N(0, sigma^2) noise in ``after_step``.

    The decay is L2's: inside a fused optimizer's update, else in ``after_backward``.

    The noise is drawn into buffers allocated once, with the method's own generator
    (its state is in :meth:`state_dict`, so a resumed run draws the same noise).

    Args:
        model: the network.
        optimizer: the optimizer; with a fused one the decay rides in its update.
        weight_decay: the shrink, coupled as L2 (LoP PMNIST 1e-4, ImageNet 1e-5).
        noise_std: sigma of the perturbation (LoP 1e-5).
        seed: seed of the noise generator.
    """

    name = "snp"
    order = 30

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        weight_decay: float = 1e-4,
        noise_std: float = 1e-5,
        seed: int = 0,
    ):
        super().__init__(model, optimizer, weight_decay)
        check_range("noise_std", noise_std, 0)
        self.noise_std = float(noise_std)
        self.rng = SeededGenerator(self.params[0].device, seed)
        self._noise = [torch.empty_like(p) for p in self.params]

    def after_step(self, inputs: Any = None) -> None:
        if self.noise_std == 0:
            return
        with torch.no_grad():
            for noise in self._noise:
                noise.normal_(0.0, self.noise_std, generator=self.rng.generator)
            torch._foreach_add_(self.params, self._noise)

    def hyperparameters(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay, "noise_std": self.noise_std}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.load(state["rng"])
