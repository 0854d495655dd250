"""Plots of run directories (``clenv plot``): read ``metrics.h5``, group seeds, draw.

Example::

    from clenv.plotting import plot_runs

    result = plot_runs(["runs/"], "fig.png")
    print(result.panels, result.notes)
"""

from __future__ import annotations

from clenv.plotting.figure import PlotResult, make_figure, plot_runs
from clenv.plotting.runs import Run, Series, group_runs, load_run, load_runs
from clenv.plotting.stats import (
    epsilon_rank_from_density,
    linear_fit,
    mean_confidence_interval,
)

__all__ = [
    # figure
    "PlotResult",
    "make_figure",
    "plot_runs",
    # run directories
    "Run",
    "Series",
    "group_runs",
    "load_run",
    "load_runs",
    # statistics
    "epsilon_rank_from_density",
    "linear_fit",
    "mean_confidence_interval",
]
