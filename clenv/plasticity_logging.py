"""The ``plasticity/*`` series of an RL agent, with the state they carry across updates.

:class:`PlasticityTrackers` bundles, for a set of named networks (a PPO agent's actor
and critic), :func:`clenv.metrics.plasticity_report` with every opt-in metric on
(active-unit fraction, feature norm, gradient norm per layer, weight change since the
task started) and the policy churn between consecutive updates
(:class:`~clenv.metrics.PolicyChurnTracker` on a fixed probe batch of the first
rollout). Its :meth:`~PlasticityTrackers.state_dict` goes into the checkpoint, so a
resumed run measures from the same task-start weights and the same probe batch:

    trackers = PlasticityTrackers(nets, distribution_fn, probe_size=256)
    trackers.before_update(rollout_obs)       # each rollout: the first fixes the probe
    churn = trackers.after_update()           # each update: mean KL since the last
    trackers.on_task_start()                  # each task switch
    metrics = trackers.report(rollout_obs)    # every --plasticity-every updates
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from clenv.metrics import PolicyChurnTracker, WeightChangeTracker, plasticity_report
from clenv.metrics.churn import DistributionFn

__all__ = ["PlasticityTrackers", "probe_rows"]


def probe_rows(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` rows of ``inputs`` evenly spaced from the first to the last (all of
    them when there are fewer); no random draw, so the run's RNG streams are
    untouched."""
    count = inputs.shape[0]
    if count <= size:
        return inputs.detach().clone()
    index = torch.linspace(0, count - 1, size).round().long().to(inputs.device)
    return inputs[index].detach().clone()


class PlasticityTrackers:
    """Weight change since the task start and policy churn between updates.

    Args:
        nets: ``{name: module}`` the report covers (``{"actor": ..., "critic":
            ...}``); keys of the report are ``"<name>/..."``.
        distribution_fn: ``obs -> (mean, std)`` of the diagonal Gaussian policy, for
            the churn (None: no churn).
        probe_size: observations of the first rollout the churn is measured on.
    """

    def __init__(
        self,
        nets: Mapping[str, nn.Module],
        distribution_fn: DistributionFn | None = None,
        probe_size: int = 256,
    ):
        if probe_size < 1:
            raise ValueError(f"probe_size must be >= 1, got {probe_size}")
        self.nets = dict(nets)
        self.distribution_fn = distribution_fn
        self.probe_size = probe_size
        self.weight_change = WeightChangeTracker(self.nets)
        self.weight_change.on_task_start()
        self.churn: PolicyChurnTracker | None = None
        self.last_churn: float | None = None

    def on_task_start(self) -> None:
        """Measure the weight change from the current weights on."""
        self.weight_change.on_task_start()

    def before_update(self, rollout_obs: torch.Tensor) -> None:
        """Before the first update: fix the probe batch from ``rollout_obs`` and
        record the policy there (later calls do nothing)."""
        if self.churn is None and self.distribution_fn is not None:
            probe = probe_rows(rollout_obs, self.probe_size)
            self.churn = PolicyChurnTracker(probe, self.distribution_fn)
            self.churn.update()

    def after_update(self) -> float | None:
        """Mean KL(previous || current policy) on the probe batch since the last
        update (None before :meth:`before_update` or without a policy)."""
        if self.churn is None:
            return None
        self.last_churn = self.churn.update()
        return self.last_churn

    def report(self, inputs: Any, **options: Any) -> dict[str, float]:
        """:func:`~clenv.metrics.plasticity_report` of the nets on ``inputs`` with
        active units, feature norms, gradient norms (of the last backward pass) and
        the weight change; ``policy_churn`` of the latest update when there is one."""
        metrics = plasticity_report(
            self.nets, inputs, active_units=True, feature_norms=True,
            gradient_norm=True, weight_change=self.weight_change, **options,
        )  # fmt: skip
        if self.last_churn is not None:
            metrics["policy_churn"] = self.last_churn
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "weight_change": self.weight_change.state_dict(),
            "churn": None if self.churn is None else self.churn.state_dict(),
            "last_churn": self.last_churn,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weight_change.load_state_dict(state["weight_change"])
        self.last_churn = state["last_churn"]
        self.churn = None
        if state["churn"] is not None and self.distribution_fn is not None:
            probe = state["churn"]["probe_obs"]
            self.churn = PolicyChurnTracker(probe, self.distribution_fn)
            self.churn.load_state_dict(state["churn"])
