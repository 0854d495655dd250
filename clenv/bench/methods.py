"""Cost of each plasticity method per training step, relative to plain backprop.

Run ``python -m clenv.bench.methods`` (``--help`` for options). The network is SC's
Permuted-MNIST MLP (784-1000-1000-1000-10, ReLU, Kaiming-uniform, zero bias:
:class:`clenv.models.PermutedMNISTMLP`) trained with SGD (lr 0.01; ``fused=True``, so
that L2 rides in the update, see :class:`clenv.methods.L2`; ``--optimizer foreach``
for torch's default) and cross-entropy on random inputs in [0, 1], at batch 1 (the
papers' online setting) and batch 100. A ``:variant`` after a method name changes one
thing for that method: where L2 adds its term (``l2:after_backward``), the network
(``bp:layernorm``, ``bp:crelu``, ``bp:fourier``: the agents' ``--norm layer`` and
``--activation``), the optimizer (``bp:muon``, ``bp:trac``: ``--optimizer``) or the
loss (``bp:mse``: ``--loss mse``). Every method gets its own copy of the network
and optimizer; one *round* times a block of ``--block-steps`` steps of every method,
in a rotating order, in one process, so machine load hits all of them alike. A
method's ratio is its block time over BP's block time in the same round; the table
reports the median over rounds. A block is a multiple of ER's interval U, so ER's
ascent (every U steps, on the last U minibatches) is counted at its real rate
(U = 100 by default, SC's PMNIST setting; ``--intervals 100,12`` gives batch 100 SC's
ImageNet U).
Times are the process's CPU time (``time.process_time``), not wall time: on a shared,
oversubscribed machine the wall clock mostly measures waiting for a core.

A step is: forward, loss, ``zero_grad``, backward, ``method.after_backward()``,
``optimizer.step()``, ``method.after_step(x)``. Batch 1 runs with one torch thread
(two were ~3x slower on this machine). Target: L2-ER <= 1.25x BP at U = 100 and
batch 1 (SC's PMNIST setting, where the paper reports about +20%). At batch b the
ascent's forward and backward cover the U*b buffered samples, as many as the U steps
before it, so no batch-100 figure can come near it.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from clenv.losses import make_loss
from clenv.methods import make_method, split_name
from clenv.models import PermutedMNISTMLP
from clenv.optim import make_optimizer

TARGET = ("l2er", 1.25)
# Where L2 adds its term (clenv.methods.L2); the default fuses it into the update.
L2_VARIANTS = {
    "after_backward": {"l2__fuse": False},
    "in_backward": {"l2__in_backward": True},
}
# Variants of the network (PermutedMNISTMLP's arguments): "layernorm" puts a LayerNorm
# before each hidden activation (what NaP needs; compare "nap:layernorm" with
# "bp:layernorm"); "crelu" and "fourier" are the agents' --activation.
MODEL_VARIANTS = {
    "layernorm": {"norm": "layer"},
    "crelu": {"activation": "crelu"},
    "fourier": {"activation": "fourier"},
}
# The agents' --optimizer (clenv.optim.make_optimizer) and --loss (clenv.losses).
OPTIMIZER_VARIANTS = ("muon", "trac")
LOSS_VARIANTS = ("mse",)
VARIANTS = (*L2_VARIANTS, *MODEL_VARIANTS, *OPTIMIZER_VARIANTS, *LOSS_VARIANTS)
DEFAULT_METHODS = (
    "bp",
    "l2",
    "l2:after_backward",
    "er",
    "l2er",
    "l2er:after_backward",
    "cbp",
    "cbp+l2",
    "snp",
    "redo",
    "spectral",
    "spectral+l2",
    "parseval",
    "l2init",
    "upgd",
    "bp:layernorm",
    "nap:layernorm",
    "inject",
    "cchain",
    "l2:layernorm",  # SC's LayerNorm-L2
    "bp:crelu",
    "bp:fourier",
    # Not bp:muon: ~0.9 s a step at width 1000 on one CPU core (~80 GFLOP of
    # Newton-Schulz), a quarter of an hour of a default run; --methods bp,bp:muon.
    "bp:mse",
    # TRAC is an optional extra (pip install clenv[trac]).
    *(("bp:trac",) if importlib.util.find_spec("trac_optimizer") else ()),
)


def check_variant(name: str) -> None:
    """Raise a ValueError unless ``name``'s ``:variant`` (if any) is a known one."""
    variant = name.partition(":")[2]
    if variant and variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} in {name!r}; known: {list(VARIANTS)}"
        )


