"""A scaled-down Permuted MNIST study: does BP lose plasticity, does L2-ER keep it?

Runs ``agents/supervised_l2er.py`` for every (method, seed) in parallel worker
processes (one torch thread each), then draws one figure from the runs' ``metrics.h5``
files: online accuracy per task, dead units, effective rank and ε-rank at task start
(mean over seeds, with the min-max band), and writes a Markdown summary next to it.
Runs that already finished are not rerun, so an interrupted study continues, and
``--plot-only`` redraws the figure from existing runs.

    python agents/pmnist_study.py --data-dir ../shared/data

docs/results/README.md holds the exact command behind the committed figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import tyro

from clenv.logger import complete_rows
from clenv.plotting.stats import linear_fit

AGENT = Path(__file__).with_name("supervised_l2er.py")
COLORS = {"bp": "tab:red", "l2": "tab:blue", "l2er": "tab:green", "cbp": "tab:purple"}


@dataclass
class Args:
    regs: tuple[str, ...] = ("bp", "l2", "l2er", "cbp")
    """methods to compare (--reg of the agent)"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds per method (each also draws its own task sequence)"""
    width: int = 100
    """hidden units per layer of the 3-layer MLP"""
    num_tasks: int = 150
    """tasks per run"""
    examples_per_task: int = 5000
    """examples per task (one pass, batch 1)"""
    learning_rate: float = 0.01
    """SGD step size (SC's figures: 0.01)"""
    curvature_every_tasks: int = 30
    """spectral density at the start and end of every k-th task"""
    metric_samples: int = 1000
    """samples of the task for the curvature and plasticity metrics (SC: 2000; fewer
    halve the cost of a spectrum)"""
    plasticity_every_tasks: int = 5
    """dead units and effective rank at the end of every k-th task"""
    epsilon: float | None = None
    """ε of the ε-rank panel; default: the logged ε whose ε-rank at task start best
    predicts the task's online accuracy (largest R²), SC's own procedure (SC chose 0.01
    for width 1000)"""
    data_dir: str | None = None
    """data root holding mnist/ (else $CLENV_DATA_DIR)"""
    runs_dir: str = "runs/pmnist_study"
    """where the runs go"""
    out: str = "docs/results"
    """where the figure and the summary go"""
    name: str = "pmnist_width100"
    """file name stem of the figure and summary"""
    workers: int = 2
    """runs at a time (one core each)"""
    plot_only: bool = False
    """only redraw the figure from the runs in --runs-dir"""
    partial: bool = False
    """also plot runs that have not finished (up to the tasks every seed reached)"""
    extra: list[str] = field(default_factory=list)
    """more arguments for every run of the agent"""


def run_command(args: Args, reg: str, seed: int) -> list[str]:
    command = [
        sys.executable, str(AGENT), "--reg", reg, "--seed", str(seed),
        "--width", str(args.width), "--num-tasks", str(args.num_tasks),
        "--examples-per-task", str(args.examples_per_task),
        "--learning-rate", str(args.learning_rate),
        "--curvature-every-tasks", str(args.curvature_every_tasks),
        "--plasticity-every-tasks", str(args.plasticity_every_tasks),
        "--metric-samples", str(args.metric_samples),
        "--runs-dir", str(Path(args.runs_dir) / f"{reg}_seed{seed}"),
        "--exp-name", "pmnist_study", "--no-progress", *args.extra,
    ]  # fmt: skip
    if args.data_dir is not None:
        command += ["--data-dir", args.data_dir]
    return command


def finished_run(directory: Path) -> Path | None:
    """The run in ``directory`` whose last checkpoint marks it finished, if any."""
    for run_dir in sorted(directory.glob("*/")):
        if not (run_dir / "metrics.h5").exists():
            continue
        with h5py.File(run_dir / "metrics.h5", "r", locking=False) as f:
            tag = "cl/online_accuracy_per_task/task_id"
            if tag in f and len(f[tag]) and f[tag][-1] + 1 >= _args_of(f)["num_tasks"]:
                return run_dir
    return None


def latest_run(directory: Path) -> Path | None:
    """The run in ``directory`` with the most finished tasks (finished or not)."""
    best, best_tasks = None, 0
    for run_dir in sorted(directory.glob("*/")):
        if not (run_dir / "metrics.h5").exists():
            continue
        with h5py.File(run_dir / "metrics.h5", "r", locking=False) as f:
            tag = "cl/online_accuracy_per_task/task_id"
            tasks = len(f[tag]) if tag in f else 0
        if tasks > best_tasks:
            best, best_tasks = run_dir, tasks
    return best


def study_run(args: Args, reg: str, seed: int) -> Path | None:
    """The run of (reg, seed) to report: the finished one, or with --partial the latest."""
    directory = Path(args.runs_dir) / f"{reg}_seed{seed}"
    if not directory.exists():
        return None
    run_dir = finished_run(directory)
    if run_dir is None and args.partial:
        run_dir = latest_run(directory)
    return run_dir


