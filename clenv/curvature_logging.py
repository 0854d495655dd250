"""Curvature diagnostics at task boundaries, logged without touching the run.

Both agents log ``curvature/task_start/*`` and ``curvature/task_end/*``: the
:func:`clenv.metrics.curvature_report` of the loss they minimise, at the current
weights, on samples of the task. :func:`log_curvature` takes the report in a sealed
state, so logging more or less never changes the training run, and writes it to the
run's logger:

    log_curvature(logger, model, loss_fn, [(inputs, labels)], when="task_end",
                  task_id=task, step=global_step, epsilons=(0.01, 0.1), order=100,
                  trace_matvecs=0, seed=1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from clenv import metrics
from clenv.metrics.activations import preserved_training_state

__all__ = ["log_curvature"]


def log_curvature(
    logger: Any,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    data: Sequence[Any],
    *,
    when: str,
    task_id: int,
    step: int,
    epsilons: Sequence[float],
    order: int,
    trace_matvecs: int,
    seed: int,
    array_length: int | None = None,
    **report_options: Any,
) -> None:
    """``curvature/<when>/*``: :func:`clenv.metrics.curvature_report` of ``loss_fn``.

    Every train/eval flag, buffer (BatchNorm running statistics) and RNG stream of
    ``model`` is restored afterwards (:func:`preserved_training_state`), so the run
    continues exactly as if nothing had been logged.

    Args:
        logger: The run's :class:`clenv.logger.RunLogger`.
        model: The network, at its current weights.
        loss_fn: ``loss_fn(model, batch)``, the loss the agent minimises.
        data: The batches the Hessian is taken over.
        when: ``"task_start"`` or ``"task_end"``, the tag's middle part.
        task_id: The task the samples belong to.
        step: The global step the series rows get.
        epsilons: Thresholds of the epsilon-rank.
        order: Lanczos iterations of the spectral density.
        trace_matvecs: Hutch++ Hessian-vector products of the trace (0: none).
        seed: Seed of the estimators' own random probes.
        array_length: Pad or cut the Ritz values and weights to this length (HDF5
            rows: Lanczos may stop early); None keeps them as they come.
        **report_options: More :func:`~clenv.metrics.curvature_report` arguments
            (``forward_fn``, ``dead_unit_inputs``).
    """
    with preserved_training_state(model, model.training):
        report = metrics.curvature_report(
            model, loss_fn, data, eps=epsilons, order=order,
            trace_matvecs=trace_matvecs, seed=seed, **report_options,
        )  # fmt: skip
    logger.log_report(f"curvature/{when}/", report, step, task_id=task_id,
                      array_length=array_length)  # fmt: skip
