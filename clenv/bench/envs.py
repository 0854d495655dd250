"""Cost of the continual layer: clenv/SlipperyAnt-v0 next to Gymnasium's Ant-v5.

Run ``python -m clenv.bench.envs`` (``--help`` for options). Every env is built with
``gym.make`` (same wrappers) and the same Ant-v5 arguments (clenv's defaults are
Ant-v5's), seeded alike and stepped with the same pre-drawn random actions in one process,
taking turns step by step (the turn order rotates), so machine load hits all of them
alike; each step is timed on its own and summed per block.

The headline row pins the friction to Ant-v5's 1.0 (``friction_range=(1, 1)``): both
envs then simulate bit-identical trajectories (checked before timing), so the ratio
steps/s(SlipperyAnt) / steps/s(Ant-v5) measures the continual layer alone (task
schedule, info keys, action checks). Target: >= 0.97, i.e. it costs at most 3%. The
default SlipperyAnt-v0 row runs task 0's friction (0.38 for task_seed 0), so MuJoCo
itself does different contact work there: its ratio is physics, not overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import gymnasium as gym
import numpy as np

import clenv

TARGET_RATIO = 0.97
BASELINE = "Ant-v5"
LAYER_ONLY = "clenv/SlipperyAnt-v0 (friction 1.0)"


def _candidates() -> dict[str, dict]:
    return {
        "Ant-v5": dict(id="Ant-v5"),
        LAYER_ONLY: dict(id="clenv/SlipperyAnt-v0", friction_range=(1.0, 1.0)),
        "clenv/SlipperyAnt-v0 (defaults)": dict(id="clenv/SlipperyAnt-v0"),
    }


def time_interleaved(envs: list[gym.Env], actions: np.ndarray) -> np.ndarray:
    """Seconds each env spends on ``len(actions)`` steps (resets included).

    The envs take turns step by step (the turn order rotates every step), so a burst of
    load from other processes hits all of them alike.
    """
    seconds = np.zeros(len(envs))
    clock = time.perf_counter
    order = list(range(len(envs)))
    for step, action in enumerate(actions):
        shift = step % len(envs)
        for i in order[shift:] + order[:shift]:
            env = envs[i]
            start = clock()
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
            seconds[i] += clock() - start
    return seconds


def same_trajectories(a: gym.Env, b: gym.Env, actions: np.ndarray, seed: int) -> bool:
    """Whether two envs give bit-identical observations under the same actions."""
    obs_a, _ = a.reset(seed=seed)
    obs_b, _ = b.reset(seed=seed)
    same = np.array_equal(obs_a, obs_b)
    for action in actions:
        obs_a, _, term_a, trunc_a, _ = a.step(action)
        obs_b, _, term_b, trunc_b, _ = b.step(action)
        same &= np.array_equal(obs_a, obs_b) and (term_a, trunc_a) == (term_b, trunc_b)
        if term_a or trunc_a:
            a.reset()
            b.reset()
    return bool(same)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print a table, and return the median ratios per env."""
    parser = argparse.ArgumentParser(
        prog="python -m clenv.bench.envs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--block-steps", type=int, default=1000, help="env steps per timed block"
    )
    parser.add_argument(
        "--repeats", type=int, default=15, help="timed blocks (one ratio each)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of envs and actions")
    args = parser.parse_args(argv)
    if args.block_steps <= 0 or args.repeats <= 0:
        parser.error("--block-steps and --repeats must be positive")

    gym.register_envs(clenv)
    envs = {}
    for name, spec in _candidates().items():
        kwargs = dict(spec)
        envs[name] = gym.make(kwargs.pop("id"), **kwargs)
    actions = (
        np.random.default_rng(args.seed)
        .uniform(-1.0, 1.0, (args.block_steps, 8))
        .astype(np.float32)
    )
    print(
        f"{len(envs)} envs x {args.repeats} interleaved blocks of {args.block_steps} "
        f"random-action steps (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    )
    identical = same_trajectories(envs[BASELINE], envs[LAYER_ONLY], actions, args.seed)
    print(f"{LAYER_ONLY} and {BASELINE}: bit-identical trajectories: {identical}")
    names = list(envs)
    for env in envs.values():
        env.reset(seed=args.seed)
    time_interleaved(list(envs.values()), actions[:200])  # warm-up
    steps_per_second = {name: [] for name in names}
    for _ in range(args.repeats):
        seconds = time_interleaved(list(envs.values()), actions)
        for name, sec in zip(names, seconds, strict=True):
            steps_per_second[name].append(args.block_steps / sec)

    print(f"\n{'env':<40}{'steps/s':>10}{'us/step':>10}{'ratio':>8}")
    ratios = {}
    for name in names:
        ratios[name] = statistics.median(
            a / b
            for a, b in zip(
                steps_per_second[name], steps_per_second[BASELINE], strict=True
            )
        )
        sps = statistics.median(steps_per_second[name])
        print(f"{name:<40}{sps:>10,.0f}{1e6 / sps:>10.1f}{ratios[name]:>8.3f}")
    main_ratio = ratios[LAYER_ONLY]
    overhead_us = 1e6 * (
        1 / statistics.median(steps_per_second[LAYER_ONLY])
        - 1 / statistics.median(steps_per_second[BASELINE])
    )
    verdict = "meets" if main_ratio >= TARGET_RATIO else "MISSES"
    print(
        f"\ncontinual layer: SlipperyAnt-v0 / Ant-v5 = {main_ratio:.3f} (median of "
        f"per-block ratios, identical physics), about {overhead_us:+.1f} "
        f"us per step: {verdict} the target >= {TARGET_RATIO}"
    )
    for env in envs.values():
        env.close()
    return ratios


if __name__ == "__main__":
    main()
