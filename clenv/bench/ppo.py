"""Speed of the PPO agent next to a minimal CleanRL PPO loop, in one run.

Run ``OMP_NUM_THREADS=1 python -m clenv.bench.ppo --agent agents/ppo_l2er.py``
(``--help`` for options).

Three programs train PPO with the same settings (the agent's ``--protocol lop`` rows
of :mod:`clenv.settings.slippery_ant`: 2x256 ReLU actor and critic with LeCun-uniform
init, rollout 2048, 10 epochs of 16 minibatches, Adam 1e-4 betas (0.99, 0.99),
advantages normalised per rollout, MSE value loss, unclipped actions) on the same env
(clenv/SlipperyAnt-v0 with the protocol's env arguments), each in its own process,
taking turns round after round so that load from other processes hits them alike:

* **reference**: :func:`reference_ppo` below, CleanRL's ``ppo_continuous_action.py``
  loop reduced to the algorithm (no logging, no checkpoints, no methods);
* **bp**: ``<agent> --reg bp`` with its logging (TensorBoard + HDF5 per episode and
  update), task tracking and the end-of-run checkpoint;
* **l2er**: the same with ``--reg l2er`` (L2 on every minibatch, one effective-rank
  ascent per epoch on the whole rollout).

Each program is a black box: a subprocess, timed from the outside. Steps per second are
steady-state figures: each program runs twice per round, for 1 update and for
``--iterations`` updates, and the rate is the extra steps over the extra seconds
(start-up, the first rollout and the end-of-run work cancel). The headline uses the
CPU seconds of the process (``resource.getrusage`` of the children): on a machine
shared with other jobs, wall time mostly measures the others' load; wall-clock
figures are printed too. The curvature diagnostics (``--curvature-every-tasks``) run at
task boundaries only and are switched off here; their cost per call is in the logs as
``curvature/*/seconds``. Targets: bp >= 0.95x reference, l2er >= 0.9x bp.

``--protocol sc`` runs the agent's programs with SC's settings instead (one hidden
layer of 256, 128 minibatches, the ascent before each epoch; docs/protocols.md); the
reference loop is LoP's only, so the programs are then bp and l2er (target: l2er >=
0.85x bp). ``--programs`` picks the programs; ``l2er-autograd`` is ``--reg l2er`` with
the ascent's gradient by autograd through the SVD (``er__gradient=autograd``, the
implementation before the closed-form gradient), to measure that change in one run::

    python -m clenv.bench.ppo --protocol sc --programs bp l2er l2er-autograd
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from clenv.settings import protocol_defaults

PROTOCOL = "lop"  # the reference loop's settings
STEPS_PER_UPDATE = 2048
PROGRAMS = ["reference", "bp", "l2er"]
ALL_PROGRAMS = ("reference", "bp", "l2er", "l2er-autograd")
RATIOS = {
    "bp / reference": ("bp", "reference"),
    "l2er / bp": ("l2er", "bp"),
    "l2er-autograd / bp": ("l2er-autograd", "bp"),
    "l2er / l2er-autograd": ("l2er", "l2er-autograd"),
}
TARGETS = {
    "lop": {"bp / reference": 0.95, "l2er / bp": 0.9},
    "sc": {"l2er / bp": 0.85},
}


def reference_ppo(env_id: str, iterations: int, seed: int = 1) -> None:
    """CleanRL's PPO loop with the agent's ``--protocol lop`` settings.

    Same env arguments and wrappers, autoreset mode, network, initialisation,
    optimizer and update as the agent's ``--reg bp``; nothing else.
    """
    import math
    import random

    import gymnasium as gym
    import torch
    import torch.nn as nn
    from torch.distributions.normal import Normal

    import clenv

    gym.register_envs(clenv)
    settings = protocol_defaults("slippery_ant", PROTOCOL)
    num_envs, num_steps = settings["num_envs"], settings["num_steps"]
    num_minibatches, update_epochs = (
        settings["num_minibatches"],
        settings["update_epochs"],
    )
    gamma, gae_lambda = settings["gamma"], settings["gae_lambda"]
    clip_coef, vf_coef = settings["clip_coef"], settings["vf_coef"]
    batch_size = num_envs * num_steps
    minibatch_size = batch_size // num_minibatches
    env_kwargs = agent_env_kwargs(env_id, seed)

    def make_env():
        env = gym.make(env_id, **env_kwargs)
        return gym.wrappers.FlattenObservation(env)  # no ClipAction (both papers)

    def layer_init(layer):  # LeCun-uniform, zero bias (both papers)
        bound = math.sqrt(3 / layer.in_features)
        torch.nn.init.uniform_(layer.weight, -bound, bound)
        torch.nn.init.constant_(layer.bias, 0.0)
        return layer

    def mlp(sizes):
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [layer_init(nn.Linear(fan_in, fan_out)), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    class Agent(nn.Module):
        def __init__(self, obs_dim, act_dim):
            super().__init__()
            hidden = list(settings["hidden_sizes"])
            self.critic = mlp([obs_dim, *hidden, 1])
            self.actor_mean = mlp([obs_dim, *hidden, act_dim])
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
    optimizer = torch.optim.Adam(
        agent.parameters(),
        lr=settings["learning_rate"],
        betas=settings["adam_betas"],
        eps=settings["adam_eps"],
    )

    obs = torch.zeros((num_steps, num_envs) + obs_shape)
    actions = torch.zeros((num_steps, num_envs) + act_shape)
    logprobs, rewards, dones, values = (
        torch.zeros((num_steps, num_envs)) for _ in range(4)
    )
    next_obs, _ = envs.reset(seed=seed)
    next_obs, next_done = torch.Tensor(next_obs), torch.zeros(num_envs)
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
        # Normalised once per rollout (LoP).
        b_advantages = (b_advantages - b_advantages.mean()) / (
            b_advantages.std() + 1e-8
        )
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
                pg_loss = torch.max(
                    -mb_advantages * ratio,
                    -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef),
                ).mean()
                v_loss = ((newvalue.view(-1) - b_returns[mb_inds]) ** 2).mean()
                loss = pg_loss + v_loss * vf_coef
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    envs.close()


def agent_env_kwargs(env_id: str, seed: int) -> dict[str, object]:
    """What the agent passes to a clenv env by default (same tasks, same friction:
    MuJoCo's contact work, hence its speed, depends on the friction)."""
    import gymnasium as gym

    import clenv
    from clenv.envs.slippery_ant import SlipperyAntEnv

    gym.register_envs(clenv)
    probe = gym.make(env_id)
    continual = isinstance(probe.unwrapped, clenv.ContinualEnv)
    slippery_ant = isinstance(probe.unwrapped, SlipperyAntEnv)
    probe.close()
    if not continual:
        return {}
    env_rows = protocol_defaults("slippery_ant", PROTOCOL, kind="env")
    if not slippery_ant:
        env_rows = {"switch_at": env_rows["switch_at"]}
    return {"task_seed": seed, **env_rows}


def process_seconds(command: list[str]) -> dict[str, float]:
    """Run ``command``; its wall seconds and CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def program_command(
    program: str,
    agent: Path,
    env_id: str,
    iterations: int,
    runs_dir: str,
    protocol: str = PROTOCOL,
) -> list[str]:
    """The command line of one program for ``iterations`` PPO updates."""
    if program == "reference":
        return [
            sys.executable, "-m", "clenv.bench.ppo", "--worker", "reference",
            "--env-id", env_id, "--iterations", str(iterations),
        ]  # fmt: skip
    reg, extra = program, []
    if program == "l2er-autograd":
        reg, extra = "l2er", ["--method-kwargs", "er__gradient=autograd"]
    return [
        sys.executable, str(agent), "--reg", reg, *extra, "--env-id", env_id,
        "--protocol", protocol, "--total-timesteps", str(iterations * STEPS_PER_UPDATE),
        "--runs-dir", runs_dir, "--curvature-every-tasks", "0", "--no-progress",
        "--no-plot",
    ]  # fmt: skip


def steady_sps(
    program: str, agent: Path, env_id: str, iterations: int, protocol: str = PROTOCOL
) -> dict[str, float]:
    """Steady-state steps per wall / CPU second of one program.

    Two runs, of 1 update and of ``iterations`` updates: the extra
    ``(iterations - 1) * 2048`` steps over the extra seconds.
    """
    with tempfile.TemporaryDirectory() as runs_dir:
        short = process_seconds(
            program_command(program, agent, env_id, 1, runs_dir, protocol)
        )
        long = process_seconds(
            program_command(program, agent, env_id, iterations, runs_dir, protocol)
        )
    steps = (iterations - 1) * STEPS_PER_UPDATE
    return {clock: steps / (long[clock] - short[clock]) for clock in ("wall", "cpu")}


@dataclass
class PPOBenchArgs:
    """Arguments of ``python -m clenv.bench.ppo``."""

    agent: Path = Path("agents/ppo_l2er.py")
    """path of the PPO agent script, relative to the working directory: run from the repository root"""
    env_id: str = "clenv/SlipperyAnt-v0"
    """the env every program trains on"""
    iterations: int = 4
    """PPO updates of the long run (2048 steps each; a 1-update run is subtracted)"""
    rounds: int = 3
    """runs of each program"""
    protocol: Literal["lop", "sc"] = "lop"
    """the agent's --protocol (the reference loop has LoP's settings: lop only)"""
    programs: tuple[str, ...] | None = None
    """programs to run, from reference, bp, l2er, l2er-autograd (default: reference bp l2er with lop, bp l2er with sc)"""

    def __post_init__(self) -> None:
        # tyro reports a ValueError here as a usage error (no traceback).
        if self.iterations < 2:
            raise ValueError(
                "--iterations must be >= 2 (a 1-update run is subtracted), got "
                f"{self.iterations}"
            )
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if self.programs is None:
            self.programs = tuple(
                PROGRAMS if self.protocol == "lop" else ["bp", "l2er"]
            )
        unknown = sorted(set(self.programs) - set(ALL_PROGRAMS))
        if unknown:
            raise ValueError(
                f"--programs: unknown {unknown}; choose from {list(ALL_PROGRAMS)}"
            )
        if "reference" in self.programs and self.protocol != "lop":
            raise ValueError(
                "the reference loop has LoP's settings: drop 'reference' from "
                "--programs with --protocol sc"
            )
        if not self.agent.is_file():
            raise ValueError(
                f"--agent {self.agent}: no such file; pass the path of "
                "agents/ppo_l2er.py (or run from the repository root)"
            )


@dataclass
class WorkerArgs:
    """Internal: one program's run, started by the benchmark (``--worker``)."""

    worker: Literal["reference"]
    """the program to run"""
    env_id: str = "clenv/SlipperyAnt-v0"
    """the env it trains on"""
    iterations: int = 4
    """PPO updates"""


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark (or, with ``--worker``, one program); return the ratios."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--worker" or arg.startswith("--worker=") for arg in argv):
        worker = tyro.cli(WorkerArgs, args=argv, prog="python -m clenv.bench.ppo")
        reference_ppo(worker.env_id, worker.iterations)
        return {}
    args = tyro.cli(
        PPOBenchArgs,
        args=argv,
        prog="python -m clenv.bench.ppo",
        description=__doc__.split("\n\n")[0],
    )

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    programs = list(args.programs)
    print(
        f"PPO on {args.env_id}, --protocol {args.protocol}: {args.rounds} rounds x "
        f"{args.iterations} updates of 2048 steps, programs taking turns; steady-state "
        "steps per CPU second (per wall second in brackets)"
    )
    sps = {clock: {name: [] for name in programs} for clock in ("wall", "cpu")}
    for round_index in range(args.rounds):
        shift = round_index % len(programs)
        for name in programs[shift:] + programs[:shift]:
            rates = steady_sps(
                name, args.agent, args.env_id, args.iterations, args.protocol
            )
            for clock, value in rates.items():
                sps[clock][name].append(value)
            print(
                f"  round {round_index + 1} {name:>9}: {rates['cpu']:6.0f} "
                f"({rates['wall']:4.0f}) steps/s"
            )
    print(f"\n{'program':>16} {'steps/CPU s':>12} {'(steps/wall s)':>15}")
    for name in programs:
        cpu, wall = np.median(sps["cpu"][name]), np.median(sps["wall"][name])
        print(f"{name:>16} {cpu:12.0f} {wall:15.0f}")
    print(f"\n{'ratio':>20} {'CPU':>6} {'per round':>18} {'(wall)':>7} {'target':>7}")
    results = {}
    targets = TARGETS[args.protocol]
    for name, (top, bottom) in RATIOS.items():
        if top not in programs or bottom not in programs:
            continue
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
        target = targets.get(name)
        verdict = "" if target is None else ("ok" if cpu >= target else "MISSED")
        rounds = " ".join(f"{v:.2f}" for v in per_round["cpu"])
        print(
            f"{name:>20} {cpu:6.2f} {rounds:>18} {wall:7.2f} "
            f"{'' if target is None else target:>7} {verdict}"
        )
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
