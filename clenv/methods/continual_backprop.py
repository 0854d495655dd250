"""Continual Backprop (Dohare et al., "Loss of plasticity in deep continual learning",
Nature 2024, Methods, "Continual backpropagation"; LoP's ``lop/algos/gnt.py``).

Every step, per hidden layer: every unit ages by one; its utility is a running
average (decay 0.99, bias-corrected as Adam's moments) of

* ``"contribution"``: mean_k |w_out[k, i]| * mean_batch |h_i|, or
* ``"adaptable_contribution"``: mean_k |w_out[k, i]| * mean_batch |h_i - hbar_i|
  / mean_j |w_in[i, j]|, with hbar_i the bias-corrected running mean of h_i.

Among units older than ``maturity_threshold``, ``replacement_rate`` x (#eligible)
units are replaced per step; fractions accumulate across steps, so a rate of 1e-6 on
1000 units replaces one unit every 1000 steps. The ones replaced have the lowest
bias-corrected utility. A replaced unit gets incoming weights ~ U(-b, b) with
b = gain * sqrt(3 / fan_in), bias 0, zero outgoing weights, age 0, utility 0; the next
layer's bias absorbs the unit's running mean contribution ``w_out * hbar`` so the
output does not jump; its optimizer state (momentum, Adam moments) is zeroed.

Unlike LoP's ``gnt.py``, which zeroes the running mean before adding it to the next
bias (so nothing is absorbed), the mean is read before it is reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from clenv.methods.layers import HiddenLayer
from clenv.methods.units import (
    HiddenLayerSpec,
    UnitMethod,
    incoming_magnitude,
    outgoing_magnitude,
    per_unit_mean,
    reinitialize_units,
)

UTILITIES = ("contribution", "adaptable_contribution")


class ContinualBackprop(UnitMethod):
    """Continual Backprop: replace low-utility mature units with fresh ones.

    The utilities use each step's training-forward features, recorded by forward
    hooks on the hidden layers' activations (forwards under ``torch.no_grad()`` are
    not recorded). A fast path without module forwards calls :meth:`update` with the
    features itself.

    Args:
        model: the network.
        optimizer: whose state of replaced units is reset (any torch optimizer).
        replacement_rate: units replaced per eligible unit per step (LoP PMNIST 1e-6).
        maturity_threshold: steps a unit must live before it can be replaced.
        decay_rate: running-average decay of utility and mean activation (0.99).
        utility: ``"contribution"`` or ``"adaptable_contribution"``.
        init_gain: gain of the fresh weights' bound; default per layer from its
            activation (ReLU: sqrt 2), as LoP's Kaiming init.
        hidden_layers: explicit hidden-layer spec (see :func:`find_hidden_layers`).
        seed: seed of the generator that draws fresh weights.
    """

    name = "cbp"
    order = 40

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        replacement_rate: float = 1e-4,
        maturity_threshold: int = 100,
        decay_rate: float = 0.99,
        utility: Literal["contribution", "adaptable_contribution"] = "contribution",
        init_gain: float | None = None,
        hidden_layers: HiddenLayerSpec = None,
        seed: int = 0,
    ):
        if not 0 <= replacement_rate <= 1:
            raise ValueError(
                f"replacement_rate must be in [0, 1], got {replacement_rate}"
            )
        if maturity_threshold < 0:
            raise ValueError(
                f"maturity_threshold must be >= 0, got {maturity_threshold}"
            )
        if not 0 <= decay_rate < 1:
            raise ValueError(f"decay_rate must be in [0, 1), got {decay_rate}")
        if utility not in UTILITIES:
            raise ValueError(f"utility must be one of {UTILITIES}, got {utility!r}")
        super().__init__(model, optimizer, init_gain, hidden_layers, seed)
        self.replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.decay_rate = float(decay_rate)
        self.utility = utility
        zeros = self.new_unit_buffers()
        # to be filled in runtime
        self.ages = [z.clone() for z in zeros]
        self.utilities = [z.clone() for z in zeros]
        self.mean_activations = [z.clone() for z in zeros]
        self.accumulated = [0.0 for _ in self.hidden]
        self.num_replaced = [0 for _ in self.hidden]
        self.last_replaced: list[torch.Tensor] = [z[:0].long() for z in zeros]

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """One CBP step from each hidden layer's (samples, units, ...) features."""
        with torch.no_grad():
            for index, hidden in enumerate(self.hidden):
                self._update_utility(index, hidden, features[index])
                units = self._units_to_replace(index)
                self.last_replaced[index] = units
                if units.numel():
                    self._replace(index, hidden, units)

    def _update_utility(self, index: int, hidden: HiddenLayer, h: torch.Tensor) -> None:
        decay = self.decay_rate
        age = self.ages[index].add_(1)
        mean_act = self.mean_activations[index]
        mean_act.mul_(decay).add_(per_unit_mean(h).to(mean_act.dtype), alpha=1 - decay)
        h = h.to(mean_act.dtype)
        if self.utility == "contribution":
            activity = per_unit_mean(h.abs())
            new = outgoing_magnitude(hidden).to(h.dtype) * activity
        else:
            shape = (1, -1) + (1,) * (h.dim() - 2)
            centred = h - (mean_act / (1 - decay**age)).reshape(shape)
            activity = per_unit_mean(centred.abs())
            new = (
                outgoing_magnitude(hidden).to(h.dtype)
                * activity
                / incoming_magnitude(hidden).to(h.dtype)
            )
        self.utilities[index].mul_(decay).add_(new, alpha=1 - decay)

    def _units_to_replace(self, index: int) -> torch.Tensor:
        age = self.ages[index]
        eligible = torch.nonzero(age > self.maturity_threshold).reshape(-1)
        if eligible.numel() == 0 or self.replacement_rate == 0:
            return eligible[:0]
        self.accumulated[index] += self.replacement_rate * eligible.numel()
        count = int(self.accumulated[index])
        self.accumulated[index] -= count
        if count == 0:
            return eligible[:0]
        utility = self.utilities[index][eligible] / (
            1 - self.decay_rate ** age[eligible]
        )
        return eligible[torch.topk(-utility, count).indices]

    def _replace(self, index: int, hidden: HiddenLayer, units: torch.Tensor) -> None:
        age = self.ages[index][units]
        mean = self.mean_activations[index][units] / (1 - self.decay_rate**age)
        reinitialize_units(
            hidden, units, self.bounds[index], self.rng.generator, self.optimizer, mean
        )
        self.ages[index][units] = 0
        self.utilities[index][units] = 0
        self.mean_activations[index][units] = 0
        self.num_replaced[index] += units.numel()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "replacement_rate": self.replacement_rate,
            "maturity_threshold": self.maturity_threshold,
            "decay_rate": self.decay_rate,
            "utility": self.utility,
            "layers": [h.name for h in self.hidden],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "ages": [t.clone() for t in self.ages],
            "utilities": [t.clone() for t in self.utilities],
            "mean_activations": [t.clone() for t in self.mean_activations],
            "accumulated": list(self.accumulated),
            "num_replaced": list(self.num_replaced),
            "rng": self.rng.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("ages", "utilities", "mean_activations"):
            for mine, saved in zip(getattr(self, name), state[name], strict=True):
                mine.copy_(saved)
        self.accumulated = list(state["accumulated"])
        self.num_replaced = list(state["num_replaced"])
        self.rng.load(state["rng"])
