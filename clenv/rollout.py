"""The arithmetic of an on-policy rollout: stepping the envs, GAE, normalisation.

What CleanRL's PPO computes inline, as functions of plain tensors so that any
on-policy agent can use them and tests can check them alone:

- :func:`step_envs`: one vector step where a time-limit truncation ends the episode
  like a termination (both papers' PPO), or has its reward bootstrapped with
  ``gamma * V(final obs)`` (SAME_STEP autoreset: ``final_obs`` is in ``infos``);
- :func:`generalized_advantages`: GAE(gamma, lambda) of a rollout (Schulman et al.,
  *High-Dimensional Continuous Control Using Generalized Advantage Estimation*,
  ICLR 2016, eq. 16), as CleanRL computes it;
- :func:`normalize_advantages`: zero mean, unit standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["generalized_advantages", "normalize_advantages", "step_envs"]


def step_envs(
    envs: Any,
    action: np.ndarray,
    *,
    value_fn: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str,
    gamma: float,
    bootstrap_truncated: bool,
) -> tuple[Any, np.ndarray, np.ndarray, dict[str, Any]]:
    """``envs.step(action)``; returns ``(next_obs, reward, done, infos)``.

    ``done`` is a termination or a truncation: a time-limit truncation ends the
    episode. With ``bootstrap_truncated`` its reward gets ``gamma * value_fn(final
    obs)`` (float64) instead, the final observation read from ``infos["final_obs"]``
    (a vector env in SAME_STEP autoreset mode, :func:`clenv.run.vector_env`).
    """
    next_obs, reward, terminations, truncations, infos = envs.step(action)
    if bootstrap_truncated and "_final_obs" in infos:
        bootstrap = infos["_final_obs"] & truncations & ~terminations
        if bootstrap.any():
            final_obs = np.stack(infos["final_obs"][bootstrap]).astype(np.float32)
            with torch.no_grad():
                final_values = value_fn(torch.as_tensor(final_obs, device=device))
            reward = reward.astype(np.float64)
            reward[bootstrap] += gamma * final_values.flatten().cpu().numpy()
    return next_obs, reward, np.logical_or(terminations, truncations), infos


def generalized_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """GAE(gamma, lambda) of a rollout of shape ``(num_steps, num_envs)``.

    ``dones[t]`` marks that the observation of step ``t`` began a new episode;
    ``next_value`` and ``next_done`` are those of the observation after the rollout.
    """
    advantages = torch.zeros_like(rewards)
    if rewards.device.type == "cpu":
        # The same float32 operations in the same order on numpy views of the
        # tensors (so the same numbers), without torch's per-operation dispatch:
        # the loop runs once per step of the rollout.
        _gae_loop(advantages.numpy(), rewards.numpy(), values.numpy(),
                  dones.numpy(), next_value.numpy(), next_done.numpy(), gamma,
                  gae_lambda)  # fmt: skip
    else:
        _gae_loop(advantages, rewards, values, dones, next_value, next_done, gamma,
                  gae_lambda)  # fmt: skip
    return advantages


def _gae_loop(advantages, rewards, values, dones, next_value, next_done, gamma,
              gae_lambda):  # fmt: skip
    """:func:`generalized_advantages`' loop on numpy arrays or tensors, writing
    ``advantages`` in place."""
    num_steps = rewards.shape[0]
    lastgaelam = 0
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = (
            delta + gamma * gae_lambda * nextnonterminal * lastgaelam
        )


def normalize_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """``advantages`` shifted to mean 0 and scaled to standard deviation 1."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
