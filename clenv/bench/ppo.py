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
``curvature/*/seconds``. Targets: bp >= 0.95x reference, l2er >= 0.9x bp. A rate is nan (left out of the
medians) where the long run took no longer than the short one.

``--threads all`` allows each program both cores, as each ships: no
``OMP_NUM_THREADS``, the reference loop and **sb3** (Stable-Baselines3's ``PPO`` with
the same settings, :func:`sb3_ppo`) on torch's default threads (every core), the
agent on its ``--num-threads`` (default 1) and ``--agent-args``. Targets then: bp >=
1.0x reference and >= 1.0x sb3, on CPU seconds and on wall seconds. **bp-base** is
``--reg bp`` of ``--base-agent`` (another version of the agent script, without
``--agent-args``), for a before/after in one run::

    python -m clenv.bench.ppo --threads all --programs reference sb3 bp-base bp \
        --agent agents/ppo_l2er.py --base-agent /tmp/old_ppo_l2er.py

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
import shlex
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
ALL_PROGRAMS = ("reference", "sb3", "bp", "bp-base", "l2er", "l2er-autograd")
WORKERS = ("reference", "sb3")  # programs run by this module (--worker)
RATIOS = {
    "bp / reference": ("bp", "reference"),
    "bp / sb3": ("bp", "sb3"),
    "bp / bp-base": ("bp", "bp-base"),
    "l2er / bp": ("l2er", "bp"),
    "l2er-autograd / bp": ("l2er-autograd", "bp"),
    "l2er / l2er-autograd": ("l2er", "l2er-autograd"),
}
TARGETS = {  # on the CPU-second ratio; with --threads all on both clocks
    "one": {
        "lop": {"bp / reference": 0.95, "l2er / bp": 0.9},
        "sc": {"l2er / bp": 0.85},
    },
    "all": {"lop": {"bp / reference": 1.0, "bp / sb3": 1.0}, "sc": {}},
}


def reference_ppo(
    env_id: str, iterations: int, seed: int = 1, threads: str = "one"
) -> None:
    """CleanRL's PPO loop with the agent's ``--protocol lop`` settings.

    Same env arguments and wrappers, autoreset mode, network, initialisation,
    optimizer and update as the agent's ``--reg bp``; nothing else. ``threads``
    "one" pins torch to one thread; "all" leaves torch's default (every core), as
    CleanRL's script does.
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
    if threads == "one":
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


def sb3_ppo(env_id: str, iterations: int, seed: int = 1, threads: str = "one") -> None:
    """Stable-Baselines3's PPO with the agent's ``--protocol lop`` settings.

    Same env arguments, rollout, epochs, minibatch size, optimizer, coefficients,
    networks and log-std as the agent's ``--reg bp`` (the arm of
    agents/ppo_ant_study.py); SB3's own: orthogonal init, advantages normalised per
    minibatch, actions clipped before ``env.step``, its DummyVecEnv and Monitor.
    ``threads``: "one" pins torch to one thread, "all" leaves SB3's default (torch's:
    every core).
    """
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    import clenv

    gym.register_envs(clenv)
    if threads == "one":
        torch.set_num_threads(1)
    settings = protocol_defaults("slippery_ant", PROTOCOL)
    env = gym.wrappers.FlattenObservation(
        gym.make(env_id, **agent_env_kwargs(env_id, seed))
    )
    hidden = list(settings["hidden_sizes"])
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=settings["learning_rate"],
        n_steps=settings["num_steps"],
        batch_size=settings["num_steps"] // settings["num_minibatches"],
        n_epochs=settings["update_epochs"],
        gamma=settings["gamma"],
        gae_lambda=settings["gae_lambda"],
        clip_range=settings["clip_coef"],
        ent_coef=settings["ent_coef"],
        vf_coef=settings["vf_coef"],  # SB3's value loss is the plain MSE too
        max_grad_norm=float("inf"),  # no clipping
        policy_kwargs=dict(
            net_arch=dict(pi=hidden, vf=hidden),
            activation_fn=torch.nn.ReLU,
            log_std_init=settings["log_std_init"],
            optimizer_kwargs=dict(
                betas=settings["adam_betas"], eps=settings["adam_eps"]
            ),
        ),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.learn(iterations * settings["num_steps"])
    env.close()


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


def process_seconds(
    command: list[str], env: dict[str, str] | None = None
) -> dict[str, float]:
    """Run ``command`` (in ``env``); its wall seconds and CPU seconds (user + system,
    its own subprocesses included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
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
    threads: str = "one",
    agent_args: tuple[str, ...] = (),
    base_agent: Path | None = None,
) -> list[str]:
    """The command line of one program for ``iterations`` PPO updates
    (``agent_args``: extra flags of the agent's programs, not of bp-base)."""
    if program in WORKERS:
        return [
            sys.executable, "-m", "clenv.bench.ppo", "--worker", program,
            "--env-id", env_id, "--iterations", str(iterations), "--threads", threads,
        ]  # fmt: skip
    reg, extra = program, []
    if program == "l2er-autograd":
        reg, extra = "l2er", ["--method-kwargs", "er__gradient=autograd"]
    if program == "bp-base":
        reg, agent, agent_args = "bp", base_agent or agent, ()
    return [
        sys.executable, str(agent), "--reg", reg, *extra, "--env-id", env_id,
        "--protocol", protocol, "--total-timesteps", str(iterations * STEPS_PER_UPDATE),
        "--runs-dir", runs_dir, "--curvature-every-tasks", "0", "--no-progress",
        "--no-plot", *agent_args,
    ]  # fmt: skip


def thread_env(threads: str) -> dict[str, str]:
    """The programs' environment: ``OMP_NUM_THREADS=1`` with "one"; with "all"
    without it (and MKL's), so that each program picks its own threads."""
    env = dict(os.environ)
    if threads == "one":
        env["OMP_NUM_THREADS"] = "1"
    else:
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    return env


def steady_sps(
    program: str,
    agent: Path,
    env_id: str,
    iterations: int,
    protocol: str = PROTOCOL,
    threads: str = "one",
    agent_args: tuple[str, ...] = (),
    base_agent: Path | None = None,
) -> dict[str, float]:
    """Steady-state steps per wall / CPU second of one program.

    Two runs, of 1 update and of ``iterations`` updates: the extra
    ``(iterations - 1) * 2048`` steps over the extra seconds.
    """
    options = dict(protocol=protocol, threads=threads, agent_args=agent_args,
                   base_agent=base_agent)  # fmt: skip
    env = thread_env(threads)
    with tempfile.TemporaryDirectory() as runs_dir:
        short = process_seconds(
            program_command(program, agent, env_id, 1, runs_dir, **options), env
        )
        long = process_seconds(
            program_command(program, agent, env_id, iterations, runs_dir, **options),
            env,
        )
    steps = (iterations - 1) * STEPS_PER_UPDATE
    # nan where the long run took no longer than the short one (a machine so
    # loaded that one update's time is noise): left out of the medians.
    return {
        clock: steps / extra if (extra := long[clock] - short[clock]) > 0 else np.nan
        for clock in ("wall", "cpu")
    }


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
    """programs to run, from reference, sb3, bp, bp-base, l2er, l2er-autograd (default: reference bp l2er with lop, bp l2er with sc)"""
    threads: Literal["one", "all"] = "one"
    """one: every program on one torch thread (OMP_NUM_THREADS=1); all: each program allowed every core, with its own default threads (the agent's: --num-threads and --agent-args)"""
    agent_args: str = ""
    """extra flags of the agent's programs (not bp-base), one string, e.g. --agent-args='--num-threads 2'"""
    base_agent: Path | None = None
    """agent script of the bp-base program (default: --agent), to compare two versions in one run"""

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
        if self.base_agent is not None and not self.base_agent.is_file():
            raise ValueError(
                f"--base-agent {self.base_agent}: no such file; pass the path of an "
                "agent script (or leave it out: bp-base then runs --agent)"
            )
        if "sb3" in self.programs and self.protocol != "lop":
            raise ValueError(
                "the sb3 program has LoP's settings: drop 'sb3' from --programs "
                "with --protocol sc"
            )


@dataclass
class WorkerArgs:
    """Internal: one program's run, started by the benchmark (``--worker``)."""

    worker: Literal["reference", "sb3"]
    """the program to run"""
    env_id: str = "clenv/SlipperyAnt-v0"
    """the env it trains on"""
    iterations: int = 4
    """PPO updates"""
    threads: Literal["one", "all"] = "one"
    """one torch thread, or torch's default (every core)"""


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark (or, with ``--worker``, one program); return the ratios."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--worker" or arg.startswith("--worker=") for arg in argv):
        worker = tyro.cli(WorkerArgs, args=argv, prog="python -m clenv.bench.ppo")
        run = reference_ppo if worker.worker == "reference" else sb3_ppo
        run(worker.env_id, worker.iterations, threads=worker.threads)
        return {}
    args = tyro.cli(
        PPOBenchArgs,
        args=argv,
        prog="python -m clenv.bench.ppo",
        description=__doc__.split("\n\n")[0],
    )

    programs = list(args.programs)
    agent_args = tuple(shlex.split(args.agent_args))
    print(
        f"PPO on {args.env_id}, --protocol {args.protocol}, --threads {args.threads}"
        f"{' (each program allowed every core)' if args.threads == 'all' else ''}: "
        f"{args.rounds} rounds x {args.iterations} updates of 2048 steps, programs "
        "taking turns; steady-state steps per CPU second (per wall second in "
        f"brackets); agent {args.agent} {' '.join(agent_args)}"
        + (
            f"; bp-base: {args.base_agent or args.agent}"
            if "bp-base" in programs
            else ""
        )
    )
    sps = {clock: {name: [] for name in programs} for clock in ("wall", "cpu")}
    for round_index in range(args.rounds):
        shift = round_index % len(programs)
        for name in programs[shift:] + programs[:shift]:
            rates = steady_sps(
                name, args.agent, args.env_id, args.iterations, args.protocol,
                args.threads, agent_args, args.base_agent,
            )  # fmt: skip
            for clock, value in rates.items():
                sps[clock][name].append(value)
            print(
                f"  round {round_index + 1} {name:>9}: {rates['cpu']:6.0f} "
                f"({rates['wall']:4.0f}) steps/s"
            )
    print(f"\n{'program':>16} {'steps/CPU s':>12} {'(steps/wall s)':>15}")
    for name in programs:
        cpu, wall = np.nanmedian(sps["cpu"][name]), np.nanmedian(sps["wall"][name])
        print(f"{name:>16} {cpu:12.0f} {wall:15.0f}")
    clocks = ("cpu", "wall") if args.threads == "all" else ("cpu",)
    print(
        f"\n{'ratio':>20} {'CPU':>6} {'per round':>18} {'wall':>6} {'per round':>18} "
        f"{'target':>7}  (target on {' and '.join(clocks)})"
    )
    results = {}
    targets = TARGETS[args.threads][args.protocol]
    for name, (top, bottom) in RATIOS.items():
        if top not in programs or bottom not in programs:
            continue
        per_round = {
            clock: np.array(sps[clock][top]) / np.array(sps[clock][bottom])
            for clock in ("cpu", "wall")
        }
        median = {clock: float(np.nanmedian(per_round[clock])) for clock in per_round}
        results[name] = median["cpu"]
        results[f"{name} (wall)"] = median["wall"]
        target = targets.get(name)
        met = target is not None and all(median[c] >= target for c in clocks)
        verdict = "" if target is None else ("ok" if met else "MISSED")
        cpu_rounds, wall_rounds = (
            " ".join(f"{v:.2f}" for v in per_round[clock]) for clock in ("cpu", "wall")
        )
        print(
            f"{name:>20} {median['cpu']:6.2f} {cpu_rounds:>18} {median['wall']:6.2f} "
            f"{wall_rounds:>18} {'' if target is None else target:>7} {verdict}"
        )
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
