"""Batch-1 online training speed on Permuted MNIST's MLP: fast path vs a plain loop.

Run ``python -m clenv.bench.supervised_agent`` (``--help`` for options). In one process,
taking turns block by block (the order rotates), it trains on the same random
MNIST-shaped examples (784 inputs, 10 classes):

* **eager**: the plain PyTorch loop, ``nn.Linear`` + ReLU MLP, ``cross_entropy``,
  ``backward()``, ``torch.optim.SGD.step()``, batch 1 (the baseline);
* **fast bp / l2 / l2er / cbp**: :class:`clenv.fastpath.FastMLPTrainer` with the native
  kernel, chunks of ``--chunk`` examples (SC's PMNIST presets: L2 1e-3, L2-ER ascent
  every 100 steps, CBP rr 1e-6 maturity 100);
* **fast bp (torch)**: the same math in torch ops (the fallback without a compiler);
* **fast / autograd <method>:<variant>**: a ``--methods`` entry may name a network
  variant of ``clenv bench methods`` (``layernorm``, ``crelu``: ``nap:layernorm`` is
  ``--reg nap --norm layer``); ``--autograd`` times the same entries on the autograd
  loop with clenv.methods' hooks, and the run prints each fast/autograd ratio;
* **fast l2er (autograd ascent)**: fast l2er with the ascent's gradient by autograd
  through the SVD (``er__gradient="autograd"``, the implementation before the
  closed-form gradient), so its speed-up is measured in the same run.

``--data mnist`` trains on real MNIST images (one fixed pixel permutation, random
examples; ``clenv download mnist`` or ``$CLENV_DATA_DIR``) instead of random
MNIST-shaped inputs: the ER ascent's cost depends a little on the features (how many
units a buffer leaves inactive).

All use one torch thread (``torch.set_num_threads(1)``): at batch 1, a second thread
only adds synchronisation (about 3x slower here). Figures are examples per CPU-second
of the process (``time.process_time``, the median over blocks: on a shared machine the
wall clock also counts the time other processes hold the core), the same per wall-clock
second, and the ratio to eager measured in the same run. For reference, SC's own JAX code (a whole task compiled as
one ``lax.scan``) measured on the project's 2-core machine: width 1000, 1,060 ex/s
(L2-ER 515); width 100, 37,000 ex/s (L2-ER 10,200). Targets: width 1000 fast bp >=
850 ex/s; width 100 fast bp >= 5x eager.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from clenv.bench.methods import MODEL_VARIANTS
from clenv.fastpath import FastMLPTrainer, load_kernel
from clenv.methods import make_method
from clenv.models import PermutedMNISTMLP

SC_JAX = {1000: (1060, 515), 100: (37_000, 10_200)}  # (bp, l2er) ex/s, see above
LR = 0.01


def eager_runner(width: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    model = PermutedMNISTMLP(width=width)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        for k in range(x.shape[0]):
            loss = F.cross_entropy(model(x[k : k + 1]), y[k : k + 1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def build_model(width: int, spec: str) -> tuple[PermutedMNISTMLP, str]:
    """The MLP of a ``method[:variant]`` entry and its method name.

    Raises:
        SystemExit: for a variant that is not one of the network's.
    """
    reg, _, variant = spec.partition(":")
    if variant and variant not in MODEL_VARIANTS:
        raise SystemExit(
            f"unknown network variant {variant!r} in {spec!r}; known: "
            f"{list(MODEL_VARIANTS)} (e.g. nap:layernorm)"
        )
    return PermutedMNISTMLP(width=width, **MODEL_VARIANTS.get(variant, {})), reg


def autograd_method_runner(width: int, spec: str) -> Callable:
    """The autograd loop with clenv.methods hooks (what the agent runs for conv nets)."""
    model, reg = build_model(width, spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    method = make_method(reg, model, optimizer, preset="pmnist")

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        for k in range(x.shape[0]):
            loss = F.cross_entropy(model(x[k : k + 1]), y[k : k + 1])
            optimizer.zero_grad()
            loss.backward()
            method.after_backward()
            optimizer.step()
            method.after_step(x[k : k + 1])

    return run


def fast_runner(
    width: int, spec: str, chunk: int, backend: str = "native", **overrides
) -> Callable:
    model, reg = build_model(width, spec)
    method = make_method(reg, model, None, preset="pmnist", **overrides)
    trainer = FastMLPTrainer(model, LR, method=method, backend=backend)

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        for start in range(0, x.shape[0], chunk):
            trainer.train(x[start : start + chunk], y[start : start + chunk])

    return run


def example_source(
    data: str, data_dir: str | None = None
) -> Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """``draw(count, generator) -> (inputs, labels)``: random MNIST-shaped examples
    (uniform pixels, 80% of them zero) or real MNIST images under one fixed pixel
    permutation."""
    if data == "random":

        def draw_random(count, generator):
            x = torch.rand(count, 784, generator=generator)
            x[x < 0.8] = 0
            return x, torch.randint(0, 10, (count,), generator=generator)

        return draw_random
    from clenv.data import load_mnist

    images, labels = load_mnist("train", data_dir)
    permutation = np.random.default_rng(0).permutation(784)
    images = torch.from_numpy(
        (images.reshape(len(images), -1)[:, permutation] / 255).astype(np.float32)
    )
    labels = torch.from_numpy(labels.astype(np.int64))

    def draw_mnist(count, generator):
        # Without replacement, as an epoch of the env (no sample twice in a buffer).
        index = torch.randperm(len(labels), generator=generator)[:count]
        return images[index], labels[index]

    return draw_mnist


def measure(
    runners: dict[str, tuple[Callable, int]],
    rounds: int,
    seed: int = 0,
    draw: Callable | None = None,
) -> dict[str, tuple[float, float]]:
    """Median examples/s of each runner over ``rounds`` interleaved blocks.

    ``runners`` maps a name to ``(run, examples per block)``: slow runners get
    smaller blocks so one round takes similar time for each. Returns
    ``{name: (per CPU-second, per wall-clock second)}``. The inputs come from
    ``draw`` (:func:`example_source`; default: random MNIST-like inputs).
    """
    draw = draw or example_source("random")
    generator = torch.Generator().manual_seed(seed)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run, count = runners[name]
            x, y = draw(count, generator)
            wall, cpu = time.perf_counter(), time.process_time()
            run(x, y)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rates[name].append((count / max(cpu, 1e-9), count / wall))
    return {
        name: (
            statistics.median(v[0] for v in values),
            statistics.median(v[1] for v in values),
        )
        for name, values in rates.items()
    }


@dataclass
class Args:
    widths: list[int] = field(default_factory=lambda: [100, 1000])
    """hidden widths of the MLP to time"""
    rounds: int = 9
    """interleaved blocks"""
    seconds: float = 0.5
    """target time per runner per block"""
    chunk: int = 100
    """examples per call"""
    methods: list[str] = field(default_factory=lambda: ["bp", "l2", "l2er", "cbp"])
    """fast-path --reg names to time, each optionally with a network variant (layernorm, crelu): nap:layernorm"""
    autograd: list[str] = field(default_factory=list)
    """entries of --methods to time on the autograd loop too (the ratio fast/autograd is printed)"""
    autograd_l2er: bool = False
    """also time the autograd loop with clenv.methods' L2-ER hooks"""
    compare_ascent: bool = True
    """with l2er in --methods, also time fast l2er with the ascent's gradient by autograd (the implementation before the closed form)"""
    data: Literal["random", "mnist"] = "random"
    """examples: random MNIST-shaped inputs, or real MNIST images (needs `clenv download mnist` or $CLENV_DATA_DIR)"""
    data_dir: str | None = None
    """MNIST root with --data mnist (default: $CLENV_DATA_DIR, else ~/.cache/clenv)"""