class Trainer:
    """One method with its own network and SGD optimizer.

    Args:
        name: a ``--reg`` name, optionally ``:after_backward`` (L2 in its own pass
            after ``backward()``) or ``:in_backward`` (inside ``backward()``); see
            :class:`clenv.methods.L2`; or one of :data:`MODEL_VARIANTS` (the network),
            :data:`OPTIMIZER_VARIANTS` (instead of SGD) or :data:`LOSS_VARIANTS`.
        width: hidden width.
        lr: SGD learning rate.
        interval: ER's U.
        fused: ``SGD(fused=True)``, whose update adds L2 at no cost (see
            :class:`clenv.methods.L2`); False: torch's default (foreach) SGD.
    """

    def __init__(
        self, name: str, width: int, lr: float, interval: int, fused: bool = True
    ):
        check_variant(name)
        self.name = name
        reg, _, variant = name.partition(":")
        torch.manual_seed(0)  # every method starts from the same weights
        self.model = PermutedMNISTMLP(width=width, **MODEL_VARIANTS.get(variant, {}))
        if variant in OPTIMIZER_VARIANTS:
            self.optimizer = make_optimizer(variant, self.model, lr)
        else:
            self.optimizer = torch.optim.SGD(
                self.model.parameters(), lr=lr, fused=fused
            )
        self.loss = make_loss(variant if variant in LOSS_VARIANTS else "cross_entropy")
        overrides = {"er__interval": interval} if "er" in split_name(reg) else {}
        overrides.update(L2_VARIANTS.get(variant, {}))
        self.method = make_method(
            reg, self.model, self.optimizer, preset="pmnist", **overrides
        )
        # One task switch before timing: the resets act there once, and inject's
        # timed steps run through the injected heads.
        self.method.on_task_switch(1)

    def run(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """CPU seconds for one step per minibatch in ``inputs`` (steps, batch, 784)."""
        model, optimizer, method, loss_of = (
            self.model, self.optimizer, self.method, self.loss
        )  # fmt: skip
        # The inputs as one epoch's data (cchain draws its reference batches there).
        method.before_epoch(inputs.flatten(0, 1))
        start = time.process_time()
        for x, y in zip(inputs, labels, strict=True):
            loss = loss_of(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            method.after_backward()
            optimizer.step()
            method.after_step(x)
        return time.process_time() - start


def time_methods(
    names: list[str],
    batch_size: int,
    block_steps: int,
    rounds: int,
    width: int,
    interval: int,
    lr: float = 0.01,
    fused: bool = True,
) -> dict[str, dict[str, float]]:
    """Median seconds per step and median ratio to BP of each method.

    Args:
        names: ``--reg`` names; ``"bp"`` is added when missing (the reference).
        batch_size: minibatch size.
        block_steps: steps per timed block (a multiple of ``interval``).
        rounds: timed rounds (one ratio each), after one warm-up round.
        width: hidden width.
        interval: ER's U.
        lr: SGD learning rate.
        fused: every method's SGD is ``fused=True`` (else torch's default).
    """
    names = ["bp"] + [n for n in names if n != "bp"]
    trainers = [Trainer(name, width, lr, interval, fused) for name in names]
    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(block_steps, batch_size, 784, generator=g)
    labels = torch.randint(10, (block_steps, batch_size), generator=g)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds + 1):
        shift = round_index % len(trainers)
        for trainer in trainers[shift:] + trainers[:shift]:
            elapsed = trainer.run(inputs, labels)
            if round_index:  # round 0 warms up
                seconds[trainer.name].append(elapsed)
    results = {}
    for name in names:
        ratios = [a / b for a, b in zip(seconds[name], seconds["bp"], strict=True)]
        results[name] = {
            "ms_per_step": 1e3 * statistics.median(seconds[name]) / block_steps,
            "ratio": statistics.median(ratios),
        }
    return results


def _positive_ints(flag: str, text: str) -> list[int]:
    """``"1,100"`` -> ``[1, 100]``; a ValueError naming ``flag`` for anything else."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(
            f"{flag} takes comma-separated positive integers such as 1,100, got {text!r}"
        )
    return values


def _per_batch_size(flag: str, text: str, count: int) -> list[int]:
    """One positive value per batch size from ``text`` (one value, or ``count``)."""
    values = _positive_ints(flag, text)
    values = values * count if len(values) == 1 else values
    if len(values) != count:
        raise ValueError(
            f"{flag} needs one positive value or one per batch size ({count}), "
            f"got {text!r}"
        )
    return values


@dataclass
class MethodsBenchArgs:
    """Arguments of ``python -m clenv.bench.methods``."""

    methods: str = ",".join(DEFAULT_METHODS)
    """comma-separated --reg names, each optionally with one :variant (l2:after_backward, bp:layernorm, bp:crelu, bp:fourier, bp:muon, bp:trac, bp:mse; see the module docstring)"""
    batch_sizes: str = "1,100"
    """comma-separated batch sizes"""
    intervals: str = "100"
    """ER's U per batch size (one value, or one per --batch-sizes entry); SC uses 100 on PMNIST (batch 1), 12 on ImageNet and 5 on CIFAR (batch 100)"""
    block_steps: int = 100
    """steps per timed block (rounded up to a multiple of U)"""
    rounds: str = "8,2"
    """timed rounds per batch size (one value, or one per --batch-sizes entry)"""
    width: int = 1000
    """hidden width"""
    optimizer: Literal["fused", "foreach"] = "fused"
    """every method's SGD: fused=True (L2 is added inside its update) or torch's default foreach implementation (L2 needs its own pass)"""
    threads: int = 1
    """torch threads for batch sizes > 1 (batch 1 always uses one)"""

    def __post_init__(self) -> None:
        # tyro reports a ValueError here as a usage error (no traceback).
        for name in self.method_names():
            try:
                split_name(name.partition(":")[0])
                check_variant(name)
            except ValueError as error:
                raise ValueError(f"--methods: {error}") from None
        self.rounds_per_batch_size()
        self.intervals_per_batch_size()
        if self.block_steps < 1:
            raise ValueError(f"--block-steps must be positive, got {self.block_steps}")

    def method_names(self) -> list[str]:
        """The ``--methods`` entries."""
        return [n.strip() for n in self.methods.split(",") if n.strip()]

    def batch_size_list(self) -> list[int]:
        """The ``--batch-sizes`` entries."""
        return _positive_ints("--batch-sizes", self.batch_sizes)

    def rounds_per_batch_size(self) -> list[int]:
        """Timed rounds for each batch size."""
        return _per_batch_size("--rounds", self.rounds, len(self.batch_size_list()))

    def intervals_per_batch_size(self) -> list[int]:
        """ER's U for each batch size."""
        return _per_batch_size(
            "--intervals", self.intervals, len(self.batch_size_list())
        )


def main(argv: list[str] | None = None) -> dict[int, dict[str, dict[str, float]]]:
    """Run the benchmark, print one table, and return the figures per batch size."""
    args = tyro.cli(
        MethodsBenchArgs,
        args=argv,
        prog="python -m clenv.bench.methods",
        description=__doc__.split("\n\n")[0],
    )
    names = args.method_names()
    batch_sizes = args.batch_size_list()
    rounds = args.rounds_per_batch_size()
    intervals = args.intervals_per_batch_size()

    figures = {}
    for batch_size, num_rounds, interval in zip(
        batch_sizes, rounds, intervals, strict=True
    ):
        threads = 1 if batch_size == 1 else args.threads
        torch.set_num_threads(threads)
        block_steps = -(-args.block_steps // interval) * interval
        print(
            f"batch {batch_size}: {num_rounds} rounds x {block_steps} steps per "
            f"method, U={interval}, {threads} thread(s), {args.optimizer} SGD ...",
            flush=True,
        )
        figures[batch_size] = time_methods(
            names,
            batch_size,
            block_steps,
            num_rounds,
            args.width,
            interval,
            fused=args.optimizer == "fused",
        )
    header = f"{'method':<18}" + "".join(
        f"{f'b{b} ms/step':>14}{f'b{b} x BP':>10}" for b in batch_sizes
    )
    print("\n" + header)
    for name in figures[batch_sizes[0]]:
        row = f"{name:<18}" + "".join(
            f"{figures[b][name]['ms_per_step']:>14.3f}{figures[b][name]['ratio']:>10.3f}"
            for b in batch_sizes
        )
        print(row)
    method, target = TARGET
    for variant in [method] + [f"{method}:{v}" for v in L2_VARIANTS]:
        if variant not in figures[batch_sizes[0]]:
            continue
        for b, interval in zip(batch_sizes, intervals, strict=True):
            ratio = figures[b][variant]["ratio"]
            if b == 1 and interval == 100:
                verdict = "meets" if ratio <= target else "MISSES"
                verdict = f"{verdict} <= {target}x, SC's PMNIST setting"
            elif b == 1:
                verdict = f"no target at U={interval}"
            else:
                # The ascent runs forward and backward over the U*b buffered samples,
                # as many as the U steps it follows trained on.
                verdict = "no target: the ascent alone handles as many samples"
            print(f"{variant} at batch {b}: {ratio:.3f}x BP ({verdict})")
    return figures


if __name__ == "__main__":
    main()
