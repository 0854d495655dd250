"""Does clenv's PPO learn? A study of ``agents/ppo_l2er.py`` on Ant, against SB3.

Four arms, each 1M steps, one torch thread each (docs/results/ppo_ant.md):

- ``clenv-bp-ant``: ``agents/ppo_l2er.py --reg bp --protocol lop`` on stationary
  ``Ant-v5``;
- ``sb3-bp-ant``: Stable-Baselines3's PPO on ``Ant-v5`` with the same rollout (2048),
  epochs (10), minibatch (128), learning rate (1e-4), Adam betas (0.99, 0.99), network
  sizes (separate 2x256 ReLU actor and critic, log-std 0), discount, GAE lambda,
  clipping, entropy (0), value coefficient (1) and no gradient clipping;
- ``clenv-bp-slippery`` and ``clenv-l2er-slippery``: ``--reg bp`` and ``--reg l2er``
  under ``--protocol lop`` on ``clenv/SlipperyAnt-v0`` with a friction switch every
  200,000 steps (LoP: 2M).

Every arm resumes where it stopped (clenv runs with ``--resume``; SB3 from the model
and step count it saves every 50k steps), so ``run`` can be repeated after a kill and
finished arms are skipped. ``plot`` draws the return curves and writes the summary:

    python agents/ppo_ant_study.py run clenv-bp-ant sb3-bp-ant
    python agents/ppo_ant_study.py plot
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

AGENT = Path(__file__).with_name("ppo_l2er.py")
ARMS = ("clenv-bp-ant", "sb3-bp-ant", "clenv-bp-slippery", "clenv-l2er-slippery")
Arm = Literal["clenv-bp-ant", "sb3-bp-ant", "clenv-bp-slippery", "clenv-l2er-slippery"]
LABELS = {
    "clenv-bp-ant": "clenv PPO (bp), Ant-v5",
    "sb3-bp-ant": "SB3 PPO, Ant-v5",
    "clenv-bp-slippery": "clenv PPO bp, Slippery Ant",
    "clenv-l2er-slippery": "clenv PPO l2er, Slippery Ant",
}


@dataclass
class Run:
    """Train the given arms one after the other (finished arms are skipped)."""

    arms: tuple[Arm, ...] = ARMS
    """which arms to run"""
    total_timesteps: int = 1_000_000
    """environment steps per arm"""
    switch_every: int = 200_000
    """Slippery Ant: steps between friction switches"""
    seed: int = 1
    """seed of every arm"""
    runs_dir: str = "runs/ppo_ant_study"
    """where the arms' runs go"""


@dataclass
class Plot:
    """Draw the return curves of the arms found in --runs-dir and write the summary."""

    runs_dir: str = "runs/ppo_ant_study"
    """where the arms' runs are"""
    out: str = "docs/results"
    """where ppo_ant.png and ppo_ant.json go"""
    window: int = 20
    """episodes in the moving average of the return curves"""


def clenv_command(arm: str, args: Run, run_dir: Path | None) -> list[str]:
    """The agent's command line for a clenv arm (a resume when the run exists)."""
    if run_dir is not None:
        return [sys.executable, str(AGENT), "--resume", str(run_dir), "--no-progress"]
    reg = "l2er" if "l2er" in arm else "bp"
    command = [
        sys.executable, str(AGENT), "--reg", reg, "--protocol", "lop",
        "--seed", str(args.seed), "--total-timesteps", str(args.total_timesteps),
        "--runs-dir", str(Path(args.runs_dir) / arm), "--exp-name", arm,
        "--no-progress", "--no-plot", "--checkpoint-every", "50000",
    ]  # fmt: skip
    if arm.endswith("-ant"):
        return [*command, "--env-id", "Ant-v5"]
    return [*command, "--env-kwargs", f"switch_every={args.switch_every}"]


def existing_run(directory: Path) -> Path | None:
    runs = sorted(p for p in directory.glob("*") if (p / "args.json").exists())
    return runs[-1] if runs else None


def run_clenv(arm: str, args: Run) -> None:
    directory = Path(args.runs_dir) / arm
    run_dir = existing_run(directory)
    if run_dir is not None and (run_dir / "done").exists():
        print(f"{arm}: finished ({run_dir})")
        return
    command = clenv_command(arm, args, run_dir)
    print("+", " ".join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env)
    (existing_run(directory) / "done").touch()


