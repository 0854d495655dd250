"""A scaled-down Permuted MNIST study: does BP lose plasticity, does L2-ER keep it?

Runs ``agents/supervised_l2er.py`` for every (method, seed) as a trial of
:mod:`clenv.sweep` (``run_trial``: one subprocess with one torch thread, its log and
state under ``<runs-dir>/<reg>_seed<k>/sweeps/``; an interrupted run continues with the
agent's ``--resume``), several at a time, then draws one figure from the runs
(:func:`clenv.plotting.load_run`): online accuracy per task, dead units, effective rank
and ε-rank at task start (mean over seeds, with the min-max band), and writes a
Markdown summary next to it. The ε-rank is the share of the logged spectral density's
mass with |λ| > ε (:func:`clenv.plotting.stats.epsilon_rank_from_density`), ε chosen as
SC do by the largest R² against the task's online accuracy
(:func:`clenv.plotting.stats.best_epsilon`) unless ``--epsilon`` is given. Runs that
already finished are not rerun, so an interrupted study continues, and ``--plot-only``
redraws the figure from existing runs.

    clenv download mnist   # once: into $CLENV_DATA_DIR, else ~/.cache/clenv
    python agents/pmnist_study.py

docs/results/README.md holds the exact command behind the committed figure.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from clenv.plotting import Run, load_run
from clenv.plotting.figure import EPSILON_CANDIDATES
from clenv.plotting.stats import best_epsilon, epsilon_rank_from_density, linear_fit
from clenv.sweep import SweepSpec, Trial, read_trial_state, run_trial

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


ACCURACY = "cl/online_accuracy_per_task"
DENSITY = "curvature/task_start/spectral_density"


def agent_args(args: Args) -> list[str]:
    """The agent's arguments shared by every run (the sweep adds seed, reg, names)."""
    command = [
        "--width", str(args.width), "--num-tasks", str(args.num_tasks),
        "--examples-per-task", str(args.examples_per_task),
        "--learning-rate", str(args.learning_rate),
        "--curvature-every-tasks", str(args.curvature_every_tasks),
        "--plasticity-every-tasks", str(args.plasticity_every_tasks),
        "--metric-samples", str(args.metric_samples), "--no-progress", *args.extra,
    ]  # fmt: skip
    if args.data_dir is not None:
        command += ["--data-dir", args.data_dir]
    return command


def trial_of(args: Args, reg: str, seed: int) -> tuple[Trial, SweepSpec, Path]:
    """The sweep trial of (reg, seed): runs in ``<runs-dir>/<reg>_seed<seed>/``."""
    spec = SweepSpec(
        name="pmnist_study", agent=str(AGENT), seeds=[seed], regs=[reg], grid={},
        agent_args=agent_args(args),
        runs_dir=str(Path(args.runs_dir) / f"{reg}_seed{seed}"), workdir=str(Path.cwd()),
    )  # fmt: skip
    sweep_dir = Path(spec.workdir, spec.runs_dir, "sweeps", spec.name)
    return spec.trials()[0], spec, sweep_dir


def tasks_done(run_dir: Path) -> tuple[int, int]:
    """``(tasks with an accuracy logged, tasks the run was started for)``."""
    run = load_run(run_dir)
    accuracy = run.find([ACCURACY])
    done = 0 if accuracy is None else int(accuracy.task_id.max()) + 1
    return done, int(json.loads(run.attrs["args_json"])["num_tasks"])


def study_run(args: Args, reg: str, seed: int) -> Path | None:
    """The run of (reg, seed) to report: the finished one, or with --partial the one
    with the most tasks."""
    directory = Path(args.runs_dir) / f"{reg}_seed{seed}"
    runs = sorted(p.parent for p in directory.glob("*/metrics.h5"))
    progress = {run_dir: tasks_done(run_dir) for run_dir in runs}
    for run_dir, (done, total) in progress.items():
        if done >= total:
            return run_dir
    if args.partial and progress:
        best = max(progress, key=lambda run_dir: progress[run_dir][0])
        return best if progress[best][0] else None
    return None


