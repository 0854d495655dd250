"""Divergence guard: stop a training run at its first non-finite loss, gradient or
parameter, with a message naming the step, the task and the tensor.

A diverging run (too large a learning rate) otherwise logs ever larger losses, then
NaN, writes checkpoints full of NaN over the good ones, and a ``--resume`` loads them
and fails again. :class:`DivergenceGuard` checks

- the loss of every optimizer step (:meth:`~DivergenceGuard.check_loss`: one read of
  a scalar, or of the sum of a vector of per-example losses),
- the gradients and the parameters of the model every ``every`` steps
  (:meth:`~DivergenceGuard.check_gradients`, :meth:`~DivergenceGuard.check_parameters`:
  one fused ``torch._foreach_norm`` over all tensors and one read of the norms' sum;
  the tensor is named only after a failure),
- the parameters before anything that must not see NaN (a checkpoint, an SVD):
  :meth:`~DivergenceGuard.check_parameters` with ``force=True``.

A failed check raises :class:`DivergenceError`, whose :class:`DivergenceEvent` says
what diverged; :func:`record_divergence` logs it (``charts/diverged`` in TensorBoard
and ``metrics.h5``, the event in ``args.json`` under ``"diverged"``). The agents turn
it into ``--on-divergence fail`` (exit 1 with the message) or ``stop`` (record it and
end the run cleanly, exit 0) with :func:`end_diverged` (:func:`guard_run` sets that
up for a run in one call), and checkpoint through
:meth:`DivergenceGuard.save`; either way no checkpoint is written after it, so the
last checkpoint on disk is the last good state and ``--resume`` starts from it.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> guard = DivergenceGuard(model)
    >>> guard.check_loss(torch.tensor(0.5), step=10, task_id=0)
    >>> try:
    ...     guard.check_loss(torch.tensor(float("nan")), step=11, task_id=0)
    ... except DivergenceError as error:
    ...     print(error.event.kind, error.event.tensor, error.event.step)
    loss loss 11
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import torch
from torch import nn

from clenv.run import NonFiniteStateError

__all__ = [
    "ON_DIVERGENCE",
    "DivergenceError",
    "DivergenceEvent",
    "DivergenceGuard",
    "clear_divergence",
    "end_diverged",
    "first_nonfinite",
    "guard_run",
    "record_divergence",
]

#: The choices of the agents' ``--on-divergence``.
ON_DIVERGENCE = ("fail", "stop")
#: The key of a diverged run's event in ``args.json``.
ARGS_KEY = "diverged"


@dataclasses.dataclass(frozen=True)
class DivergenceEvent:
    """What diverged, where.

    Attributes:
        step: The global step of the check.
        task_id: The task the run was in (None where the run has no tasks).
        kind: ``"loss"``, ``"gradient"``, ``"parameter"`` or (a checkpoint's
            optimizer or method tensor) ``"state"``.
        tensor: The tensor's name (``"loss"``, a parameter name such as
            ``"critic.0.weight"``).
        value: The offending value: the loss, or the tensor's norm (nan or inf).
    """

    step: int
    task_id: int | None
    kind: str
    tensor: str
    value: float

    def message(self, unit: str = "step") -> str:
        """One sentence: ``non-finite gradient 'critic.0.weight' (nan) at step 512,
        task 3``."""
        where = f"{unit} {self.step:,}"
        if self.task_id is not None:
            where += f", task {self.task_id}"
        return f"non-finite {self.kind} {self.tensor!r} ({self.value}) at {where}"


class DivergenceError(RuntimeError):
    """A non-finite loss, gradient or parameter; ``event`` says which."""

    def __init__(self, event: DivergenceEvent, unit: str = "step") -> None:
        super().__init__(f"training diverged: {event.message(unit)}")
        self.event = event


def _named(
    model: nn.Module | Mapping[str, nn.Module],
) -> list[tuple[str, nn.Parameter]]:
    if isinstance(model, Mapping):
        return [
            (f"{prefix}.{name}" if prefix else name, param)
            for prefix, module in model.items()
            for name, param in module.named_parameters()
        ]
    return list(model.named_parameters())


def first_nonfinite(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
) -> tuple[str, float] | None:
    """The first tensor holding a nan or inf, as ``(name, norm)``; None if all are
    finite.

    One fused ``torch._foreach_norm`` and one sum of the norms while all is well (a
    norm is non-finite when the tensor holds a nan or inf); the
    tensors are scanned one by one only after that, so a finite tensor whose norm
    merely overflows float32 is not reported.
    """
    named = [(name, t) for name, t in named_tensors if t is not None and t.numel()]
    if not named:
        return None
    tensors = [t.detach() for _, t in named]
    norms = torch._foreach_norm(tensors)
    if math.isfinite(float(torch.stack(norms).sum())):
        return None
    for (name, tensor), norm in zip(named, norms, strict=True):
        if not bool(torch.isfinite(tensor).all()):
            return name, float(norm)
    return None


class DivergenceGuard:
    """Checks a model's loss, gradients and parameters for nan and inf.

    Args:
        model: The model, or ``{name: module}`` (tensor names get the prefix).
        every: Check gradients and parameters at every this many calls of
            :meth:`check_gradients` / :meth:`check_parameters` (1: every step; the
            loss is checked at every call). 0 turns those checks off except forced
            ones.
        unit: What a step counts, for the message (``"step"``, ``"example"``).
        handler: Called with the :class:`DivergenceError` instead of raising it (an
            agent's way to record the event and end the run); if it returns, the
            error is raised.
    """

    def __init__(
        self,
        model: nn.Module | Mapping[str, nn.Module],
        every: int = 1,
        unit: str = "step",
        handler: Callable[[DivergenceError], Any] | None = None,
    ) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0 (0: only forced checks), got {every}")
        self.params = _named(model)
        self.every = int(every)
        self.unit = unit
        self.handler = handler
        self._gradient_calls = 0
        self._parameter_calls = 0

    def diverged(
        self,
        step: int,
        task_id: int | None,
        kind: str,
        tensor: str,
        value: float = math.nan,
    ) -> None:
        """Report a divergence found elsewhere (e.g. a checkpoint's state refused by
        :meth:`clenv.run.Run.save`): the handler, then :class:`DivergenceError`."""
        event = DivergenceEvent(int(step), task_id, kind, tensor, float(value))
        error = DivergenceError(event, self.unit)
        if self.handler is not None:
            self.handler(error)
        raise error

    def save(self, run: Any, step: int, task_id: int | None, **parts: Any) -> None:
        """``run.save(step, **parts)`` (:meth:`clenv.run.Run.save`) once the
        parameters are found finite; an optimizer or method tensor that it refuses as
        non-finite (:class:`clenv.run.NonFiniteStateError`) is a divergence too, of
        kind ``"state"``."""
        self.check_parameters(step, task_id, force=True)
        try:
            run.save(step, **parts)
        except NonFiniteStateError as error:
            self.diverged(step, task_id, "state", error.name)

    def check_loss(
        self,
        loss: torch.Tensor | float,
        step: int,
        task_id: int | None = None,
        name: str = "loss",
    ) -> None:
        """Raise :class:`DivergenceError` if ``loss`` holds a nan or inf.

        ``loss`` is a scalar, or a vector of per-example losses whose first belongs
        to ``step`` (the event's step is that of the first non-finite one).
        """
        if isinstance(loss, torch.Tensor):
            # One reduction and one read while all is well (a sum is non-finite when
            # a term is); the examples are scanned only after that.
            flat = loss.detach().flatten()
            total = float(flat[0] if flat.numel() == 1 else flat.sum())
            if math.isfinite(total):
                return
            bad = (~torch.isfinite(flat)).nonzero()
            if not bad.numel():  # finite terms whose sum overflows
                return
            index = int(bad[0, 0])
            step, value = step + index, float(flat[index])
        else:
            if math.isfinite(loss):
                return
            value = float(loss)
        self.diverged(step, task_id, "loss", name, value)

    def _due(self, counter: str, force: bool) -> bool:
        calls = getattr(self, counter) + 1
        setattr(self, counter, calls)
        return force or (self.every > 0 and calls % self.every == 0)

    def check_gradients(
        self, step: int, task_id: int | None = None, force: bool = False
    ) -> None:
        """Raise :class:`DivergenceError` naming the first parameter whose gradient
        holds a nan or inf (every ``every``-th call, or when ``force``)."""
        if not self._due("_gradient_calls", force):
            return
        found = first_nonfinite((name, p.grad) for name, p in self.params)
        if found is not None:
            self.diverged(step, task_id, "gradient", *found)

    def check_parameters(
        self, step: int, task_id: int | None = None, force: bool = False
    ) -> None:
        """Raise :class:`DivergenceError` naming the first parameter holding a nan
        or inf (every ``every``-th call, or when ``force``)."""
        if not self._due("_parameter_calls", force):
            return
        found = first_nonfinite(self.params)
        if found is not None:
            self.diverged(step, task_id, "parameter", *found)


def record_divergence(logger: Any, event: DivergenceEvent, action: str) -> None:
    """Log a divergence: ``charts/diverged`` = 1 at its step (TensorBoard and
    ``metrics.h5``), the message as TensorBoard text, and the event with the action
    taken (``"fail"`` or ``"stop"``) in ``args.json`` under ``"diverged"``.

    Args:
        logger: The run's :class:`~clenv.logger.RunLogger`.
        event: What diverged.
        action: What the run did about it (``--on-divergence``).
    """
    logger.log_scalar("charts/diverged", 1.0, event.step, task_id=event.task_id)
    if logger.writer is not None:
        logger.writer.add_text("charts/diverged", event.message(), event.step)
    saved = logger.load_args(logger.run_dir)
    # nan/inf as text: args.json stays strict JSON.
    value = event.value if math.isfinite(event.value) else str(event.value)
    saved[ARGS_KEY] = {**dataclasses.asdict(event), "value": value, "action": action}
    logger.update_args(saved)
    logger.flush()


def clear_divergence(logger: Any) -> bool:
    """Drop a recorded divergence from ``args.json`` (a resumed run starts from the
    last good checkpoint, before it); returns whether there was one."""
    saved = logger.load_args(logger.run_dir)
    if ARGS_KEY not in saved:
        return False
    del saved[ARGS_KEY]
    logger.update_args(saved)
    return True


def end_diverged(
    error: DivergenceError, run: Any, action: str, close: Iterable[Any] = ()
) -> NoReturn:
    """An agent's ``--on-divergence``: record the event (:func:`record_divergence`),
    close ``close`` (progress bar, envs) and the run without a checkpoint (the last
    one on disk is the last good state), then exit 1 with the message and the resume
    command (``action="fail"``) or 0 (``"stop"``).

    Args:
        error: What the :class:`DivergenceGuard` found.
        run: The :class:`clenv.run.Run`.
        action: ``"fail"`` or ``"stop"``.
        close: Objects to ``close()`` before the run.
    """
    record_divergence(run.logger, error.event, action)
    for thing in close:
        thing.close()
    run.close()
    resume = f"python {sys.argv[0]} --resume {run.run_dir}"
    if action == "fail":
        sys.exit(
            f"error: {error}. No checkpoint was written after it; the last one in "
            f"{run.checkpoint_dir} is the last good state. Resuming repeats the "
            "divergence (same arguments, same data): start a new run with a lower "
            f"--learning-rate, or `{resume} --on-divergence stop` records it and "
            "ends the run cleanly"
        )
    print(f"stopped (--on-divergence stop): {error}; recorded in args.json and "
          "charts/diverged")  # fmt: skip
    run.print_paths()
    sys.exit(0)


def guard_run(
    run: Any,
    model: nn.Module | Mapping[str, nn.Module],
    args: Any,
    close: Iterable[Any] = (),
    unit: str = "step",
) -> DivergenceGuard:
    """The :class:`DivergenceGuard` of an agent's run, from its flags.

    A resumed run starts from its last good checkpoint, before any divergence, so a
    divergence recorded in ``args.json`` is dropped first (:func:`clear_divergence`).
    The guard checks every ``args.divergence_check_every`` steps and ends the run
    with :func:`end_diverged` as ``args.on_divergence`` says, closing ``close``.

    Args:
        run: The :class:`clenv.run.Run`.
        model: The model to check.
        args: The agent's arguments (``divergence_check_every``, ``on_divergence``).
        close: Objects to ``close()`` before the run ends (progress bar, envs).
        unit: What a step counts, for the message (``"step"``, ``"example"``).
    """
    if run.resumed:
        clear_divergence(run.logger)
    close = tuple(close)
    return DivergenceGuard(
        model,
        args.divergence_check_every,
        unit=unit,
        handler=lambda error: end_diverged(error, run, args.on_divergence, close),
    )
