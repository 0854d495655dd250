"""Continual Backprop (Dohare et al., "Loss of plasticity in deep continual learning",
Nature 2024, Methods, "Continual backpropagation"; LoP's ``lop/algos/gnt.py``).

Every step, per hidden layer: every unit ages by one; its utility is a running
average (decay 0.99, bias-corrected as Adam's moments) of

* ``"contribution"``: mean_k |w_out[k, i]| * mean_batch |h_i|, or
* ``"adaptable_contribution"``: mean_k |w_out[k, i]| * mean_batch |h_i - hbar_i|
  / mean_j |w_in[i, j]|, with hbar_i the bias-corrected running mean of h_i.

Among units older than ``maturity_threshold``, ``replacement_rate`` x (#eligible)
units are replaced per step (``replacement_count="all"``: x #units, as LoP's conv and
ResNet code); fractions accumulate across steps, so a rate of 1e-6 on 1000 units
replaces one unit every 1000 steps. The ones replaced have the lowest bias-corrected
utility. A replaced unit gets incoming weights ~ U(-b, b) with b = gain * sqrt(3 /
fan_in), bias 0, zero outgoing weights, age 0, utility 0; the next layer's bias
absorbs the unit's running mean contribution ``w_out * hbar`` so the output does not
jump; its optimizer state (momentum, Adam moments) is zeroed unless
``reset_optimizer_state=False``.

Unlike LoP's ``gnt.py``, which zeroes the running mean before adding it to the next
bias (so nothing is absorbed), the mean is read before it is reset.

``variant="sc_code"`` reproduces the CBP of SC's code (imagenet/cbp.py,
incremental_cifar/cbp.py, permuted_mnist/cbp.py, rlopt/cbp.py), which SC's CBP curves
were produced with and which differs from the paper's definition: the utility is
``|mean_batch h_i| * mean_k |w_out[k, i]|`` averaged without bias correction
(imagenet/cbp.py:153-154), the units replaced are those with the *highest* utility
(``num_top_mask``, imagenet/cbp.py:12-32, 173), outgoing weights are re-drawn from
U(-b', b') with b' the next layer's bound instead of zeroed, and nothing is absorbed
into the next bias (imagenet/cbp.py:192-232).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.layers import HiddenLayer, uniform_bound
from clenv.methods.units import (
    HiddenLayerSpec,
    UnitMethod,
    features_per_unit,
    incoming_magnitude,
    outgoing_magnitude,
    per_feature_mean,
    per_unit_mean,
    reinitialize_units,
    unit_features,
)

UTILITIES = ("contribution", "adaptable_contribution")
VARIANTS = ("lop", "sc_code")
REPLACEMENT_COUNTS = ("eligible", "all")


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
        init_gain: gain of the fresh weights' bound ``gain * sqrt(3 / fan_in)``;
            default per layer from its activation (ReLU: sqrt 2), as LoP's Kaiming
            init. LoP's ImageNet bound sqrt(1 / fan_in) is ``sqrt(1 / 3)``
            (lop/utils/miscellaneous.py:128-133), its RL ("lecun") bound
            sqrt(3 / fan_in) is ``1.0`` (lop/algos/gnt.py:71-72).
        replacement_count: ``"eligible"``: ``replacement_rate`` x the number of
            mature units per step (LoP's ``gnt.py``, the paper); ``"all"``: x the
            layer's number of units, once any unit is mature (LoP's
            ``convGnT.py:73-75,169`` and ``res_gnt.py:78,127``).
        score_after_pool: score a hidden layer on the output of the pooling layer
            that follows its activation (where there is one), as LoP's ConvNet hands
            its post-pool maps to CBP (lop/nets/conv_net.py:36-44); default: the
            activation's output.
        reset_optimizer_state: zero the optimizer state of the replaced units'
            weights; ``False`` keeps it (LoP resets only its own AdamGnT's state,
            lop/algos/gnt.py:211-225, so its torch-Adam (RL) and SGD-momentum
            (ImageNet) runs keep it).
        accumulate: carry fractions of a unit across steps (the paper, LoP's
            supervised runs, SC); ``False``: a step due ``r < 1`` units replaces one
            with probability ``r``, as LoP's ``gnt.py`` does without ``accumulate``
            (lop/algos/gnt.py:151-158), which its PPO uses (lop/algos/rl/ppo.py:65-71).
        variant: ``"lop"`` (the paper's CBP) or ``"sc_code"`` (the CBP of SC's code:
            see the module docstring).
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
        replacement_count: Literal["eligible", "all"] = "eligible",
        score_after_pool: bool = False,
        reset_optimizer_state: bool = True,
        accumulate: bool = True,
        variant: Literal["lop", "sc_code"] = "lop",
        hidden_layers: HiddenLayerSpec = None,
        seed: int = 0,
    ):
        check_range("replacement_rate", replacement_rate, 0, 1, closed=True)
        check_range("maturity_threshold", maturity_threshold, 0)
        check_range("decay_rate", decay_rate, 0, 1)
        if utility not in UTILITIES:
            raise ValueError(f"utility must be one of {UTILITIES}, got {utility!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if replacement_count not in REPLACEMENT_COUNTS:
            raise ValueError(
                f"replacement_count must be one of {REPLACEMENT_COUNTS}, got "
                f"{replacement_count!r}"
            )
        if variant == "sc_code" and utility != "contribution":
            raise ValueError(
                "variant='sc_code' scores SC's contribution utility only; pass "
                "utility='contribution'"
            )
        super().__init__(
            model, optimizer, init_gain, hidden_layers, seed, score_after_pool
        )
        self.replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.decay_rate = float(decay_rate)
        self.utility = utility
        self.replacement_count = replacement_count
        self.score_after_pool = bool(score_after_pool)
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self.accumulate = bool(accumulate)
        self.variant = variant
        # SC's code re-draws outgoing weights with the next layer's bound.
        self.outgoing_bounds = [
            uniform_bound(h.next_layer, b / uniform_bound(h.layer, 1.0))
            for h, b in zip(self.hidden, self.bounds, strict=True)
        ]
        zeros = self.new_unit_buffers()
        # to be filled in runtime
        self.ages = [z.clone() for z in zeros]
        self.utilities = [z.clone() for z in zeros]
        # One mean per feature: (units,), or (units, 2) for CReLU / Fourier features.
        self.features_per_unit = [features_per_unit(h) for h in self.hidden]
        self.mean_activations = [
            z.clone() if k == 1 else z[:, None].repeat(1, k)
            for z, k in zip(zeros, self.features_per_unit, strict=True)
        ]
        self.accumulated = [0.0 for _ in self.hidden]
        self.num_replaced = [0 for _ in self.hidden]
        self.last_replaced: list[torch.Tensor] = [z[:0].long() for z in zeros]

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """One CBP step from each hidden layer's (samples, units, ...) features."""
        with torch.no_grad():
            for index, hidden in enumerate(self.hidden):
                self._update_utility(index, hidden, features[index])
                self.count_due(index)
                self.replace_units(index, self.select_units(index))

    def _update_utility(self, index: int, hidden: HiddenLayer, h: torch.Tensor) -> None:
        decay = self.decay_rate
        h = unit_features(hidden, h)  # (samples, units, k, ...) for k > 1
        age = self.ages[index].add_(1)
        mean_act = self.mean_activations[index]
        per_unit = self.features_per_unit[index]
        mean_act.mul_(decay).add_(
            per_feature_mean(h, per_unit).to(mean_act.dtype), alpha=1 - decay
        )
        h = h.to(mean_act.dtype)
        if self.variant == "sc_code":
            activity = per_unit_mean(h).abs()
            new = outgoing_magnitude(hidden).to(h.dtype) * activity
        elif self.utility == "contribution":
            activity = per_unit_mean(h.abs())
            new = outgoing_magnitude(hidden).to(h.dtype) * activity
        else:
            correction = 1 - decay**age
            if per_unit > 1:
                correction = correction[:, None]
            shape = (1, *mean_act.shape) + (1,) * (h.dim() - 1 - mean_act.dim())
            centred = h - (mean_act / correction).reshape(shape)
            activity = per_unit_mean(centred.abs())
            new = (
                outgoing_magnitude(hidden).to(h.dtype)
                * activity
                / incoming_magnitude(hidden).to(h.dtype)
            )
        self.utilities[index].mul_(decay).add_(new, alpha=1 - decay)

    def count_due(self, index: int) -> None:
        """Add this step's replacements due in layer ``index`` to its accumulator."""
        age = self.ages[index]
        eligible = int((age > self.maturity_threshold).sum())
        if eligible == 0:
            return
        units = eligible if self.replacement_count == "eligible" else age.numel()
        due = self.replacement_rate * units
        if not self.accumulate:
            # LoP's gnt.py without accumulate: whole units now, a fraction by chance.
            if due < 1:
                draw = torch.rand((), generator=self.rng.generator, device=age.device)
                due = 1.0 if float(draw) <= due else 0.0
            self.accumulated[index] = float(int(due))
            return
        self.accumulated[index] += due

    def select_units(self, index: int) -> torch.Tensor:
        """Take the whole units due from layer ``index``'s accumulator and choose them.

        Returns:
            The indices of the mature units to replace: the lowest bias-corrected
            utilities (``variant="sc_code"``: the highest raw utilities); empty when
            none is due.
        """
        age = self.ages[index]
        eligible = torch.nonzero(age > self.maturity_threshold).reshape(-1)
        count = min(int(self.accumulated[index]), eligible.numel())
        if count < 1:
            return eligible[:0]
        self.accumulated[index] -= int(self.accumulated[index])
        if self.variant == "sc_code":
            utility = self.utilities[index][eligible]
            return eligible[torch.topk(utility, count).indices]
        utility = self.utilities[index][eligible] / (
            1 - self.decay_rate ** age[eligible]
        )
        return eligible[torch.topk(-utility, count).indices]

    @torch.no_grad()
    def replace_units(self, index: int, units: torch.Tensor) -> None:
        """Replace ``units`` of hidden layer ``index`` with fresh ones (see the module
        docstring) and reset their age, utility and mean activation."""
        self.last_replaced[index] = units
        if units.numel() == 0:
            return
        hidden = self.hidden[index]
        age = self.ages[index][units]
        optimizer = self.optimizer if self.reset_optimizer_state else None
        if self.variant == "sc_code":
            reinitialize_units(
                hidden,
                units,
                self.bounds[index],
                self.rng.generator,
                optimizer,
                outgoing_bound=self.outgoing_bounds[index],
            )
        else:
            correction = 1 - self.decay_rate**age
            mean = self.mean_activations[index][units]
            mean = mean / (correction if mean.dim() == 1 else correction[:, None])
            reinitialize_units(
                hidden, units, self.bounds[index], self.rng.generator, optimizer, mean
            )
        self.ages[index][units] = 0
        self.utilities[index][units] = 0
        self.mean_activations[index][units] = 0
        self.num_replaced[index] += units.numel()

    def replace_due_units(self) -> None:
        """Replace, in every layer, the whole units its accumulator holds.

        For a fast path that updated ages, utilities, mean activations and the
        accumulators itself (the same statistics :meth:`update` keeps) and stopped
        right after the step that made a replacement due.
        """
        for index in range(len(self.hidden)):
            if self.accumulated[index] >= 1:
                self.replace_units(index, self.select_units(index))

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "replacement_rate": self.replacement_rate,
            "maturity_threshold": self.maturity_threshold,
            "decay_rate": self.decay_rate,
            "utility": self.utility,
            "replacement_count": self.replacement_count,
            "score_after_pool": self.score_after_pool,
            "reset_optimizer_state": self.reset_optimizer_state,
            "accumulate": self.accumulate,
            "variant": self.variant,
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
