"""The ``clenv plot`` figure: one panel per question a plasticity study asks.

Panels (each drawn only when some run logged the series it needs; a panel or a run that
lacks them is left out with a note printed under the figure):

* **Performance per task**: the per-task summary (test accuracy, online accuracy or mean
  return per task), mean ± 95% CI across seeds.
* **Performance over steps**: the step-level series (episodic return, online accuracy),
  binned, mean ± 95% CI across seeds, task boundaries as vertical lines.
* **Dead units over tasks** (summed over layers) and **Effective rank over tasks**
  (mean over layers), per-task means, mean ± 95% CI across seeds.
* **Hessian spectral density** per run group: mass of the density in bins of
  log10 |λ| (y) against task (x); collapse shows as mass sinking to the bottom row.
* **ε-rank vs performance**: ε-rank at task start against that task's performance,
  with the least-squares line, its R² and the ε used (SC picks ε to maximise R²). The
  ε-rank shown is the share of the logged density's mass with |λ| > ε
  (:func:`~clenv.plotting.stats.epsilon_rank_from_density`, clenv's default
  definition), not SC's trapezoid percentage; the axis label says so.

Runs are grouped by (env_id, exp_name, reg); runs in a group differ by their seed.

No matplotlib backend is selected at import: :func:`plot_runs` draws on a
``matplotlib.figure.Figure`` that is not registered with pyplot (it saves through the
file format's own canvas), so a user's interactive backend stays as it was;
:func:`make_figure` returns a pyplot figure for interactive use (``pyplot=False``: a
detached one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from clenv.plotting.runs import Run, Series, group_labels, group_runs, load_runs
from clenv.plotting.stats import (
    align_by_key,
    best_epsilon,
    binned_mean,
    epsilon_rank_from_density,
    linear_fit,
    log_abs_mass,
    mean_confidence_interval,
)

# Series each panel reads, most specific first: the tags agents/ppo_l2er.py and
# agents/supervised_l2er.py write (docs/tooling.md).
PERFORMANCE_PER_TASK_TAGS = (
    "eval/test_accuracy_per_task",
    "cl/online_accuracy_per_task",
    "cl/mean_return_per_task",
)
PERFORMANCE_STEP_TAGS = (
    "charts/episodic_return",
    "cl/online_accuracy",
)
SPECTRAL_DENSITY_TAGS = (
    "curvature/task_start/spectral_density",
    "curvature/task_end/spectral_density",
)
# ε candidates when ε is chosen after the fact (SC reports 0.01 and 0.03..0.1).
EPSILON_CANDIDATES = tuple(float(x) for x in 10.0 ** np.arange(-4.0, 1.01, 0.25))

TITLE_PERFORMANCE = "Performance per task"
TITLE_PERFORMANCE_STEPS = "Performance over steps"
TITLE_DEAD_UNITS = "Dead units over tasks"
TITLE_EFFECTIVE_RANK = "Effective rank over tasks"
TITLE_SPECTRUM = "Hessian spectral density"
TITLE_EPSILON_RANK = "ε-rank vs performance"


@dataclass
class PlotResult:
    """What :func:`plot_runs` drew: the file, the panel titles and the notes."""

    path: Path
    panels: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Group:
    label: str
    color: str
    runs: list[Run]


@dataclass
class _Panel:
    title: str
    draw: Callable[[Axes], None]
    grid_lines: bool = True


def _first_tag(runs: Sequence[Run], tags: Sequence[str]) -> str | None:
    """The first of ``tags`` that at least one run logged."""
    for tag in tags:
        if any(tag in run.series and len(run.series[tag]) for run in runs):
            return tag
    return None


def _band(ax: Axes, x, table: np.ndarray, group: _Group, marker: str = "") -> None:
    """Mean line and shaded 95% CI of a (seeds × points) table."""
    mean, half, _ = mean_confidence_interval(table)
    ax.plot(x, mean, color=group.color, marker=marker, ms=3, lw=1.5,
            label=f"{group.label} (n={table.shape[0]})")  # fmt: skip
    ax.fill_between(x, mean - half, mean + half, color=group.color, alpha=0.2, lw=0)


def _task_boundaries(run: Run) -> np.ndarray:
    """First logged step of every task after the first, from all of a run's series."""
    steps = np.concatenate([s.step for s in run.series.values()] or [np.zeros(0)])
    tasks = np.concatenate([s.task_id for s in run.series.values()] or [np.zeros(0)])
    if len(steps) == 0:
        return np.zeros(0)
    first = [steps[tasks >= k].min() for k in np.unique(tasks)[1:]]
    return np.asarray(first, dtype=np.float64)


