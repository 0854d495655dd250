"""Continual Backprop (Dohare et al. 2024, Methods; LoP's ``gnt.py``) for the fast path.

The per-step bookkeeping runs inside the kernel (``mlp_kernel.cpp``) or in
:func:`CBPState.update` (torch fallback); :meth:`CBPState.replace` performs the rare
replacements between kernel calls. Per hidden layer and step:

1. every unit ages by one;
2. running mean activation ``m <- d m + (1 - d) h`` and running utility
   ``u <- d u + (1 - d) c`` with decay ``d``, where the contribution
   ``c = mean_o |W_next[o, i]| * |h_i|``, or for the adaptable contribution
   ``mean_o |W_next[o, i]| * |h_i - m_i / (1 - d^age)| / mean_j |W[i, j]|``
   (weights after the step's update, activations from its forward pass);
3. ``replacement_rate * #(units with age > maturity)`` is added to an accumulator;
   when it reaches 1, ``floor(acc)`` eligible units with the lowest bias-corrected
   utility ``u / (1 - d^age)`` are replaced: fresh incoming weights
   ``U(-b, b)`` with ``b = gain * sqrt(3 / fan_in)``, zero bias, zero outgoing weights,
   the next layer's bias absorbing the unit's bias-corrected mean contribution
   ``W_next[:, i] * m_i / (1 - d^age_i)``, and age, utility and mean reset to zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

UTILITIES = ("contribution", "adaptable_contribution")


class CBPState:
    """CBP statistics of every hidden layer of an MLP, and the replacement step.

    Args:
        widths: units per hidden layer.
        replacement_rate: fraction of eligible units replaced per step (PMNIST 1e-6).
        maturity_threshold: steps a unit must live before it can be replaced.
        decay_rate: decay of the running utility and mean activation (0.99).
        utility: ``"contribution"`` or ``"adaptable_contribution"``.
        init_gain: gain of the fresh incoming weights (sqrt(2) for ReLU).
        seed: seed of the generator that draws fresh weights.
        dtype, device: of the statistics (those of the model).
    """

    def __init__(
        self,
        widths: Sequence[int],
        replacement_rate: float = 1e-6,
        maturity_threshold: int = 100,
        decay_rate: float = 0.99,
        utility: str = "contribution",
        init_gain: float = math.sqrt(2.0),
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if utility not in UTILITIES:
            raise ValueError(f"utility must be one of {UTILITIES}, got {utility!r}")
        if not 0 <= decay_rate < 1:
            raise ValueError(f"decay_rate must be in [0, 1), got {decay_rate}")
        if replacement_rate < 0 or maturity_threshold < 0:
            raise ValueError(
                "replacement_rate and maturity_threshold must be >= 0, got "
                f"{replacement_rate}, {maturity_threshold}"
            )
        self.replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.decay_rate = float(decay_rate)
        self.utility = utility
        self.init_gain = float(init_gain)
        self.ages = [torch.zeros(w, dtype=torch.int64, device=device) for w in widths]
        self.utilities = [torch.zeros(w, dtype=dtype, device=device) for w in widths]
        self.mean_activations = [
            torch.zeros(w, dtype=dtype, device=device) for w in widths
        ]
        # The accumulator stays on the CPU: the native kernel and Python both read it.
        self.accumulated = torch.zeros(len(widths), dtype=torch.float64)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.num_replaced = [0] * len(widths)

    @property
    def adaptable(self) -> bool:
        return self.utility == "adaptable_contribution"

    @torch.no_grad()
    def update(
        self,
        activations: Sequence[torch.Tensor],
        outgoing_abs: Sequence[torch.Tensor],
        incoming_abs: Sequence[torch.Tensor],
    ) -> bool:
        """One step of bookkeeping (torch fallback); True when a replacement is due."""
        d = self.decay_rate
        due = False
        for layer, h in enumerate(activations):
            age = self.ages[layer]
            age += 1
            mean = self.mean_activations[layer]
            mean.mul_(d).add_(h, alpha=1 - d)
            if self.adaptable:
                correction = 1 - torch.pow(d, age.to(h.dtype))
                contribution = (
                    outgoing_abs[layer] * (h - mean / correction).abs()
                ) / incoming_abs[layer]
            else:
                contribution = outgoing_abs[layer] * h.abs()
            self.utilities[layer].mul_(d).add_(contribution, alpha=1 - d)
            eligible = int((age > self.maturity_threshold).sum())
            if eligible:
                self.accumulated[layer] += self.replacement_rate * eligible
                due |= bool(self.accumulated[layer] >= 1)
        return due

    @torch.no_grad()
    def replace(
        self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Replace the units that are due; returns the replaced indices per layer."""
        replaced = []
        d = self.decay_rate
        for layer, age in enumerate(self.ages):
            count = int(math.floor(float(self.accumulated[layer])))
            if count < 1:
                replaced.append(age.new_empty(0))
                continue
            self.accumulated[layer] -= count
            eligible = torch.nonzero(age > self.maturity_threshold).flatten()
            correction = 1 - torch.pow(d, age[eligible].to(self.utilities[layer].dtype))
            score = self.utilities[layer][eligible] / correction
            count = min(count, eligible.numel())
            units = eligible[torch.topk(-score, count).indices]
            weight, bias = weights[layer], biases[layer]
            next_weight, next_bias = weights[layer + 1], biases[layer + 1]
            bound = self.init_gain * math.sqrt(3.0 / weight.shape[1])
            fresh = torch.empty(
                (count, weight.shape[1]), dtype=weight.dtype, device=weight.device
            )
            fresh.uniform_(-bound, bound, generator=self.generator)
            weight[units] = fresh
            bias[units] = 0
            unit_correction = 1 - torch.pow(d, age[units].to(weight.dtype))
            mean = self.mean_activations[layer][units] / unit_correction
            next_bias += next_weight[:, units] @ mean
            next_weight[:, units] = 0
            age[units] = 0
            self.utilities[layer][units] = 0
            self.mean_activations[layer][units] = 0
            self.num_replaced[layer] += count
            replaced.append(units)
        return replaced

    def state_dict(self) -> dict[str, Any]:
        return {
            "ages": [a.clone() for a in self.ages],
            "utilities": [u.clone() for u in self.utilities],
            "mean_activations": [m.clone() for m in self.mean_activations],
            "accumulated": self.accumulated.clone(),
            "generator": self.generator.get_state(),
            "num_replaced": list(self.num_replaced),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for mine, saved in (
            (self.ages, state["ages"]),
            (self.utilities, state["utilities"]),
            (self.mean_activations, state["mean_activations"]),
        ):
            for tensor, value in zip(mine, saved, strict=True):
                tensor.copy_(value)
        self.accumulated.copy_(state["accumulated"])
        self.generator.set_state(state["generator"].cpu())
        self.num_replaced = list(state["num_replaced"])
