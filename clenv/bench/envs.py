"""Cost of the continual layer: clenv/SlipperyAnt-v0 next to Gymnasium's Ant-v5.

Run ``OMP_NUM_THREADS=1 python -m clenv.bench.envs`` (``--help`` for options).

Every env is built with ``gym.make`` (same wrappers) and the same Ant-v5 arguments
(clenv's defaults are Ant-v5's). Each block resets every env with the same seed and
replays the same pre-drawn random actions, the envs taking turns step by step (the turn
order rotates), each step timed on its own; all in one process, so load from other
processes hits all of them alike.

The layer row pins the friction to Ant-v5's 1.0 (``friction_range=(1, 1)``): it then
simulates bit-identical trajectories to Ant-v5 (checked before timing), so step *i*
does the same physics in both, and any difference is clenv's layer alone (task
schedule, info keys, action checks). Three estimates of that cost are printed:

* **best of blocks** (headline): every block replays the same trajectory, so the
  fastest of the blocks' times for step *i* is that step's cost with the least
  interference from other processes; summed over the steps, per env;
* the ratio of plain steps/s, median over blocks (what a user sees; noisy under load);
* the layer timed with MuJoCo stubbed out (no physics at all).

Target: ratio >= 0.97, i.e. the layer costs at most 3%. The default SlipperyAnt-v0 row
runs task 0's friction (0.38 for task_seed 0), so MuJoCo does different contact work
there: its ratio is physics, not overhead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro

import clenv

TARGET_RATIO = 0.97
BASELINE = "Ant-v5"
LAYER_ONLY = "clenv/SlipperyAnt-v0 (friction 1.0)"
CANDIDATES = {
    BASELINE: dict(id="Ant-v5"),
    LAYER_ONLY: dict(id="clenv/SlipperyAnt-v0", friction_range=(1.0, 1.0)),
    "clenv/SlipperyAnt-v0 (defaults)": dict(id="clenv/SlipperyAnt-v0"),
}


def time_interleaved(envs: list[gym.Env], actions: np.ndarray) -> np.ndarray:
    """Seconds per step, shape ``(len(envs), len(actions))`` (resets included).

    The envs take turns step by step (the turn order rotates every step), so a burst of
    load from other processes hits all of them alike.
    """
    seconds = np.zeros((len(envs), len(actions)))
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
            seconds[i, step] = clock() - start
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


def layer_microseconds(steps: int = 20_000) -> float:
    """Microseconds per step that SlipperyAntEnv adds, with MuJoCo stubbed out.

    The Ant-v5 inside is replaced by a stub that returns a canned transition, so only
    clenv's layer is timed (best of 5); the stub's own cost is subtracted.
    """
    env = gym.make("clenv/SlipperyAnt-v0", switch_every=1000).unwrapped
    obs, _ = env.reset(seed=0)

    class CannedAnt:
        def step(self, action):
            return obs, 0.0, False, False, {}

    env._mujoco_env = CannedAnt()  # private on purpose: a benchmark-only stub
    action = np.zeros(8, np.float32)
    best = {}
    for name, step in (("stub", CannedAnt().step), ("layer", env.step)):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(steps):
                step(action)
            times.append((time.perf_counter() - start) / steps)
        best[name] = min(times)
    return 1e6 * (best["layer"] - best["stub"])


@dataclass
class EnvsBenchArgs:
    """Arguments of ``python -m clenv.bench.envs``."""

    block_steps: int = 1000
    """env steps per timed block"""
    repeats: int = 15
    """timed blocks (one ratio each)"""
    stub_steps: int = 20_000
    """steps per timing of the layer with MuJoCo stubbed out"""
    seed: int = 0
    """seed of envs and actions"""

    def __post_init__(self) -> None:
        # tyro reports a ValueError here as a usage error (no traceback).
        if min(self.block_steps, self.repeats, self.stub_steps) <= 0:
            raise ValueError(
                "--block-steps, --repeats and --stub-steps must be positive, got "
                f"{self.block_steps}, {self.repeats} and {self.stub_steps}"
            )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print a table, and return its figures by name."""
    args = tyro.cli(
        EnvsBenchArgs,
        args=argv,
        prog="python -m clenv.bench.envs",
        description=__doc__.split("\n\n")[0],
    )

    gym.register_envs(clenv)
    envs = {}
    for name, spec in CANDIDATES.items():
        kwargs = dict(spec)
        envs[name] = gym.make(kwargs.pop("id"), **kwargs)
    names = list(envs)
    actions = (
        np.random.default_rng(args.seed)
        .uniform(-1.0, 1.0, (args.block_steps, 8))
        .astype(np.float32)
    )
    print(
        f"{len(envs)} envs x {args.repeats} blocks of {args.block_steps} random-action "
        f"steps, interleaved step by step (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    identical = same_trajectories(envs[BASELINE], envs[LAYER_ONLY], actions, args.seed)
    print(f"{LAYER_ONLY} and {BASELINE}: bit-identical trajectories: {identical}")

    for env in envs.values():
        env.reset(seed=args.seed)
    time_interleaved(list(envs.values()), actions[:200])  # warm-up
    blocks = []
    for _ in range(args.repeats):
        for env in envs.values():  # every block replays the same trajectories
            env.reset(seed=args.seed)
        blocks.append(time_interleaved(list(envs.values()), actions))
    seconds = np.stack(blocks, axis=1)  # (env, block, step)
    steps_per_second = args.block_steps / seconds.sum(axis=2)  # (env, block)

    print(f"\n{'env':<40}{'steps/s':>10}{'us/step':>10}{'ratio':>8}")
    ratios = {}
    for i, name in enumerate(names):
        ratios[name] = float(np.median(steps_per_second[i] / steps_per_second[0]))
        sps = float(np.median(steps_per_second[i]))
        print(f"{name:<40}{sps:>10,.0f}{1e6 / sps:>10.1f}{ratios[name]:>8.3f}")

    layer = names.index(LAYER_ONLY)
    best = seconds.min(axis=1).sum(axis=1)  # (env,): fastest block per step, summed
    best_ratio = float(best[0] / best[layer])
    best_us = 1e6 * float(best[layer] - best[0]) / args.block_steps
    ant_us = 1e6 * float(best[0]) / args.block_steps
    stub_us = layer_microseconds(args.stub_steps)
    verdict = "meets" if best_ratio >= TARGET_RATIO else "MISSES"
    print(
        f"\ncontinual layer, best of {args.repeats} blocks per step: {best_us:+.1f} us "
        f"per step over Ant-v5's {ant_us:.0f} us, ratio {best_ratio:.3f}: {verdict} "
        f"the target >= {TARGET_RATIO}\n"
        f"continual layer, steps/s ratio (median over blocks): {ratios[LAYER_ONLY]:.3f}"
        f"\ncontinual layer, MuJoCo stubbed out: {stub_us:.1f} us per step"
    )
    for env in envs.values():
        env.close()
    return {
        "layer_ratio_best": best_ratio,
        "layer_ratio_steps_per_second": ratios[LAYER_ONLY],
        "layer_us_per_step_best": best_us,
        "layer_us_per_step_stubbed": stub_us,
        "ant_v5_us_per_step_best": ant_us,
        "default_slippery_ant_ratio": ratios["clenv/SlipperyAnt-v0 (defaults)"],
    }


if __name__ == "__main__":
    main()
