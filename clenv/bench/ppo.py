"""Speed of agents/ppo_l2er.py next to a minimal CleanRL PPO loop, in one run.

Run ``OMP_NUM_THREADS=1 python -m clenv.bench.ppo`` (``--help`` for options).

Three programs train PPO with the same hyperparameters (LoP's Slippery Ant settings:
2x256 ReLU actor and critic, rollout 2048, 10 epochs of 16 minibatches, Adam 1e-4
betas (0.99, 0.99)) on the same env (clenv/SlipperyAnt-v0), each in its own process,
taking turns round after round so that load from other processes hits them alike:

* **reference**: :func:`reference_ppo` below, CleanRL's ``ppo_continuous_action.py``
  loop reduced to the algorithm (no logging, no checkpoints, no methods);
* **bp**: ``agents/ppo_l2er.py --reg bp`` with its logging (TensorBoard + HDF5 per
  episode and update), task tracking and the end-of-run checkpoint;
* **l2er**: the same with ``--reg l2er`` (L2 on every minibatch, one effective-rank
  ascent per epoch on the whole rollout).

Steps per second are steady-state figures: steps from the end of the first update to
the end of the last over the time between them (start-up and the first rollout
excluded), read at the same point of each program (the agent runs in the worker
process through ``runpy``, its clocks read when it logs ``charts/SPS``). The headline
uses CPU seconds of the process (``time.process_time``): on a machine shared with other
jobs, wall time mostly measures the others' load; wall-clock figures are printed too.
The curvature diagnostics (``--curvature-every-tasks``) run at task
boundaries only and are switched off here; their cost per call is printed in the
logs as ``curvature/*/seconds``. Targets: bp >= 0.95x reference, l2er >= 0.9x bp.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

AGENT = Path(__file__).resolve().parents[2] / "agents" / "ppo_l2er.py"
PROGRAMS = ["reference", "bp", "l2er"]
RATIOS = {"bp / reference": ("bp", "reference"), "l2er / bp": ("l2er", "bp")}
TARGETS = {"bp / reference": 0.95, "l2er / bp": 0.9}


def reference_ppo(
    env_id: str, iterations: int, seed: int = 1
) -> dict[str, list[float]]:
    """CleanRL's PPO loop with the agent's defaults; clocks at the end of each update.

    Same env wrappers, autoreset mode, network, initialisation, optimizer and update
    as ``agents/ppo_l2er.py --reg bp``; nothing else.
    """
    import random

    import gymnasium as gym
    import torch
    import torch.nn as nn
    from torch.distributions.normal import Normal

    import clenv

    gym.register_envs(clenv)
    num_envs, num_steps, num_minibatches, update_epochs = 1, 2048, 16, 10
    gamma, gae_lambda, clip_coef, vf_coef = 0.99, 0.95, 0.2, 1.0
    batch_size = num_envs * num_steps
    minibatch_size = batch_size // num_minibatches

    def make_env():
        env = gym.make(env_id, **agent_env_kwargs(env_id, seed))
        env = gym.wrappers.FlattenObservation(env)
        return gym.wrappers.ClipAction(env)

    def layer_init(layer, std=2**0.5):
        torch.nn.init.orthogonal_(layer.weight, std)
        torch.nn.init.constant_(layer.bias, 0.0)
        return layer

    class Agent(nn.Module):
        def __init__(self, obs_dim, act_dim):
            super().__init__()
            self.critic = nn.Sequential(
                layer_init(nn.Linear(obs_dim, 256)), nn.ReLU(),
                layer_init(nn.Linear(256, 256)), nn.ReLU(),
                layer_init(nn.Linear(256, 1), std=1.0),
            )  # fmt: skip
            self.actor_mean = nn.Sequential(
                layer_init(nn.Linear(obs_dim, 256)), nn.ReLU(),
                layer_init(nn.Linear(256, 256)), nn.ReLU(),
                layer_init(nn.Linear(256, act_dim), std=0.01),
            )  # fmt: skip
            self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

        def get_value(self, x):
            return self.critic(x)

        def get_action_and_value(self, x, action=None):
            action_mean = self.actor_mean(x)
            std = torch.exp(self.actor_logstd.expand_as(action_mean))
            probs = Normal(action_mean, std, validate_args=False)
            if action is None:
                action = probs.sample()
            logprob = probs.log_prob(action).sum(1)
            return action, logprob, probs.entropy().sum(1), self.critic(x)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    envs = gym.vector.SyncVectorEnv(
        [make_env for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    obs_shape, act_shape = (
        envs.single_observation_space.shape,
        envs.single_action_space.shape,
    )
    agent = Agent(int(np.prod(obs_shape)), int(np.prod(act_shape)))
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-4, betas=(0.99, 0.99))
    obs = torch.zeros((num_steps, num_envs) + obs_shape)
    actions = torch.zeros((num_steps, num_envs) + act_shape)
    logprobs, rewards, dones, values = (
        torch.zeros((num_steps, num_envs)) for _ in range(4)
    )
    next_obs, _ = envs.reset(seed=seed)
    next_obs, next_done = torch.Tensor(next_obs), torch.zeros(num_envs)
    stamps: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _iteration in range(iterations):
        for step in range(num_steps):
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob
            next_obs, reward, terminations, truncations, infos = envs.step(
                action.numpy()
            )
            rewards[step] = torch.tensor(reward).view(-1)
            next_obs = torch.Tensor(next_obs)
            next_done = torch.Tensor(np.logical_or(terminations, truncations))
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(num_steps)):
                if t == num_steps - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
                lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
                advantages[t] = lastgaelam
            returns = advantages + values
        b_obs = obs.reshape((-1,) + obs_shape)
        b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape((-1,) + act_shape)
        b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
        b_inds = np.arange(batch_size)
        for _epoch in range(update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start : start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_actions[mb_inds]
                )
                ratio = (newlogprob - b_logprobs[mb_inds]).exp()
                mb_advantages = b_advantages[mb_inds]
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                    mb_advantages.std() + 1e-8
                )
                pg_loss = torch.max(
                    -mb_advantages * ratio,
                    -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef),
                ).mean()
                v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb_inds]) ** 2).mean()
                loss = pg_loss + v_loss * vf_coef
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        stamps["wall"].append(time.perf_counter())
        stamps["cpu"].append(time.process_time())
    envs.close()
    return stamps


def agent_env_kwargs(env_id: str, seed: int) -> dict[str, object]:
    """What the agent passes to a clenv env by default (same tasks, same friction:
    MuJoCo's contact work, hence its speed, depends on the friction)."""
    import gymnasium as gym

    import clenv

    gym.register_envs(clenv)
    probe = gym.make(env_id)
    continual = isinstance(probe.unwrapped, clenv.ContinualEnv)
    probe.close()
    return {"task_seed": seed, "switch_at": "episode_end"} if continual else {}


def steady_sps(stamps: list[float], steps_per_update: int) -> float:
    """Steps per second from the end of the first update to the end of the last."""
    if len(stamps) < 2:
        raise ValueError("need at least 2 updates to measure a steady-state rate")
    return steps_per_update * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def agent_ppo(reg: str, env_id: str, iterations: int) -> dict[str, list[float]]:
    """Run agents/ppo_l2er.py here; clocks at the end of each update.

    The agent logs ``charts/SPS`` once per update, right after the update; a wrapper
    around :meth:`RunLogger.log_scalars` reads the clocks at that moment.
    """
    import runpy

    from clenv.logger import RunLogger

    stamps: dict[str, list[float]] = {"wall": [], "cpu": []}
    log_scalars = RunLogger.log_scalars

    def timed_log_scalars(self, values, step, **kwargs):
        if "charts/SPS" in values:
            stamps["wall"].append(time.perf_counter())
            stamps["cpu"].append(time.process_time())
        return log_scalars(self, values, step, **kwargs)

    RunLogger.log_scalars = timed_log_scalars
    with tempfile.TemporaryDirectory() as runs:
        sys.argv = [
            str(AGENT), "--reg", reg, "--env-id", env_id,
            "--total-timesteps", str(iterations * 2048), "--runs-dir", runs,
            "--curvature-every-tasks", "0", "--no-progress", "--no-plot",
        ]  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(AGENT), run_name="__main__")
    return stamps


