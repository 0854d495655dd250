"""A short tour of clenv/SlipperyAnt-v0: random actions, friction switching in place.

Run ``python -m clenv.demo`` (``--help`` for options). Every task switch is printed with
the friction announced in ``info`` and the friction actually held by the MuJoCo model
(``model.geom_friction[:, 0]``, every geom: floor and ant), which must agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import tyro

import clenv


def model_friction(env: gym.Env) -> float:
    """The sliding friction in the live MuJoCo model (the same for every geom)."""
    frictions = env.unwrapped.model.geom_friction[:, 0]
    if not np.all(frictions == frictions[0]):
        raise RuntimeError(f"geoms disagree on friction: {frictions}")
    return float(frictions[0])


@dataclass
class DemoArgs:
    """Arguments of ``python -m clenv.demo``."""

    steps: int = 3000
    """env steps to take"""
    switch_every: int = 1000
    """steps per task (paper: 2M)"""
    switch_at: Literal["step", "episode_end"] = "step"
    """'step': exactly every --switch-every steps (SC); 'episode_end': at the first episode end after that (LoP)"""
    seed: int = 0
    """seed of env and tasks"""

    def __post_init__(self) -> None:
        # tyro reports a ValueError here as a usage error (no traceback).
        if self.steps <= 0:
            raise ValueError(f"--steps must be positive, got {self.steps}")


def main(argv: list[str] | None = None) -> None:
    """Run the demo and print one line per task."""
    args = tyro.cli(
        DemoArgs,
        args=argv,
        prog="python -m clenv.demo",
        description=__doc__.split("\n\n")[0],
    )

    gym.register_envs(clenv)
    env = gym.make(
        "clenv/SlipperyAnt-v0",
        switch_every=args.switch_every,
        switch_at=args.switch_at,
        task_seed=args.seed,
    )
    env.action_space.seed(args.seed)
    print(
        f"clenv/SlipperyAnt-v0: {args.steps} random-action steps, a new friction every "
        f"{args.switch_every} steps (switch_at={args.switch_at!r}), seed {args.seed}\n"
    )

    def summary(returns: list[float]) -> str:
        if not returns:
            return "no episode finished"
        return f"{len(returns)} episodes, mean return {np.mean(returns):.1f}"

    def announce(step: int, old: dict, new: dict, returns: list[float]) -> None:
        if new["task"]["friction"] != model_friction(env):
            raise RuntimeError("info and the MuJoCo model disagree on the friction")
        print(
            f"step {step:>6}: task {old['task_id']} -> {new['task_id']}  "
            f"friction {old['task']['friction']:.4f} -> {new['task']['friction']:.4f} "
            f"(info)  {model_friction(env):.4f} (model, all "
            f"{env.unwrapped.model.ngeom} geoms)  | task {old['task_id']}: "
            f"{summary(returns)}"
        )

    start = time.perf_counter()
    _, info = env.reset(seed=args.seed)
    print(
        f"step      0: task {info['task_id']}  friction {info['task']['friction']:.4f} "
        f"(info)  {model_friction(env):.4f} (model)"
    )
    previous = info
    returns, episode_return = [], 0.0
    for step in range(1, args.steps + 1):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        episode_return += float(reward)
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            _, reset_info = env.reset()
            if reset_info["task_switch"]:  # switch_at="episode_end"
                announce(step, previous, reset_info, returns)
                previous, returns = reset_info, []
        if info["task_switch"]:  # switch_at="step": exactly at the boundary
            announce(step, previous, info, returns)
            previous, returns = info, []
    seconds = time.perf_counter() - start
    print(
        f"\nfinal task {info['task_id']}: friction {model_friction(env):.4f} in the "
        f"model; {args.steps / seconds:,.0f} steps/s"
    )
    print("Returns are a random policy's. More: docs/envs/slippery_ant.md")
    env.close()


if __name__ == "__main__":
    main()