def run_sb3(args: Run) -> None:
    """SB3's PPO with the clenv agent's LoP settings; checkpoints every 50k steps."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.monitor import Monitor

    torch.set_num_threads(1)
    directory = Path(args.runs_dir) / "sb3-bp-ant"
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "done").exists():
        print(f"sb3-bp-ant: finished ({directory})")
        return
    # Monitor appends to monitor.csv across resumes (override_existing=False).
    env = Monitor(
        gym.make("Ant-v5"), str(directory / "monitor"), override_existing=False
    )
    checkpoints = sorted(
        directory.glob("model_*_steps.zip"), key=lambda p: int(p.stem.split("_")[1])
    )
    if checkpoints:
        model = PPO.load(checkpoints[-1], env=env, device="cpu")
        print(f"sb3-bp-ant: resumed from {checkpoints[-1]}", flush=True)
    else:
        model = PPO(
            "MlpPolicy",
            env,
            learning_rate=1e-4,
            n_steps=2048,
            batch_size=128,
            n_epochs=10,
            gamma=0.99,
            gae_lambda=0.95,
            clip_range=0.2,
            ent_coef=0.0,
            vf_coef=1.0,  # SB3's value loss is the plain MSE, as LoP's
            max_grad_norm=float("inf"),  # no clipping, as LoP
            policy_kwargs=dict(
                net_arch=dict(pi=[256, 256], vf=[256, 256]),
                activation_fn=torch.nn.ReLU,
                log_std_init=0.0,
                optimizer_kwargs=dict(betas=(0.99, 0.99), eps=1e-8),
            ),
            seed=args.seed,
            device="cpu",
            verbose=0,
        )
    remaining = args.total_timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(
            remaining,
            callback=CheckpointCallback(50_000, str(directory), name_prefix="model"),
            reset_num_timesteps=False,
        )
    model.save(directory / f"model_{model.num_timesteps}_steps")
    (directory / "done").touch()


def load_returns(runs_dir: Path, arm: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(step at episode end, episodic return) of an arm, or None if it has no data."""
    directory = runs_dir / arm
    if arm.startswith("sb3"):
        path = directory / "monitor.monitor.csv"
        if not path.exists():
            return None
        # Rows are r,l,t; a file appended to across resumes has no header line.
        with path.open() as file:
            rows = [
                row
                for row in csv.reader(file)
                if row and not row[0].startswith("#") and row[0] != "r"
            ]
        returns = np.array([float(row[0]) for row in rows])
        lengths = np.array([int(row[1]) for row in rows])
        return np.cumsum(lengths), returns
    from clenv.logger import read_series

    run_dir = existing_run(directory)
    if run_dir is None or not (run_dir / "metrics.h5").exists():
        return None
    series = read_series(run_dir / "metrics.h5", "charts/episodic_return")
    return series["step"], series["value"]


def switch_steps(runs_dir: Path, arm: str) -> list[int]:
    """Steps at which a clenv arm's task id changed (its friction switches)."""
    from clenv.logger import read_series

    run_dir = existing_run(runs_dir / arm)
    if arm.startswith("sb3") or run_dir is None:
        return []
    try:
        series = read_series(run_dir / "metrics.h5", "cl/task_id")
    except (KeyError, OSError):
        return []
    changed = np.flatnonzero(np.diff(series["value"]) != 0) + 1
    return [int(series["step"][i]) for i in changed]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(min(window, len(values))) / min(window, len(values))
    return np.convolve(values, kernel, mode="valid")


def plot(args: Plot) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs_dir, out = Path(args.runs_dir), Path(args.out)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    summary = {}
    for arm in ARMS:
        data = load_returns(runs_dir, arm)
        if data is None or len(data[1]) == 0:
            continue
        steps, returns = data
        axis = axes[0] if arm.endswith("-ant") else axes[1]
        smooth = moving_average(returns, args.window)
        line = axis.plot(steps[len(steps) - len(smooth) :], smooth, label=LABELS[arm])
        for step in switch_steps(runs_dir, arm):
            axis.axvline(step, color=line[0].get_color(), ls=":", lw=1)
        # Mean return of the episodes ending in each 200k-step block (one block per
        # task on Slippery Ant); the last episode, ending just past the run's last
        # block, counts in it.
        blocks = max(1, round(steps[-1] / 200_000))
        block = np.minimum((steps - 1) // 200_000, blocks - 1)
        per_200k = {
            f"{200 * k}k-{200 * (k + 1)}k": round(float(returns[block == k].mean()), 1)
            for k in range(blocks)
            if (block == k).any()
        }
        summary[arm] = {
            "steps": int(steps[-1]),
            "episodes": len(returns),
            "mean_return_per_200k_steps": per_200k,
            "last_20_episodes": round(float(returns[-20:].mean()), 1),
        }
    axes[0].set_title("Stationary Ant-v5: clenv PPO vs Stable-Baselines3")
    axes[1].set_title("Slippery Ant, friction switch every 200k steps (dotted)")
    for axis in axes:
        axis.set_xlabel("environment steps")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left")
    axes[0].set_ylabel(f"episodic return ({args.window}-episode moving average)")
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "ppo_ant.png", dpi=110)
    (out / "ppo_ant.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"figure: {out / 'ppo_ant.png'}")


if __name__ == "__main__":
    command = tyro.extras.subcommand_cli_from_dict({"run": Run, "plot": Plot})
    if isinstance(command, Plot):
        plot(command)
    else:
        for arm in command.arms:
            if arm.startswith("sb3"):
                run_sb3(command)
            else:
                run_clenv(arm, command)