def run_worker(program: str, env_id: str, iterations: int) -> dict[str, float]:
    """One program in a fresh process; its steady-state steps per wall / CPU second."""
    done = subprocess.run(
        [sys.executable, "-m", "clenv.bench.ppo", "--worker", program,
         "--env-id", env_id, "--iterations", str(iterations)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"{program} failed:\n{done.stderr[-3000:]}")
    stamps = json.loads(done.stdout.strip().splitlines()[-1])
    return {clock: steady_sps(stamps[clock], 2048) for clock in ("wall", "cpu")}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-id", default="clenv/SlipperyAnt-v0")
    parser.add_argument(
        "--iterations",
        type=int,
        default=4,
        help="PPO updates per run (2048 steps each)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each program")
    parser.add_argument("--worker", choices=PROGRAMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first update is warm-up)")
    if args.worker == "reference":
        print(json.dumps(reference_ppo(args.env_id, args.iterations)))
        return {}
    if args.worker:
        print(json.dumps(agent_ppo(args.worker, args.env_id, args.iterations)))
        return {}

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(
        f"PPO on {args.env_id}: {args.rounds} rounds x {args.iterations} updates of "
        "2048 steps, programs taking turns; steady-state steps per CPU second "
        "(per wall second in brackets)"
    )
    sps = {clock: {name: [] for name in PROGRAMS} for clock in ("wall", "cpu")}
    for round_index in range(args.rounds):
        shift = round_index % len(PROGRAMS)
        for name in PROGRAMS[shift:] + PROGRAMS[:shift]:
            rates = run_worker(name, args.env_id, args.iterations)
            for clock, value in rates.items():
                sps[clock][name].append(value)
            print(
                f"  round {round_index + 1} {name:>9}: {rates['cpu']:6.0f} "
                f"({rates['wall']:4.0f}) steps/s"
            )
    print(f"\n{'program':>16} {'steps/CPU s':>12} {'(steps/wall s)':>15}")
    for name in PROGRAMS:
        cpu, wall = np.median(sps["cpu"][name]), np.median(sps["wall"][name])
        print(f"{name:>16} {cpu:12.0f} {wall:15.0f}")
    print(f"\n{'ratio':>16} {'CPU':>6} {'per round':>18} {'(wall)':>7} {'target':>7}")
    results = {}
    for name, (top, bottom) in RATIOS.items():
        per_round = {
            clock: np.array(sps[clock][top]) / np.array(sps[clock][bottom])
            for clock in ("cpu", "wall")
        }
        cpu, wall = (
            float(np.median(per_round["cpu"])),
            float(np.median(per_round["wall"])),
        )
        results[name] = cpu
        results[f"{name} (wall)"] = wall
        verdict = "ok" if cpu >= TARGETS[name] else "MISSED"
        rounds = " ".join(f"{v:.2f}" for v in per_round["cpu"])
        print(
            f"{name:>16} {cpu:6.2f} {rounds:>18} {wall:7.2f} {TARGETS[name]:>7} "
            f"{verdict}"
        )
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