def _layer_series(run: Run, metric: str) -> list[Series]:
    """The most detailed ``plasticity/.../<metric>`` series: one per layer.

    Agents log per-layer series next to aggregates (``plasticity/actor/dead_units``
    beside ``plasticity/actor/layer0/dead_units``); only the deepest level is used,
    so nothing is counted twice.
    """
    found = run.matching(metric, prefix="plasticity/")
    depth = max((s.name.count("/") for s in found), default=0)
    return [s for s in found if s.name.count("/") == depth]


def _spectral_series(run: Run) -> Series | None:
    """A run's spectral densities as one series (task-start and task-end rows merged).

    Agents log them at task start and end, ``curvature/task_start/spectral_density``
    and ``curvature/task_end/spectral_density``, on ``clenv.metrics.DENSITY_GRID``.
    """
    parts = [
        run.series[tag]
        for tag in SPECTRAL_DENSITY_TAGS
        if tag in run.series
        and len(run.series[tag])
        and "grid" in run.series[tag].attrs
    ]
    if not parts:
        return None
    grid = np.asarray(parts[0].attrs["grid"])
    parts = [p for p in parts if np.array_equal(np.asarray(p.attrs["grid"]), grid)]
    if len(parts) == 1:
        return parts[0]
    return Series(
        name=parts[0].name,
        step=np.concatenate([p.step for p in parts]),
        task_id=np.concatenate([p.task_id for p in parts]),
        value=np.concatenate([p.value for p in parts]),
        attrs={"grid": grid},
    )


def _per_task_layer_total(series: list[Series], reduce: str) -> tuple[np.ndarray, ...]:
    keys, table = align_by_key([s.per_task_mean() for s in series])
    values = np.nansum(table, axis=0) if reduce == "sum" else np.nanmean(table, axis=0)
    return keys, values


