"""ReDo: recycle dormant neurons (Sokar, Agarwal, Castro & Evci, "The Dormant Neuron
Phenomenon in Deep Reinforcement Learning", ICML 2023: the ReDo algorithm).

Every ``interval`` steps, each hidden unit's score
``s_i = mean|h_i| / mean_k mean|h_k|`` is computed and the units with ``s_i < tau``
are reinitialised: fresh incoming weights, bias 0, zero outgoing weights, optimizer
state zeroed. The score is the same as :func:`clenv.metrics.dormant_unit_mask`
(strict ``<``, as PROTOCOLS; Sokar et al. write ``<=``).

Sokar et al. score the units on one batch; here ``mean|h_i|`` averages every training
forward since the last reset, which is the same for large batches and still
meaningful at batch 1 (Permuted MNIST), where one sample says little.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.units import (
    HiddenLayerSpec,
    UnitMethod,
    per_unit_mean,
    reinitialize_units,
    unit_features,
)


class ReDo(UnitMethod):
    """Reinitialise dormant units every ``interval`` steps.

    Args:
        model: the network.
        optimizer: whose state of reset units is zeroed.
        threshold: tau (0.025 common; LoP's Ant config 0.1).
        interval: steps between resets (LoP's Ant config 100; Sokar et al. 1000).
        init_gain: gain of the fresh weights' bound; default from each activation.
        hidden_layers: explicit hidden-layer spec (see :func:`find_hidden_layers`).
        seed: seed of the generator that draws fresh weights.
    """

    name = "redo"
    order = 50

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        threshold: float = 0.025,
        interval: int = 1000,
        init_gain: float | None = None,
        hidden_layers: HiddenLayerSpec = None,
        seed: int = 0,
    ):
        check_range("threshold (tau)", threshold, 0)
        if interval < 1:
            raise ValueError(
                f"interval must be a positive number of steps, got {interval}"
            )
        super().__init__(model, optimizer, init_gain, hidden_layers, seed)
        self.threshold = float(threshold)
        self.interval = int(interval)
        # to be filled in runtime
        self.num_steps = 0
        self.activity_sums = self.new_unit_buffers()
        self.num_reset = [0 for _ in self.hidden]
        self.last_reset = [t[:0].long() for t in self.activity_sums]

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """Accumulate each layer's mean |h|; reset dormant units every interval."""
        with torch.no_grad():
            for total, hidden, h in zip(
                self.activity_sums, self.hidden, features, strict=True
            ):
                h = unit_features(hidden, h)  # (samples, units, k, ...) for k > 1
                total.add_(per_unit_mean(h.abs()).to(total.dtype))
            self.num_steps += 1
            if self.num_steps % self.interval:
                return
            for index, hidden in enumerate(self.hidden):
                units = self.dormant_units(index)
                self.last_reset[index] = units
                reinitialize_units(
                    hidden,
                    units,
                    self.bounds[index],
                    self.rng.generator,
                    self.optimizer,
                )
                self.num_reset[index] += units.numel()
                self.activity_sums[index].zero_()

    def dormant_units(self, index: int) -> torch.Tensor:
        """Indices of layer ``index``'s units whose score is below tau now."""
        activity = self.activity_sums[index]
        layer_mean = activity.mean()
        if layer_mean <= 0:
            return torch.arange(activity.numel(), device=activity.device)
        return torch.nonzero(activity / layer_mean < self.threshold).reshape(-1)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "interval": self.interval,
            "layers": [h.name for h in self.hidden],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "activity_sums": [t.clone() for t in self.activity_sums],
            "num_reset": list(self.num_reset),
            "rng": self.rng.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        for mine, saved in zip(self.activity_sums, state["activity_sums"], strict=True):
            mine.copy_(saved)
        self.num_reset = list(state["num_reset"])
        self.rng.load(state["rng"])
