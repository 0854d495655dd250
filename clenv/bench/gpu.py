"""Benchmark: many seeds per process and CUDA-graph chunks (``BatchedMLPTrainer``).

On CUDA (one script, under 10 minutes):

1. **checks**: N=3 seeds batched (CUDA graphs) equal 3 single-seed
   :class:`~clenv.fastpath.FastMLPTrainer` runs (float64 on the GPU, bp, l2, l2er,
   cbp), and graphs equal eager batched steps (float32, width 1000, N=5);
2. **throughput**: aggregate examples/s (all seeds together) of batch-1 training at
   width 100 and 1000 for N = 1, 5, 10 seeds, with and without CUDA graphs, per
   method (bp, l2er, cbp; PMNIST preset values);
3. **projection**: hours of training for the full 800-task width-1000 Permuted MNIST
   run (48M batch-1 steps per seed) for 5 seeds together, from the N=5 rates
   (training only: the task-boundary metrics are not included).

On CPU (CUDA absent, said so): the same checks (graphs replaced by the static
programs they would replay), then aggregate examples/s of N seeds in one
BatchedMLPTrainer (``batched``: batched torch steps; ``native/seed``: its CPU default,
the C++ kernel per seed and chunk on the shared tensors) against N separate
single-seed fast-path trainers (the native kernel) run one after another in this
process, and N separate single-seed processes in parallel; the ratios are batched
over those, measured in one run.

Inputs are synthetic MNIST-like rows (784 features, 80% zeros, labels 0-9); the
rates do not depend on the pixel values. Run::

    python -m clenv.bench gpu                    # or: python -m clenv.bench.gpu
    OMP_NUM_THREADS=1 python -m clenv.bench.gpu --seconds 2     # CPU
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import tyro

from clenv.fastpath import BatchedMLPTrainer, FastMLPTrainer
from clenv.methods import make_method
from clenv.models import PermutedMNISTMLP

FULL_RUN_STEPS = 48_000_000  # 800 tasks x 60,000 examples, batch 1


@dataclass
class Args:
    widths: tuple[int, ...] = (100, 1000)
    """hidden widths to measure"""
    seeds: tuple[int, ...] | None = None
    """seed counts N to measure (default: 1 5 10 on CUDA, 1 5 on CPU)"""
    regs: tuple[str, ...] | None = None
    """methods (--reg names, PMNIST preset; default: bp l2er cbp on CUDA, bp l2er on
    CPU)"""
    chunk: int = 100
    """examples per seed per train() call (the agent's --chunk)"""
    seconds: float | None = None
    """wall time per measurement (default: 3 on CUDA, 2 on CPU)"""
    budget: float = 540.0
    """stop measuring (and say so) once this many seconds have passed"""
    processes: bool = True
    """CPU: also measure N single-seed processes in parallel"""
    device: str | None = None
    """cuda or cpu (default: cuda when available)"""


def make_seeds(num_seeds, width, reg, device, dtype, input_dim=784, classes=10):
    """Models and methods of ``num_seeds`` seeds, each built as its own run would."""
    models, methods = [], []
    for seed in range(num_seeds):
        torch.manual_seed(seed)
        model = PermutedMNISTMLP(input_dim=input_dim, width=width, num_classes=classes)
        model = model.to(device=device, dtype=dtype)
        models.append(model)
        methods.append(make_method(reg, model, None, preset="pmnist", seed=seed))
    return models, methods


def synthetic_stream(num_seeds, count, device, dtype, input_dim=784, seed=0):
    """(N, count, 784) MNIST-like inputs (80% zeros) and (N, count) labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(num_seeds, count, input_dim, generator=generator, dtype=dtype)
    x[x < 0.8] = 0
    y = torch.randint(0, 10, (num_seeds, count), generator=generator)
    return x.to(device), y.to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- checks ------------------------------------------------------------------------


def check_batched_equals_single(device: torch.device) -> dict[str, float]:
    """Max relative weight difference, batched (graphs where CUDA) vs single seeds,
    float64, per method; raises if above 1e-9 or a prediction differs."""
    overrides = {
        "bp": {},
        "l2": {"weight_decay": 1e-2},
        "l2er": {"weight_decay": 1e-2, "er__interval": 7},
        "cbp": {"cbp__replacement_rate": 0.02, "cbp__maturity_threshold": 10},
    }
    figures = {}
    for reg, options in overrides.items():
        models, methods = [], []
        for seed in range(3):
            torch.manual_seed(seed)
            model = PermutedMNISTMLP(input_dim=30, width=24, num_classes=5)
            model = model.to(device=device, dtype=torch.float64)
            models.append(model)
            methods.append(make_method(reg, model, None, preset="pmnist", seed=seed,
                                       **options))  # fmt: skip
        singles = copy.deepcopy((models, methods))
        x, y = synthetic_stream(3, 150, device, torch.float64, input_dim=30)
        y = y % 5
        trainer = BatchedMLPTrainer(models, 0.05, methods, graphs="on",
                                    max_graph_steps=16, backend="batched")  # fmt: skip
        predictions = torch.cat(
            [trainer.train(x[:, s : s + 25], y[:, s : s + 25])[0]
             for s in range(0, 150, 25)], 1)  # fmt: skip
        worst = 0.0
        for seed in range(3):
            single = FastMLPTrainer(singles[0][seed], 0.05, singles[1][seed],
                                    backend="torch" if device.type == "cuda" else "auto")  # fmt: skip
            single_predictions = torch.cat(
                [single.train(x[seed, s : s + 25], y[seed, s : s + 25])[0]
                 for s in range(0, 150, 25)])  # fmt: skip
            if not torch.equal(single_predictions, predictions[seed]):
                raise AssertionError(f"{reg}: seed {seed}'s predictions differ")
            for a, b in zip(models[seed].parameters(), singles[0][seed].parameters(),
                            strict=True):  # fmt: skip
                a, b = a.detach(), b.detach()
                worst = max(worst, float((a - b).abs().max() / b.abs().max()))
        if worst > 1e-9:
            raise AssertionError(f"{reg}: batched vs single differ by {worst:.3g}")
        figures[reg] = worst
    return figures


def check_graphs_equal_eager(device: torch.device) -> float:
    """Max relative weight difference after 300 steps of 5 seeds, width 1000,
    float32, l2er: static programs (CUDA graphs) vs eager steps."""
    results = []
    for graphs in ("on", "off"):
        models, methods = make_seeds(5, 1000, "l2er", device, torch.float32)
        trainer = BatchedMLPTrainer(models, 0.01, methods, graphs=graphs,
                                    backend="batched")  # fmt: skip
        x, y = synthetic_stream(5, 300, device, torch.float32)
        for start in range(0, 300, 100):
            trainer.train(x[:, start : start + 100], y[:, start : start + 100])
        results.append([w.clone() for w in trainer.weights])
    worst = max(float((a - b).abs().max() / b.abs().max())
                for a, b in zip(*results, strict=True))  # fmt: skip
    if worst > 1e-5:
        raise AssertionError(f"graphs vs eager differ by {worst:.3g}")
    return worst


# -- throughput --------------------------------------------------------------------


def batched_rate(num_seeds, width, reg, graphs, args, device, backend="batched"):
    """Aggregate examples/s of ``num_seeds`` seeds in one BatchedMLPTrainer."""
    dtype = torch.float32
    models, methods = make_seeds(num_seeds, width, reg, device, dtype)
    trainer = BatchedMLPTrainer(models, 0.01, methods, graphs=graphs, backend=backend)
    chunks = 8
    x, y = synthetic_stream(num_seeds, chunks * args.chunk, device, dtype)
    pieces = [(x[:, k * args.chunk : (k + 1) * args.chunk],
               y[:, k * args.chunk : (k + 1) * args.chunk]) for k in range(chunks)]  # fmt: skip
    for piece in pieces[:2]:  # warm up (captures the graphs)
        trainer.train(*piece)
    _synchronize(device)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < args.seconds:
        trainer.train(*pieces[calls % chunks])
        calls += 1
        if calls % 4 == 0:
            _synchronize(device)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    return calls * args.chunk * num_seeds / elapsed


def sequential_rate(num_seeds, width, reg, args, device, seconds=None) -> float:
    """Aggregate examples/s of ``num_seeds`` single-seed FastMLPTrainers, one chunk
    of each in turn (one process)."""
    dtype = torch.float32
    models, methods = make_seeds(num_seeds, width, reg, device, dtype)
    trainers = [
        FastMLPTrainer(m, 0.01, method=me)
        for m, me in zip(models, methods, strict=True)
    ]
    x, y = synthetic_stream(num_seeds, 8 * args.chunk, device, dtype)
    for seed, trainer in enumerate(trainers):
        trainer.train(x[seed, : args.chunk], y[seed, : args.chunk])
    _synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < (seconds or args.seconds):
        offset = (calls % 8) * args.chunk
        for seed, trainer in enumerate(trainers):
            trainer.train(x[seed, offset : offset + args.chunk],
                          y[seed, offset : offset + args.chunk])  # fmt: skip
        calls += 1
    _synchronize(device)
    return calls * args.chunk * num_seeds / (time.perf_counter() - start)


def _single_process_worker(width, reg, chunk, seconds, seed, queue, go) -> None:
    torch.set_num_threads(1)
    args = Args(chunk=chunk, seconds=seconds)
    models, methods = make_seeds(1, width, reg, torch.device("cpu"), torch.float32)
    trainer = FastMLPTrainer(models[0], 0.01, method=methods[0])
    x, y = synthetic_stream(1, 8 * chunk, "cpu", torch.float32, seed=seed)
    trainer.train(x[0, :chunk], y[0, :chunk])
    queue.put("ready")
    go.wait()  # the parent starts everyone at once
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        offset = (calls % 8) * chunk
        trainer.train(x[0, offset : offset + chunk], y[0, offset : offset + chunk])
        calls += 1
    queue.put(("done", calls * chunk, time.perf_counter() - start))


def parallel_processes_rate(num_seeds, width, reg, args) -> float:
    """Aggregate examples/s of ``num_seeds`` single-seed processes run at once
    (each one thread), over the same wall time."""
    context = multiprocessing.get_context("spawn")
    queues = [context.Queue() for _ in range(num_seeds)]
    go = context.Event()
    workers = [
        context.Process(target=_single_process_worker,
                        args=(width, reg, args.chunk, args.seconds, seed, queue, go))
        for seed, queue in enumerate(queues)
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    for queue in queues:
        assert queue.get(timeout=120) == "ready"
    go.set()
    results = [queue.get(timeout=args.seconds + 120) for queue in queues]
    for worker in workers:
        worker.join()
    examples = sum(r[1] for r in results)
    return examples / max(r[2] for r in results)


# -- main --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the checks and benchmarks, print tables, return the figures."""
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    args.seeds = args.seeds or ((1, 5, 10) if cuda else (1, 5))
    args.regs = args.regs or (("bp", "l2er", "cbp") if cuda else ("bp", "l2er"))
    args.seconds = args.seconds or (3.0 if cuda else 2.0)
    began = time.perf_counter()
    figures: dict[str, object] = {}
    if cuda:
        name = torch.cuda.get_device_name(device)
        print(f"device: {name}; torch {torch.__version__}")
        figures["device"] = name
    else:
        print(
            "CUDA is absent: running the CPU version (checks with static programs in "
            "place of CUDA graphs; batched vs separate single-seed trainers). "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} cores"
        )
        figures["device"] = "cpu (CUDA absent)"
    # A failed check or measurement is printed and recorded, and the script goes on
    # (one GPU session should bring back every figure it can); it exits 1 at the end.
    failures: list[str] = []
    print("check: batched (N=3, float64) vs single-seed runs, max relative weight "
          "difference:")  # fmt: skip
    try:
        checks = check_batched_equals_single(device)
        for reg, value in checks.items():
            print(f"  {reg:>5}: {value:.2e}  ok")
        figures["check batched vs single (max rel diff)"] = checks
    except Exception as error:  # noqa: BLE001 - reported, the run goes on
        failures.append(f"check batched vs single: {error!r}")
        print(f"  FAILED: {error!r}")
    what = "CUDA graphs" if cuda else "static programs"
    try:
        worst = check_graphs_equal_eager(device)
        print(f"check: {what} vs eager (N=5, width 1000, l2er, float32): "
              f"{worst:.2e}  ok")  # fmt: skip
        figures[f"check {what} vs eager (max rel diff)"] = worst
    except Exception as error:  # noqa: BLE001
        failures.append(f"check {what} vs eager: {error!r}")
        print(f"check: {what} vs eager FAILED: {error!r}")

    rates: dict[str, float] = {}
    modes = ("on", "off") if cuda else ("off",)
    header = f"{'width':>6} {'reg':>5} {'N':>3} " + "".join(
        f"{'graphs ' + m if cuda else 'batched':>14}" for m in modes
    )
    if not cuda:
        header += f"{'native/seed':>14}{'N single':>14}{'b/s':>6}{'n/s':>6}"
        if args.processes:
            header += f"{'N processes':>14}{'b/p':>6}{'n/p':>6}"
    print("\naggregate examples/s (all seeds), float32, chunk", args.chunk)
    print(header)
    if not cuda:
        print("(b: batched torch, n: native per seed, s: N single trainers in turn, "
              "p: N processes at once; ratios of aggregate examples/s)")  # fmt: skip
    stopped = False
    for width in args.widths:
        for reg in args.regs:
            for num_seeds in args.seeds:
                if time.perf_counter() - began > args.budget:
                    stopped = True
                    break
                row = f"{width:>6} {reg:>5} {num_seeds:>3} "
                for mode in modes:
                    key = f"w{width} {reg} N={num_seeds} graphs {mode}"
                    try:
                        rate = batched_rate(num_seeds, width, reg, mode, args, device)
                    except Exception as error:  # noqa: BLE001
                        failures.append(f"{key}: {error!r}")
                        print(f"{key}: FAILED: {error!r}")
                        rate = float("nan")
                    rates[key] = rate
                    row += f"{rate:>14,.0f}"
                if not cuda:
                    batched = rates[f"w{width} {reg} N={num_seeds} graphs off"]
                    native = batched_rate(num_seeds, width, reg, "off", args, device,
                                          backend="native")  # fmt: skip
                    rates[f"w{width} {reg} N={num_seeds} native per seed"] = native
                    row += f"{native:>14,.0f}"
                    single = sequential_rate(num_seeds, width, reg, args, device)
                    rates[f"w{width} {reg} N={num_seeds} separate trainers"] = single
                    row += f"{single:>14,.0f}{batched / single:>6.2f}"
                    row += f"{native / single:>6.2f}"
                    if args.processes:
                        parallel = parallel_processes_rate(num_seeds, width, reg, args)
                        key = f"w{width} {reg} N={num_seeds} separate processes"
                        rates[key] = parallel
                        row += f"{parallel:>14,.0f}{batched / parallel:>6.2f}"
                        row += f"{native / parallel:>6.2f}"
                print(row, flush=True)
    if stopped:
        print(f"(stopped: the {args.budget:g} s budget is spent; rows left out)")
    figures["examples/s"] = rates
    projection = {}
    for reg in args.regs:
        # on CPU: the trainer's CPU default (the native kernel per seed)
        kinds = [f"graphs {mode}" for mode in modes] if cuda else ["native per seed"]
        for kind in kinds:
            rate = rates.get(f"w1000 {reg} N=5 {kind}")
            if rate:
                hours = FULL_RUN_STEPS * 5 / rate / 3600
                projection[f"{reg} {kind}"] = hours
    if projection:
        print("\nprojected time, 800-task width-1000 Permuted MNIST, 5 seeds together "
              "(48M steps each; training only, no metrics):")  # fmt: skip
        for key, hours in projection.items():
            print(f"  {key:>20}: {hours:8.1f} h" + ("" if cuda else "  (CPU)"))
        figures["projected hours, 5 seeds x 48M steps, width 1000"] = projection
    if not cuda:
        print("\nCUDA is absent: the GPU figures (graphs on/off) are not measured.")
    print(f"total {time.perf_counter() - began:.0f} s")
    if failures:
        figures["failures"] = failures
        print("FAILED:\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    return figures


if __name__ == "__main__":
    main()