def _start_rows(series: Series) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first density logged in each task: ``(task_ids, row_indices)``."""
    order = np.lexsort((series.step, series.task_id))
    tasks, first = np.unique(series.task_id[order], return_index=True)
    return tasks, order[first]


class _FigurePlan:
    """Decides which panels can be drawn from the runs and collects the notes."""

    def __init__(
        self,
        runs: Sequence[Run],
        metric: str | None,
        eps: float | None,
    ) -> None:
        self.runs = list(runs)
        self.notes: list[str] = []
        grouped = group_runs(self.runs)
        labels = group_labels(list(grouped))
        colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        self.groups = [
            _Group(labels[key], colors[i % len(colors)], members)
            for i, (key, members) in enumerate(grouped.items())
        ]
        self.metric = metric
        self.eps = eps
        self.panels: list[_Panel] = []
        self._plan_performance_per_task()
        self._plan_performance_steps()
        self._plan_layer_metric(TITLE_DEAD_UNITS, "dead_units", "sum")
        self._plan_layer_metric(TITLE_EFFECTIVE_RANK, "effective_rank", "mean")
        self._plan_spectra()
        self._plan_epsilon_rank()

    # -- helpers ---------------------------------------------------------------------
    def _note_missing(self, what: str, lacking: Sequence[Run]) -> None:
        if lacking:
            names = ", ".join(run.name for run in lacking[:3])
            more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
            self.notes.append(f"{what}: left out {names}{more} (series not logged)")

    def _skip(self, title: str, wanted: str) -> None:
        self.notes.append(f"skipped panel '{title}': no run logged {wanted}")

    # -- performance -----------------------------------------------------------------
    def _plan_performance_per_task(self) -> None:
        tags = (self.metric,) if self.metric else PERFORMANCE_PER_TASK_TAGS
        tag = _first_tag(self.runs, tags)
        self.performance_tag = tag
        if tag is None:
            self._skip(TITLE_PERFORMANCE, " or ".join(tags))
            return
        self._note_missing(
            TITLE_PERFORMANCE, [r for r in self.runs if not r.find([tag])]
        )

        def draw(ax: Axes) -> None:
            for group in self.groups:
                per_seed = [
                    r.series[tag].per_task_mean() for r in group.runs if r.find([tag])
                ]
                if per_seed:
                    tasks, table = align_by_key(per_seed)
                    _band(
                        ax, tasks, table, group, marker="o" if len(tasks) < 30 else ""
                    )
            ax.set_xlabel("task")
            ax.set_ylabel(tag)

        self.panels.append(_Panel(TITLE_PERFORMANCE, draw))

    def _plan_performance_steps(self) -> None:
        tag = _first_tag(self.runs, PERFORMANCE_STEP_TAGS)
        if tag is None:
            self._skip(TITLE_PERFORMANCE_STEPS, " or ".join(PERFORMANCE_STEP_TAGS))
            return
        self._note_missing(
            TITLE_PERFORMANCE_STEPS, [r for r in self.runs if not r.find([tag])]
        )

        def draw(ax: Axes) -> None:
            last = max(r.series[tag].step.max() for r in self.runs if r.find([tag]))
            # Few tasks: up to 400 bins, enough to show the learning curve within each
            # task. Many tasks: bins aligned with the first run's task switches (equal
            # bins would alias against them), at most 200 of them.
            points = max(len(r.series[tag]) for r in self.runs if r.find([tag]))
            first = next(r for r in self.runs if r.find([tag]))
            switches = _task_boundaries(first)
            if len(switches) < 30:
                edges = np.linspace(0, last + 1, int(np.clip(points, 100, 400)) + 1)
            else:
                every = -(-len(switches) // 200)
                inner = switches[every - 1 :: every]
                edges = np.unique(np.concatenate([[0.0], inner, [last + 1.0]]))
            centres = (edges[:-1] + edges[1:]) / 2
            for group in self.groups:
                members = [r.series[tag] for r in group.runs if r.find([tag])]
                if members:
                    table = np.stack(
                        [
                            binned_mean(s.step, s.value.astype(float), edges)
                            for s in members
                        ]
                    )
                    keep = ~np.all(np.isnan(table), axis=0)
                    _band(ax, centres[keep], table[:, keep], group)
            boundaries = np.unique(
                np.concatenate([_task_boundaries(r) for r in self.runs])
            )
            if len(boundaries):
                ax.vlines(boundaries, 0, 1, transform=ax.get_xaxis_transform(),
                          colors="0.5", linestyles="--", lw=0.7,
                          alpha=1.0 if len(boundaries) <= 50 else 0.15)  # fmt: skip
            ax.set_xlabel("step (dashed: task switch)")
            ax.set_ylabel(tag)

        self.panels.append(_Panel(TITLE_PERFORMANCE_STEPS, draw))

    # -- representation --------------------------------------------------------------
    def _plan_layer_metric(self, title: str, metric: str, reduce: str) -> None:
        have = {id(r): _layer_series(r, metric) for r in self.runs}
        if not any(have.values()):
            self._skip(title, f"plasticity/<layer>/{metric}")
            return
        self._note_missing(title, [r for r in self.runs if not have[id(r)]])
        num_layers = max(len(series) for series in have.values())
        how = "summed over" if reduce == "sum" else "mean over"

        def draw(ax: Axes) -> None:
            for group in self.groups:
                per_seed = [
                    _per_task_layer_total(have[id(r)], reduce)
                    for r in group.runs
                    if have[id(r)]
                ]
                if per_seed:
                    tasks, table = align_by_key(per_seed)
                    _band(
                        ax, tasks, table, group, marker="o" if len(tasks) < 30 else ""
                    )
            ax.set_xlabel("task")
            ax.set_ylabel(f"{metric} ({how} {num_layers} layers)")

        self.panels.append(_Panel(title, draw))

    # -- curvature -------------------------------------------------------------------
    def _plan_spectra(self) -> None:
        self.spectra = {id(r): _spectral_series(r) for r in self.runs}
        if not any(self.spectra.values()):
            self._skip(
                TITLE_SPECTRUM, " or ".join(SPECTRAL_DENSITY_TAGS) + " with a grid"
            )
            return
        self._note_missing(
            TITLE_SPECTRUM, [r for r in self.runs if not self.spectra[id(r)]]
        )
        for group in self.groups:
            members = [self.spectra[id(r)] for r in group.runs if self.spectra[id(r)]]
            if members:
                title = f"{TITLE_SPECTRUM} ({group.label})"
                drawer = self._spectrum_drawer(members)
                self.panels.append(_Panel(title, drawer, grid_lines=False))

    @staticmethod
    def _spectrum_drawer(members: list[Series]) -> Callable[[Axes], None]:
        def draw(ax: Axes) -> None:
            # From the largest |λ| with mass down to the grid's resolution (at most
            # 6 decades): finer bins would be empty stripes between grid points.
            top, resolution = -np.inf, np.inf
            for s in members:
                grid = np.asarray(s.attrs["grid"], dtype=np.float64)
                support = np.abs(grid[np.max(s.value, axis=0) > 1e-6 * s.value.max()])
                top = max(top, np.log10(support.max()) if len(support) else 0.0)
                resolution = min(resolution, np.abs(grid[grid != 0]).min())
            top = np.ceil(top)
            bottom = max(top - 6.0, np.floor(np.log10(resolution) * 4) / 4)
            edges = np.linspace(bottom, top, 49)
            columns: dict[tuple[int, int], list[np.ndarray]] = {}
            for s in members:
                mass = log_abs_mass(s.attrs["grid"], s.value, edges)
                order = np.lexsort((s.step, s.task_id))
                position: dict[int, int] = {}
                for row in order:
                    task = int(s.task_id[row])
                    key = (task, position.setdefault(task, 0))
                    position[task] += 1
                    columns.setdefault(key, []).append(mass[row])
            keys = sorted(columns)
            per_task = {task: sum(1 for t, _ in keys if t == task) for task, _ in keys}
            # One equal-width column per logged density, in order (curvature is often
            # logged every k-th task, so a task axis would leave slivers); the ticks
            # name the task, "s"/"e" marking its start and end densities.
            image = np.stack([np.mean(columns[k], axis=0) for k in keys], axis=1)
            mesh = ax.pcolormesh(np.arange(len(keys) + 1) - 0.5, edges,
                                 np.maximum(image, 1e-6),
                                 norm=LogNorm(vmin=1e-4, vmax=1.0), cmap="magma")  # fmt: skip
            ax.figure.colorbar(mesh, ax=ax, label="share of spectral mass")
            labels = [
                f"{t}" if per_task[t] == 1 else f"{t}{'s' if j == 0 else 'e'}"
                for t, j in keys
            ]
            every = max(1, -(-len(keys) // 12))
            ax.set_xticks(np.arange(len(keys))[::every], labels[::every])
            ax.set_xlabel("task of each density (s: task start, e: task end)")
            ax.set_ylabel(f"log10 |λ|  (bottom row: |λ| < {10 ** edges[1]:.2g})")

        return draw

    def _plan_epsilon_rank(self) -> None:
        perf_tag = self.performance_tag
        if perf_tag is None or not any(self.spectra.values()):
            self._skip(
                TITLE_EPSILON_RANK, "both a per-task performance and a spectral density"
            )
            return
        points: list[tuple[_Group, np.ndarray, np.ndarray, np.ndarray]] = []
        for group in self.groups:
            for run in group.runs:
                perf, spectrum = run.find([perf_tag]), self.spectra[id(run)]
                if perf is None or spectrum is None:
                    continue
                perf_tasks, perf_values = perf.per_task_mean()
                tasks, rows = _start_rows(spectrum)
                shared = np.isin(tasks, perf_tasks)
                if shared.any():
                    values = perf_values[np.searchsorted(perf_tasks, tasks[shared])]
                    grid = np.asarray(spectrum.attrs["grid"], dtype=np.float64)
                    points.append((group, grid, spectrum.value[rows[shared]], values))
        total = sum(len(p[3]) for p in points)
        if total < 3:
            self.notes.append(
                f"skipped panel '{TITLE_EPSILON_RANK}': {total} task(s) have both a "
                "spectral density and a performance value (need 3)"
            )
            return
        performance = np.concatenate([p[3] for p in points])
        spectra = [(p[1], p[2]) for p in points]
        if self.eps is None:
            eps, _ = best_epsilon(spectra, performance, EPSILON_CANDIDATES)
            how = "chosen to maximise R²"
        else:
            eps, how = self.eps, "given"
        if not np.isfinite(eps):
            self.notes.append(
                f"skipped panel '{TITLE_EPSILON_RANK}': ε-rank or performance is "
                "constant for every ε tried, so no R² is defined"
            )
            return
        ranks = np.concatenate(
            [epsilon_rank_from_density(g, d, eps) for g, d in spectra]
        )
        slope, intercept, r_squared = linear_fit(ranks, performance)
        self.epsilon, self.r_squared = eps, r_squared
        title = f"{TITLE_EPSILON_RANK} (ε = {eps:.3g}, R² = {r_squared:.2f})"

        def draw(ax: Axes) -> None:
            seen: set[str] = set()
            for group, grid, densities, values in points:
                label = None if group.label in seen else group.label
                seen.add(group.label)
                ax.scatter(epsilon_rank_from_density(grid, densities, eps), values,
                           s=14, color=group.color, label=label)  # fmt: skip
            if np.isfinite(slope):
                xs = np.linspace(ranks.min(), ranks.max(), 2)
                ax.plot(xs, slope * xs + intercept, color="k", lw=1, ls="--")
            ax.set_xlabel(
                f"ε-rank at task start: share of density mass with |λ| > ε\n"
                f"(ε = {eps:.3g}, {how})"
            )
            ax.set_ylabel(perf_tag)

        self.panels.append(_Panel(title, draw))


def make_figure(
    runs: Sequence[Run],
    *,
    metric: str | None = None,
    eps: float | None = None,
    title: str | None = None,
    pyplot: bool = True,
) -> tuple[Figure, list[str], list[str]]:
    """Build the figure for already loaded runs.

    Args:
        runs: Loaded runs (:func:`~clenv.plotting.load_runs`).
        metric, eps, title: See :func:`plot_runs`.
        pyplot: Make the figure with ``matplotlib.pyplot`` (shown by the user's
            backend; close it with ``plt.close``). False: a detached ``Figure`` that
            only ``savefig`` renders, leaving pyplot and its backend untouched.

    Returns:
        ``(figure, panel_titles, notes)``.

    Raises:
        ValueError: no run logged any series a panel uses.
    """
    if not runs:
        raise ValueError("no runs to plot")
    plan = _FigurePlan(runs, metric, eps)
    if not plan.panels:
        found = sorted({name for run in runs for name in run.series})
        raise ValueError(
            "none of the runs logged a series that clenv plot uses "
            f"({'; '.join(plan.notes)}); series found: {found[:20]}"
        )
    columns = 2 if len(plan.panels) > 1 else 1
    rows = -(-len(plan.panels) // columns)
    note_height = 0.18 * len(plan.notes)
    figsize = (6.4 * columns, 3.8 * rows + note_height)
    if pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=figsize)
    else:
        fig = Figure(figsize=figsize)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, panel in zip(axes.flat, plan.panels, strict=False):
        panel.draw(ax)
        ax.set_title(panel.title, fontsize=10)
        if panel.grid_lines:
            ax.grid(alpha=0.3)
    for ax in axes.flat[len(plan.panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        axes.flat[0].legend(fontsize=8)
    seeds = sorted({str(run.seed) for run in runs})
    envs = ", ".join(sorted({run.env_id for run in runs}))
    default_title = f"{envs}: {len(runs)} run(s), seeds {', '.join(seeds)}"
    fig.suptitle(title or default_title, fontsize=11)
    bottom = note_height / fig.get_figheight()
    if plan.notes:
        fig.text(0.01, 0.005, "\n".join(f"note: {n}" for n in plan.notes),
                 fontsize=7, va="bottom", color="0.3")  # fmt: skip
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    return fig, [p.title for p in plan.panels], plan.notes


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    metric: str | None = None,
    eps: float | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> PlotResult:
    """Plot run directories into one PNG (the ``clenv plot`` command).

    Args:
        run_dirs: run directories (``runs/<run>``), or directories of run directories.
        out: the image file to write (format from its suffix, e.g. ``.png``, ``.pdf``).
        metric: the per-task performance tag to plot instead of the first one found of
            :data:`PERFORMANCE_PER_TASK_TAGS`.
        eps: ε for the ε-rank panel; by default the ε that maximises R², as SC does.
        title: figure title.
        dpi: resolution of raster output.

    Returns:
        The file written, the panel titles and the notes about skipped panels / runs.
    """
    runs = load_runs(run_dirs)
    if metric is not None and not any(run.find([metric]) for run in runs):
        raise ValueError(
            f"--metric {metric!r} was not logged by any of the runs; per-task series "
            "found: "
            + str(
                sorted(
                    {
                        n
                        for r in runs
                        for n in r.series
                        if n.startswith(("cl/", "eval/"))
                    }
                )
            )
        )
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(out)!r}: directory {str(out.parent)!r} does not exist"
        )
    fig, panels, notes = make_figure(
        runs, metric=metric, eps=eps, title=title, pyplot=False
    )
    fig.savefig(out, dpi=dpi)
    return PlotResult(path=out, panels=panels, notes=notes)