def launch(args: Args, reg: str, seed: int) -> tuple[str, int, float, int]:
    """Run the trial of (reg, seed) unless it finished: ``(reg, seed, s, exit code)``."""
    if study_run(dataclasses.replace(args, partial=False), reg, seed) is not None:
        return reg, seed, 0.0, 0
    trial, spec, sweep_dir = trial_of(args, reg, seed)
    for sub in ("trials", "logs"):
        (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
    try:
        state = run_trial(trial, spec, sweep_dir, threads=1)
    except RuntimeError:
        state = read_trial_state(sweep_dir, trial.trial_id)
    return reg, seed, state.seconds or 0.0, state.returncode


def log_of(args: Args, reg: str, seed: int) -> str:
    trial, _, sweep_dir = trial_of(args, reg, seed)
    return read_trial_state(sweep_dir, trial.trial_id).log or str(sweep_dir / "logs")


def per_method(args: Args, values_of) -> dict:
    """``{reg: (task_ids, values[seed, task])}`` over the seeds whose run gives values,
    cut to the tasks every seed reached; ``values_of(run)`` returns a run's
    ``(task_ids, values)`` or None."""
    table = {}
    for reg in args.regs:
        rows, tasks = [], None
        for seed in args.seeds:
            run_dir = study_run(args, reg, seed)
            found = None if run_dir is None else values_of(load_run(run_dir))
            if found is None or not len(found[0]):
                continue
            if tasks is None or len(found[0]) < len(tasks):
                tasks = found[0]
            rows.append(found[1])
        if rows:
            n = len(tasks)
            table[reg] = (tasks, np.stack([r[:n] for r in rows]))
    return table


def per_task(tag: str):
    """``values_of`` for :func:`per_method`: the per-task mean of one series."""

    def values_of(run: Run):
        series = run.find([tag])
        return None if series is None else series.per_task_mean()

    return values_of


def over_layers(metric: str, reduce):
    """``values_of``: a per-layer metric of the 3 hidden layers, reduced over them."""
    tags = [f"plasticity/layer{i}/{metric}" for i in range(3)]

    def values_of(run: Run):
        if not all(run.find([tag]) for tag in tags):
            return None
        means = [run.series[tag].per_task_mean() for tag in tags]
        return means[0][0], reduce(np.stack([values for _, values in means]))

    return values_of


def task_start_densities(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(task_ids, grid, densities)``: the first spectral density of every task."""
    density = run.find([DENSITY])
    if density is None:
        return None
    tasks, first = np.unique(density.task_id, return_index=True)
    grid = np.asarray(density.attrs["grid"], dtype=np.float64)
    return tasks, grid, density.value[first]


def epsilon_rank_at_task_start(eps: float):
    """``values_of``: the ε-rank (share of mass with |λ| > ε) at every task's start."""

    def values_of(run: Run):
        found = task_start_densities(run)
        if found is None:
            return None
        tasks, grid, densities = found
        return tasks, epsilon_rank_from_density(grid, densities, eps)

    return values_of


def epsilon_points(args: Args) -> tuple[list, np.ndarray]:
    """Densities at task start paired with that task's online accuracy, pooled over
    runs: ``([(grid, densities) per run], accuracies)``, as :func:`best_epsilon` takes."""
    spectra, accuracy = [], []
    for reg in args.regs:
        for seed in args.seeds:
            run_dir = study_run(args, reg, seed)
            run = None if run_dir is None else load_run(run_dir)
            found = None if run is None else task_start_densities(run)
            online = None if run is None else run.find([ACCURACY])
            if found is None or online is None:
                continue
            tasks, grid, densities = found
            acc_tasks, acc_values = online.per_task_mean()
            shared = np.isin(tasks, acc_tasks)
            if shared.any():
                spectra.append((grid, densities[shared]))
                accuracy.append(acc_values[np.searchsorted(acc_tasks, tasks[shared])])
    return spectra, np.concatenate(accuracy) if accuracy else np.zeros(0)


def epsilon_fits(args: Args) -> dict[float, tuple[float, int]]:
    """R² of a task's online accuracy against the ε-rank at its start, for each of
    :data:`~clenv.plotting.figure.EPSILON_CANDIDATES` (SC's test, Sec. 4, pooling every
    (run, task) with a spectrum): ``{ε: (R², points)}``."""
    spectra, accuracy = epsilon_points(args)
    if not spectra:
        return {}
    fits = {}
    for eps in EPSILON_CANDIDATES:
        ranks = np.concatenate(
            [epsilon_rank_from_density(g, d, eps) for g, d in spectra]
        )
        fits[eps] = (linear_fit(ranks, accuracy)[2], len(accuracy))
    return fits


def plot(args: Args) -> dict:
    from matplotlib.figure import Figure

    accuracy = per_method(args, per_task(ACCURACY))
    if not accuracy:
        hint = "" if args.partial else " (--partial plots unfinished runs)"
        raise SystemExit(
            f"error: no finished run of {list(args.regs)} in {args.runs_dir}{hint}; "
            "the logs under <runs-dir>/<reg>_seed<k>/sweeps/ say why a run stopped"
        )
    spectra, performance = epsilon_points(args)
    chosen, r2 = (
        best_epsilon(spectra, performance, EPSILON_CANDIDATES)
        if len(performance) >= 3
        else (float("nan"), float("nan"))
    )
    if args.epsilon is None:
        args.epsilon = chosen if np.isfinite(chosen) else 0.01
    elif len(performance) >= 3:
        ranks = [epsilon_rank_from_density(g, d, args.epsilon) for g, d in spectra]
        r2 = linear_fit(np.concatenate(ranks), performance)[2]
    panels = [
        ("Online accuracy per task", accuracy, "online accuracy"),
        (f"Dead units (all 3 layers, {args.metric_samples} samples)",
         per_method(args, over_layers("dead_units", lambda a: a.sum(0))),
         "dead units"),
        ("Effective rank (mean over layers)",
         per_method(args, over_layers("effective_rank", lambda a: a.mean(0))),
         "effective rank"),
        (f"Hessian ε-rank at task start (ε = {args.epsilon:g}, R² = {r2:.2f})",
         per_method(args, epsilon_rank_at_task_start(args.epsilon)),
         "ε-rank: share of density mass with |λ| > ε"),
    ]  # fmt: skip
    fig = Figure(figsize=(12, 8), constrained_layout=True)
    axes = fig.subplots(2, 2)
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
    fits = epsilon_fits(args)
    if fits:
        lines += ["", "R² of online accuracy on task k against the ε-rank (share of the "
                  "density's mass with |λ| > ε) at the start of task k, pooled over "
                  "methods, seeds and tasks with a spectrum (SC, PMNIST: ε = 0.01, "
                  "R² = 0.77):", "",
                  "| ε | R² | points |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {eps:.3g} | {r2:.2f} | {n} |" for eps, (r2, n) in fits.items()]
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
                status = (
                    "ok"
                    if code == 0
                    else f"FAILED (exit {code}, see {log_of(args, reg, seed)})"
                )
                print(f"{reg} seed {seed}: {status} in {seconds:.0f} s "
                      f"[{time.time() - start:.0f} s]", flush=True)  # fmt: skip
                timings.append((reg, seed, seconds, code))
    summary = plot(args)
    write_summary(args, summary, command, [t for t in timings if t[2] > 0])
    print(json.dumps(summary, indent=2))
    print(f"figure: {Path(args.out) / (args.name + '.png')}")


if __name__ == "__main__":
    main()