def _args_of(f: h5py.File) -> dict:
    return json.loads(f.attrs["args_json"])


def launch(args: Args, reg: str, seed: int) -> tuple[str, int, float, int]:
    directory = Path(args.runs_dir) / f"{reg}_seed{seed}"
    command = run_command(args, reg, seed)
    if directory.exists():
        if finished_run(directory) is not None:
            return reg, seed, 0.0, 0
        interrupted = sorted(directory.glob("*/checkpoints/*.pt"))
        if interrupted:  # continue a killed run where it stopped
            command = [sys.executable, str(AGENT), "--resume",
                       str(interrupted[-1].parents[1]), "--no-progress"]  # fmt: skip
    start = time.time()
    log = Path(args.runs_dir) / f"{reg}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:
        code = subprocess.call(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env
        )
    return reg, seed, time.time() - start, code


def load(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(run_dir / "metrics.h5", "r", locking=False) as f:
        if tag not in f:
            return np.zeros(0, int), np.zeros(0)
        rows = complete_rows(f[tag])  # a run killed mid-row
        return f[tag]["task_id"][:rows], f[tag]["value"][:rows]


def per_method(args: Args, tag: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{reg: (task_ids, values[seed, task])}`` over the seeds that have the series."""
    table = {}
    for reg in args.regs:
        rows, tasks = [], None
        for seed in args.seeds:
            run_dir = study_run(args, reg, seed)
            if run_dir is None:
                continue
            task_ids, values = load(run_dir, tag)
            if not len(task_ids):
                continue
            if tasks is None or len(task_ids) < len(tasks):
                tasks = task_ids
            rows.append(values)
        if rows:
            n = len(tasks)
            table[reg] = (tasks, np.stack([r[:n] for r in rows]))
    return table


def total_over_layers(args: Args, metric: str, reduce) -> dict:
    layers = [f"plasticity/layer{i}/{metric}" for i in range(3)]
    parts = [per_method(args, tag) for tag in layers]
    return {
        reg: (parts[0][reg][0], reduce(np.stack([p[reg][1] for p in parts])))
        for reg in parts[0]
    }


def plot(args: Args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not per_method(args, "cl/online_accuracy_per_task"):
        hint = "" if args.partial else " (--partial plots unfinished runs)"
        raise SystemExit(
            f"error: no finished run of {list(args.regs)} in {args.runs_dir}{hint}; "
            "the <reg>_seed<k>.log files there say why a run stopped"
        )
    fits = epsilon_rank_r_squared(args)
    if args.epsilon is None:
        finite = {e: v for e, v in fits.items() if np.isfinite(v[0])}
        args.epsilon = (
            float(max(finite, key=lambda e: finite[e][0])) if finite else 0.01
        )
    r2 = fits.get(f"{args.epsilon:g}", (float("nan"), 0))[0]
    eps_tag = f"curvature/task_start/epsilon_rank/{args.epsilon:g}"
    panels = [
        ("Online accuracy per task", per_method(args, "cl/online_accuracy_per_task"),
         "online accuracy"),
        (f"Dead units (all 3 layers, {args.metric_samples} samples)",
         total_over_layers(args, "dead_units", lambda a: a.sum(0)), "dead units"),
        ("Effective rank (mean over layers)",
         total_over_layers(args, "effective_rank", lambda a: a.mean(0)),
         "effective rank"),
        (f"Hessian ε-rank at task start (ε = {args.epsilon:g}, R² = {r2:.2f})",
         per_method(args, eps_tag), "ε-rank (share of |λ| > ε)"),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    summary: dict[str, dict[str, float]] = {}
    for ax, (title, table, ylabel) in zip(axes.flat, panels, strict=True):
        for reg, (tasks, values) in table.items():
            mean = values.mean(0)
            color = COLORS.get(reg)
            label = f"{reg} ({values.shape[0]} seeds)"
            marker = "o" if len(tasks) < 12 else None
            ax.plot(tasks, mean, color=color, label=label, marker=marker, lw=1.2)
            ax.fill_between(tasks, values.min(0), values.max(0), color=color,
                            alpha=0.2, lw=0)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("task")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Permuted MNIST, MLP 784-{args.width}x3-10, SGD lr {args.learning_rate}, batch 1, "
        f"{args.examples_per_task} examples/task; mean over seeds, band = min-max"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{args.name}.png", dpi=110)
    accuracy = panels[0][1]
    for reg, (_, values) in accuracy.items():
        mean = values.mean(0)
        k = min(10, len(mean))
        entry = {
            "seeds": int(values.shape[0]),
            "tasks": int(len(mean)),
            "accuracy_first_10": float(mean[:k].mean()),
            "accuracy_last_10": float(mean[-k:].mean()),
            "accuracy_best_task": float(mean.max()),
        }
        for key, index in (
            ("dead_units", 1),
            ("effective_rank", 2),
            ("epsilon_rank", 3),
        ):
            if reg in panels[index][1]:
                series = panels[index][1][reg][1].mean(0)
                entry[f"{key}_first"] = float(series[0])
                entry[f"{key}_last"] = float(series[-1])
        summary[reg] = entry
    return summary


def epsilon_rank_r_squared(args: Args) -> dict[str, tuple[float, int]]:
    """R² of a task's online accuracy against the ε-rank at its start, per logged ε.

    SC's test (Sec. 4): pools every (run, task) with a spectrum; SC picks the ε that
    maximises R² after the fact (PMNIST: ε = 0.01, R² = 0.77). Returns
    ``{ε: (R², points)}``.
    """
    pairs: dict[str, list[tuple[float, float]]] = {}
    for reg in args.regs:
        for seed in args.seeds:
            run_dir = study_run(args, reg, seed)
            if run_dir is None:
                continue
            acc_tasks, accuracy = load(run_dir, "cl/online_accuracy_per_task")
            with h5py.File(run_dir / "metrics.h5", "r", locking=False) as f:
                group = f.get("curvature/task_start/epsilon_rank")
                names = list(group) if group is not None else []
            for eps in names:
                tasks, ranks = load(run_dir, f"curvature/task_start/epsilon_rank/{eps}")
                for task, rank in zip(tasks, ranks, strict=True):
                    hit = np.flatnonzero(acc_tasks == task)
                    if hit.size:
                        pairs.setdefault(eps, []).append((rank, accuracy[hit[0]]))
    result = {}
    for eps, points in sorted(pairs.items(), key=lambda kv: float(kv[0])):
        x, y = np.array(points).T
        result[eps] = (linear_fit(x, y)[2], len(x))
    return result


def _first_last(entry: dict, key: str, fmt: str) -> str:
    if f"{key}_first" not in entry:
        return "-"
    return f"{fmt.format(entry[key + '_first'])} -> {fmt.format(entry[key + '_last'])}"


def write_summary(args: Args, summary: dict, command: str, timings: list) -> None:
    lines = [
        f"# Permuted MNIST study ({args.name})", "",
        f"Command: `{command}`", "",
        f"MLP 784-{args.width}x3-10, SGD lr {args.learning_rate}, batch 1, "
        f"{args.num_tasks} tasks x {args.examples_per_task} examples; seeds "
        f"{list(args.seeds)}. ε-rank with ε = {args.epsilon:g}.", "",
        "| method | seeds | acc. first 10 tasks | acc. last 10 tasks | dead units "
        "first -> last | eff. rank first -> last | ε-rank first -> last |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for reg, e in summary.items():
        lines.append(
            f"| {reg} | {e['seeds']} | {e['accuracy_first_10']:.3f} | "
            f"{e['accuracy_last_10']:.3f} | {_first_last(e, 'dead_units', '{:.0f}')} | "
            f"{_first_last(e, 'effective_rank', '{:.1f}')} | "
            f"{_first_last(e, 'epsilon_rank', '{:.3f}')} |"
        )
    fits = epsilon_rank_r_squared(args)
    if fits:
        lines += ["", "R² of online accuracy on task k against the ε-rank at the start "
                  "of task k, pooled over methods, seeds and tasks with a spectrum "
                  "(SC, PMNIST: ε = 0.01, R² = 0.77):", "",
                  "| ε | R² | points |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {eps} | {r2:.2f} | {n} |" for eps, (r2, n) in fits.items()]
    if timings:
        lines += ["", "Wall time per run (s): " + ", ".join(
            f"{reg}/{seed}: {seconds:.0f}" for reg, seed, seconds, _ in timings)]  # fmt: skip
    out = Path(args.out)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    args = tyro.cli(Args)
    command = "python agents/pmnist_study.py " + " ".join(sys.argv[1:])
    timings = []
    if not args.plot_only:
        # Seed by seed (an interrupted study has whole seeds), slowest method first
        # (L2-ER's ascent) so the workers finish together.
        speed = {"l2er": 0, "er": 0, "cbp": 1, "l2": 2}
        order = sorted(
            ((reg, seed) for reg in args.regs for seed in args.seeds),
            key=lambda rs: (args.seeds.index(rs[1]), speed.get(rs[0], 3)),
        )
        start = time.time()
        with ThreadPoolExecutor(args.workers) as pool:
            for reg, seed, seconds, code in pool.map(
                lambda rs: launch(args, *rs), order
            ):
                log = Path(args.runs_dir) / f"{reg}_seed{seed}.log"
                status = "ok" if code == 0 else f"FAILED (exit {code}, see {log})"
                print(f"{reg} seed {seed}: {status} in {seconds:.0f} s "
                      f"[{time.time() - start:.0f} s]", flush=True)  # fmt: skip
                timings.append((reg, seed, seconds, code))
    summary = plot(args)
    write_summary(args, summary, command, [t for t in timings if t[2] > 0])
    print(json.dumps(summary, indent=2))
    print(f"figure: {Path(args.out) / (args.name + '.png')}")


if __name__ == "__main__":
    main()
