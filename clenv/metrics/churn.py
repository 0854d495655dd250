"""Policy churn: how much a policy's action distribution moves between updates.

Churn (Schaul et al. 2022, "The phenomenon of policy churn"; Tang et al. 2025,
C-CHAIN) is the change of the policy's outputs on states the update did not target.
Here it is measured on a fixed probe batch of observations as the mean over probe
states of KL(pi_previous(.|s) || pi_current(.|s)), in the direction of PPO's
``approx_kl`` (old policy first). Diagonal Gaussian policies (CleanRL's continuous
PPO) use the closed form :func:`diagonal_gaussian_kl`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

#: ``distribution_fn(obs) -> (mean, std)`` of a diagonal Gaussian policy, each
#: (samples, action_dim) (a std of shape (1, action_dim) broadcasts).
DistributionFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def diagonal_gaussian_kl(
    mean_p: torch.Tensor,
    std_p: torch.Tensor,
    mean_q: torch.Tensor,
    std_q: torch.Tensor,
) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last (action) dimension.

    ``sum_d log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2``.

    Args:
        mean_p, std_p: p's means and standard deviations, (..., action_dim).
        mean_q, std_q: q's, broadcastable to the same shape.

    Returns:
        (...,) tensor of KL divergences (nats).

    Example:
        >>> one = torch.ones(1, 1)
        >>> diagonal_gaussian_kl(0 * one, one, one, one)  # (0 - 1)^2 / 2
        tensor([0.5000])
    """
    mean_p, std_p, mean_q, std_q = torch.broadcast_tensors(mean_p, std_p, mean_q, std_q)
    if (std_p <= 0).any() or (std_q <= 0).any():
        raise ValueError("diagonal_gaussian_kl needs positive standard deviations")
    ratio = std_p / std_q
    terms = (
        -torch.log(ratio) + 0.5 * (ratio**2 + ((mean_p - mean_q) / std_q) ** 2) - 0.5
    )
    return terms.sum(-1)


class PolicyChurnTracker:
    """Mean KL between consecutive policies on a fixed probe batch.

    Holds the probe observations and the previous policy's distribution parameters
    on them. Each :meth:`update` evaluates the current policy on the probe batch,
    returns the mean over probe states of KL(previous || current) (``None`` the
    first time, when there is no previous policy) and keeps the current parameters
    for the next call. Call it after every policy update for the churn between
    consecutive updates. :meth:`state_dict`/:meth:`load_state_dict` make a resumed
    run continue exactly.

    Args:
        probe_obs: (samples, obs_dim) probe observations, e.g. a random subset of the
            first rollout's observations; kept on their device.
        distribution_fn: ``obs -> (mean, std)`` of the diagonal Gaussian policy, e.g.
            ``lambda obs: (agent.actor_mean(obs), agent.actor_logstd.exp())``; run
            under ``torch.no_grad``.

    Example:
        >>> mean, std = torch.zeros(1, 1), torch.ones(1, 1)
        >>> tracker = PolicyChurnTracker(torch.zeros(3, 2), lambda obs: (mean, std))
        >>> tracker.update() is None
        True
        >>> mean += 1.0  # the policy's mean moves by one std
        >>> tracker.update()
        0.5
    """

    def __init__(self, probe_obs: torch.Tensor, distribution_fn: DistributionFn):
        if probe_obs.dim() < 1 or probe_obs.shape[0] == 0:
            raise ValueError(
                "PolicyChurnTracker needs a (samples, ...) probe batch with at least "
                f"one sample, got shape {tuple(probe_obs.shape)}"
            )
        self.probe_obs = probe_obs.detach().clone()
        self.distribution_fn = distribution_fn
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def _current(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, std = self.distribution_fn(self.probe_obs)
            mean, std = torch.broadcast_tensors(mean.detach(), std.detach())
        return mean.clone(), std.clone()

    def update(self) -> float | None:
        """Churn since the previous call (mean KL over the probe batch), or None."""
        mean, std = self._current()
        churn = None
        if self.previous is not None:
            old_mean, old_std = self.previous
            if old_mean.shape != mean.shape:
                raise ValueError(
                    f"the policy's output shape changed from {tuple(old_mean.shape)} "
                    f"to {tuple(mean.shape)} between updates"
                )
            churn = float(diagonal_gaussian_kl(old_mean, old_std, mean, std).mean())
        self.previous = (mean, std)
        return churn

    def state_dict(self) -> dict[str, Any]:
        """Probe batch and the previous distribution parameters."""
        previous = self.previous
        return {
            "probe_obs": self.probe_obs,
            "previous_mean": None if previous is None else previous[0],
            "previous_std": None if previous is None else previous[1],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors move to the probe batch's device)."""
        device = self.probe_obs.device
        self.probe_obs = state["probe_obs"].detach().to(device).clone()
        if state["previous_mean"] is None:
            self.previous = None
        else:
            self.previous = (
                state["previous_mean"].detach().to(device).clone(),
                state["previous_std"].detach().to(device).clone(),
            )
