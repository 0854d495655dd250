"""Benchmark: env-only steps/s of clenv/PermutedMNIST-v0 next to a plain numpy loop.

The plain loop does the same work per step as the env, written as directly as numpy
allows: slice a shuffled index order, gather the rows, gather the pixel permutation,
divide by 255 into float32, and score the predictions against the labels. Both run in
this process, interleaved in rounds, and the ratio of their median rates is printed
(target: >= 0.8 at batch 256). The env is measured as ``gym.make`` returns it (with
Gymnasium's checker and order-enforcing wrappers) and unwrapped.

Run on the real MNIST::

    clenv download mnist   # once
    OMP_NUM_THREADS=1 python -m clenv.bench.supervised
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro

import clenv
from clenv.data import load_mnist
from clenv.envs.permuted_mnist import pixel_permutation


@dataclass
class Args:
    batch_sizes: tuple[int, ...] = (1, 256)
    """batch sizes to measure"""
    rounds: int = 7
    """interleaved rounds per batch size (the median round is reported)"""
    seconds_per_round: float = 0.5
    """wall time of each contender in each round"""
    data_dir: str | None = None
    """data root (default: $CLENV_DATA_DIR, else ~/.cache/clenv)"""
    seed: int = 0
    """seed of the env, the numpy loop and the random predictions"""


def env_runner(env: gym.Env, batch_size: int, seed: int) -> Callable[[int], None]:
    """``run(steps)`` stepping ``env`` with random predictions."""
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, 10, (1024, batch_size))
    if batch_size == 1:
        actions = [int(a) for a in actions[:, 0]]

    def run(steps: int) -> None:
        step = env.step
        for i in range(steps):
            step(actions[i % 1024])

    return run


def numpy_runner(
    images: np.ndarray,
    labels: np.ndarray,
    permutation: np.ndarray,
    batch_size: int,
    seed: int,
) -> Callable[[int], None]:
    """``run(steps)`` of the plain numpy loop doing the env's per-step work."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 10, (1024, batch_size))
    state = {"order": rng.permutation(len(labels)), "position": 0}
    scale = np.float32(255)

    def run(steps: int) -> None:
        order, position = state["order"], state["position"]
        for i in range(steps):
            if position + batch_size > len(order):
                order, position = rng.permutation(len(labels)), 0
            index = order[position : position + batch_size]
            position += batch_size
            rows = images.take(index, axis=0)
            obs = rows.take(permutation, axis=1).astype(np.float32)
            obs /= scale
            np.count_nonzero(actions[i % 1024] == labels[index]) / batch_size
        state["order"], state["position"] = order, position

    return run


def steps_per_second(run: Callable[[int], None], seconds: float) -> float:
    """Rate of ``run`` over about ``seconds`` of wall time, in chunks."""
    steps, start, chunk = 0, time.perf_counter(), 64
    while (elapsed := time.perf_counter() - start) < seconds:
        run(chunk)
        steps += chunk
    return steps / elapsed


def measure(args: Args, batch_size: int, images, labels) -> dict[str, float]:
    """Median steps/s of each contender over interleaved rounds."""
    kwargs = dict(batch_size=batch_size, data_dir=args.data_dir)
    made = gym.make("clenv/PermutedMNIST-v0", **kwargs)
    permutation = pixel_permutation(made.unwrapped.task_params(0))
    contenders = {
        "numpy loop": numpy_runner(images, labels, permutation, batch_size, args.seed),
        "env (gym.make)": env_runner(made, batch_size, args.seed),
        "env (unwrapped)": env_runner(
            gym.make("clenv/PermutedMNIST-v0", **kwargs).unwrapped,
            batch_size,
            args.seed,
        ),
    }
    for run in contenders.values():  # warm up caches and allocators
        run(64)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            rates[name].append(steps_per_second(run, args.seconds_per_round))
    return {name: float(np.median(values)) for name, values in rates.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print a table, and return the figures per batch size."""
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    gym.register_envs(clenv)
    images, labels = load_mnist("train", args.data_dir)
    print(
        f"clenv/PermutedMNIST-v0, env-only steps/s (median of {args.rounds} interleaved "
        f"rounds of {args.seconds_per_round}s; random predictions)"
    )
    header = (
        f"{'batch':>6} {'numpy loop':>12} {'env (gym.make)':>15} {'ratio':>6} "
        f"{'env (unwrapped)':>16} {'ratio':>6} {'examples/s (env)':>17}"
    )
    print(header)
    figures: dict[str, float] = {}
    for batch_size in args.batch_sizes:
        rates = measure(args, batch_size, images, labels)
        base = rates["numpy loop"]
        made, raw = rates["env (gym.make)"], rates["env (unwrapped)"]
        print(
            f"{batch_size:>6} {base:>12,.0f} {made:>15,.0f} {made / base:>6.2f} "
            f"{raw:>16,.0f} {raw / base:>6.2f} {made * batch_size:>17,.0f}"
        )
        figures[f"batch {batch_size}: env steps/s"] = made
        figures[f"batch {batch_size}: numpy loop steps/s"] = base
        figures[f"batch {batch_size}: ratio (gym.make)"] = made / base
        figures[f"batch {batch_size}: ratio (unwrapped)"] = raw / base
    print("target: ratio >= 0.8 at batch 256")
    return figures


if __name__ == "__main__":
    main()