def main(argv: list[str] | None = None) -> dict[int, dict[str, tuple[float, float]]]:
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    torch.set_num_threads(1)
    if load_kernel() is None:
        raise SystemExit("the native kernel did not build (no C++ compiler?)")
    draw = example_source(args.data, args.data_dir)
    results = {}
    for width in args.widths:
        # Rough per-runner speeds to size the blocks (ex/s on this machine).
        eager_speed = 2000 if width <= 100 else 200
        fast_speed = 30_000 if width <= 100 else 800
        block = lambda speed: max(args.chunk, int(speed * args.seconds))  # noqa: E731
        runners: dict[str, tuple[Callable, int]] = {
            "eager": (eager_runner(width), max(20, int(eager_speed * args.seconds)))
        }
        for reg in args.methods:
            runners[f"fast {reg}"] = (
                fast_runner(width, reg, args.chunk),
                block(fast_speed),
            )
        if args.compare_ascent and "l2er" in args.methods:
            runners["fast l2er (autograd ascent)"] = (
                fast_runner(width, "l2er", args.chunk, er__gradient="autograd"),
                block(fast_speed),
            )
        runners["fast bp (torch)"] = (
            fast_runner(width, "bp", args.chunk, backend="torch"),
            block(eager_speed * 2),
        )
        for spec in args.autograd:
            runners[f"autograd {spec}"] = (
                autograd_method_runner(width, spec),
                max(20, int(eager_speed * args.seconds / 2)),
            )
        if args.autograd_l2er:
            runners["autograd l2er"] = (
                autograd_method_runner(width, "l2er"),
                max(20, int(eager_speed * args.seconds / 2)),
            )
        rates = measure(runners, args.rounds, draw=draw)
        results[width] = rates
        sc_bp, sc_l2er = SC_JAX.get(width, (None, None))
        print(f"\nwidth {width} (784-{width}-{width}-{width}-10), batch 1, 1 thread, "
              f"{args.rounds} interleaved blocks, chunk {args.chunk}, {args.data} "
              "inputs")  # fmt: skip
        print(
            f"{'runner':<30}{'ex/CPU-s':>10}{'x eager':>9}{'ex/wall-s':>11}{'x eager':>9}"
        )
        eager_cpu, eager_wall = rates["eager"]
        for name, (cpu, wall) in rates.items():
            print(f"{name:<30}{cpu:>10,.0f}{cpu / eager_cpu:>9.2f}"
                  f"{wall:>11,.0f}{wall / eager_wall:>9.2f}")  # fmt: skip
        if sc_bp:
            print(f"(SC's JAX code on the project's machine: bp {sc_bp:,}, "
                  f"l2er {sc_l2er:,} ex/s)")  # fmt: skip
        for spec in args.autograd:
            fast, slow = rates.get(f"fast {spec}"), rates[f"autograd {spec}"]
            if fast is not None:
                print(f"{spec}: fast path / autograd {fast[0] / slow[0]:.1f}x per "
                      f"CPU-second ({fast[1] / slow[1]:.1f}x per wall-second)")  # fmt: skip
        closed, autograd = (
            rates.get("fast l2er"),
            rates.get("fast l2er (autograd ascent)"),
        )
        if closed is not None and autograd is not None:
            print(f"fast l2er, closed-form / autograd ascent: {closed[0] / autograd[0]:.2f}x "
                  f"per CPU-second ({closed[1] / autograd[1]:.2f}x per wall-second)")  # fmt: skip
        fast_bp = rates.get("fast bp")
        if fast_bp is not None and width == 1000:
            verdict = "PASS" if fast_bp[0] >= 850 else "MISS"
            print(f"target width 1000: fast bp >= 850 ex/s: {fast_bp[0]:,.0f} per "
                  f"CPU-second {verdict} ({fast_bp[1]:,.0f} per wall-second)")  # fmt: skip
        if fast_bp is not None and width == 100:
            ratio = fast_bp[0] / eager_cpu
            verdict = "PASS" if ratio >= 5 else "MISS"
            print(f"target width 100: fast bp >= 5x eager: {ratio:.1f}x {verdict}")
    return results


if __name__ == "__main__":
    main()
