"""The task-switch protocol shared by every clenv environment.

Every clenv env is non-stationary: it walks through a sequence of *tasks* (a friction
value, a pixel permutation, a pair of classes, ...) and says so in ``info``. This module
holds the two pieces that make that uniform:

* :class:`TaskSchedule`: a plain state machine that decides *when* the task changes
  (``switch_every`` steps, exactly at the boundary or at the first episode end after
  it) and gives each task id its own random generator, so the task sequence depends
  only on ``task_seed``;
* :class:`ContinualEnv`: a mixin for ``gymnasium.Env`` subclasses that owns a schedule,
  writes the protocol's ``info`` keys and implements ``task_id``, ``task``,
  ``num_tasks``, ``set_task``, ``get_schedule_state`` and ``set_schedule_state``;
* :func:`task_switches` and :func:`task_ids`: read the keys from one env's ``info`` or a
  vector env's ``infos`` (arrays with a ``_<key>`` mask) as one array per sub-env;
* the bookkeeping any continual RL loop needs on top (CleanRL- or SB3-style):
  :class:`TaskTracker` (returns per task, the last rollout wholly in a task),
  :func:`log_episodes`, :func:`end_task`, :func:`task_params`, :func:`task_due`.

The ``info`` keys, at every ``reset`` and ``step``:

=============== =======================================================================
``task_id``     index of the task in the sequence
``task_switch`` True in the first info after a switch, in the info of a reset that
                follows it before any step (an autoreset), and at the first reset
``task_step``   steps taken in the task so far (0 when it has just begun)
``task``        the task's parameters, a small dict such as ``{"friction": 0.13}``
=============== =======================================================================

They describe the task the agent acts in *next*: the reward returned by a step was
earned in the task the action was taken in, which is the previous task when
``task_switch`` is True. See docs/protocol.md.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SWITCH_AT_CHOICES = ("step", "episode_end")
SwitchAt = Literal["step", "episode_end"]
INFO_KEYS = ("task_id", "task_switch", "task_step", "task")
# States of a switch announcement (ContinualEnv._announce).
_NONE, _PENDING, _REPORTED = 0, 1, 2


#: Task ids are int64 (numpy seeds, HDF5 logs): an endless schedule stops there.
MAX_TASKS = 2**63 - 1


class TaskSchedule:
    """When tasks change, and a reproducible random generator per task.

    Args:
        switch_every: steps per task (counted from the task's first step).
        switch_at: ``"step"`` switches exactly after ``switch_every`` steps, in the middle
            of an episode if need be (SC); ``"episode_end"`` switches at the first episode
            start after that many steps (LoP), so an episode never spans two tasks.
        num_tasks: length of the task sequence; ``None`` for an endless one. After the
            last task the schedule stays in it.
        task_seed: the task sequence depends on this seed only, so every copy of an env
            built with the same arguments (e.g. the sub-envs of a vector env) sees the
            same tasks at the same steps.
    """

    def __init__(
        self,
        switch_every: int,
        switch_at: SwitchAt = "step",
        num_tasks: int | None = None,
        task_seed: int = 0,
    ) -> None:
        if isinstance(switch_every, bool) or not isinstance(
            switch_every, int | np.integer
        ):
            raise ValueError(
                f"switch_every must be a positive int (steps per task), got {switch_every!r}"
            )
        if switch_every <= 0:
            raise ValueError(
                f"switch_every must be a positive number of steps, got {switch_every}; "
                "use a large value (e.g. 10**12) for an effectively stationary env"
            )
        if switch_at not in SWITCH_AT_CHOICES:
            raise ValueError(
                f"switch_at must be one of {SWITCH_AT_CHOICES}, got {switch_at!r}: "
                "'step' switches exactly at the boundary (SC), 'episode_end' at the "
                "first episode start after it (LoP)"
            )
        if num_tasks is not None and (
            isinstance(num_tasks, bool)
            or not isinstance(num_tasks, int | np.integer)
            or num_tasks <= 0
        ):
            raise ValueError(
                f"num_tasks must be a positive int or None (endless), got {num_tasks!r}"
            )
        if isinstance(task_seed, bool) or not isinstance(task_seed, int | np.integer):
            raise ValueError(f"task_seed must be an int, got {task_seed!r}")
        if task_seed < 0:
            raise ValueError(f"task_seed must be >= 0, got {task_seed}")
        self.switch_every = int(switch_every)
        self.switch_at: SwitchAt = switch_at
        self.num_tasks = None if num_tasks is None else int(num_tasks)
        self.task_seed = int(task_seed)
        self.task_id = 0
        self.task_step = 0
        self.total_steps = 0
        self.started = False
        self.switch_pending = False

    # -- the sequence ----------------------------------------------------------------
    def task_rng(self, task_id: int) -> np.random.Generator:
        """The generator that draws task ``task_id``'s parameters.

        Seeded from ``(task_seed, task_id)`` so any task can be rebuilt directly (for
        evaluation on past tasks or after a resume) without replaying the sequence.
        """
        return np.random.default_rng([self.task_seed, int(task_id)])

    def check_task_id(self, task_id: int) -> int:
        if isinstance(task_id, bool) or not isinstance(task_id, int | np.integer):
            raise ValueError(f"task_id must be an int, got {task_id!r}")
        limit = MAX_TASKS if self.num_tasks is None else self.num_tasks
        if task_id < 0 or task_id >= limit:
            upper = (
                f" and < {MAX_TASKS}"
                if self.num_tasks is None
                else f" and < num_tasks={self.num_tasks}"
            )
            raise ValueError(f"task_id must be >= 0{upper}, got {task_id}")
        return int(task_id)

    @property
    def _has_next_task(self) -> bool:
        return self.num_tasks is None or self.task_id + 1 < self.num_tasks

    # -- the clock -------------------------------------------------------------------
    def restart(self) -> None:
        """Back to the start of the sequence (task 0, no steps taken)."""
        self.task_id = 0
        self.task_step = 0
        self.total_steps = 0
        self.started = False
        self.switch_pending = False

    def on_reset(self) -> bool:
        """Advance the schedule at an episode start; True if a new task begins."""
        if not self.started:
            self.started = True
            return True
        if self.switch_pending:
            self._next_task()
            return True
        return False

    def on_step(self) -> bool:
        """Advance the schedule by one env step; True if the next step is in a new task."""
        self.total_steps += 1
        self.task_step += 1
        if self.task_step < self.switch_every or not self._has_next_task:
            return False
        if self.switch_at == "step":
            self._next_task()
            return True
        self.switch_pending = True
        return False

    def _next_task(self) -> None:
        self.task_id += 1
        self.task_step = 0
        self.switch_pending = False

    # -- persistence -----------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue the same sequence at the same step."""
        return {
            "task_id": self.task_id,
            "task_step": self.task_step,
            "total_steps": self.total_steps,
            "started": self.started,
            "switch_pending": self.switch_pending,
            # Checked on restore: a state only makes sense for the same schedule.
            "switch_every": self.switch_every,
            "switch_at": self.switch_at,
            "num_tasks": self.num_tasks,
            "task_seed": self.task_seed,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ValueError(
                "schedule state must be the dict that get_schedule_state() returned, "
                f"got {type(state).__name__} {state!r}"
            )
        missing = {"task_id", "task_step", "total_steps", "started"} - set(state)
        if missing:
            raise ValueError(f"schedule state is missing keys {sorted(missing)}")
        for key in ("switch_every", "switch_at", "num_tasks", "task_seed"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"schedule state was saved with {key}={state[key]!r} but this env "
                    f"has {key}={getattr(self, key)!r}; build the env with the same "
                    "schedule arguments before restoring its state"
                )
        # Every field is checked before any is set: a bad state leaves the schedule as
        # it was, and the message names the key (states can be edited by hand).
        for key in ("task_id", "task_step", "total_steps"):
            value = state[key]
            if isinstance(value, bool | np.bool_) or not isinstance(
                value, numbers.Integral
            ):
                raise ValueError(
                    f"schedule state {key}={value!r}: expected an integer >= 0"
                )
            if value < 0:
                raise ValueError(f"schedule state {key}={value}: expected >= 0")
        if self.num_tasks is not None and state["task_id"] >= self.num_tasks:
            raise ValueError(
                f"schedule state task_id={state['task_id']}: this schedule has "
                f"num_tasks={self.num_tasks} (task ids 0..{self.num_tasks - 1})"
            )
        for key in ("started", "switch_pending"):
            value = state.get(key, False)
            if not isinstance(value, bool | np.bool_):
                raise ValueError(
                    f"schedule state {key}={value!r}: expected True or False"
                )
        self.task_id = int(state["task_id"])
        self.task_step = int(state["task_step"])
        self.total_steps = int(state["total_steps"])
        self.started = bool(state["started"])
        self.switch_pending = bool(state.get("switch_pending", False))


class ContinualEnv:
    """Mixin for ``gymnasium.Env`` subclasses that follow the task-switch protocol.

    A subclass calls :meth:`_init_schedule` in ``__init__`` and implements

    * ``_make_task(task_id, rng) -> dict``: the parameters of task ``task_id``, drawn
      from ``rng`` only (a generator seeded from ``(task_seed, task_id)``);
    * ``_apply_task(task) -> None``: make the env behave as that task.

    In ``reset`` it calls :meth:`_schedule_reset` and in ``step`` :meth:`_schedule_step`
    (after the transition); each fills the protocol keys into ``info``.

    Resets: ``reset()`` begins a new episode and never changes the task by itself (in
    ``switch_at="episode_end"`` mode it is where a due switch happens). ``reset(seed=s)``
    starts the whole stream over at task 0, so that, as Gymnasium's contract asks, the
    same seed gives the same rollout, task switches included. Agents seed once, at the
    start; vector envs' autoresets pass no seed.
    """

    _schedule: TaskSchedule
    _task: dict[str, Any]

    def _init_schedule(
        self,
        switch_every: int,
        switch_at: SwitchAt = "step",
        num_tasks: int | None = None,
        task_seed: int = 0,
    ) -> None:
        self._schedule = TaskSchedule(switch_every, switch_at, num_tasks, task_seed)
        self._pinned_task_id: int | None = None
        self._pinned_steps = 0
        # A switch is announced (task_switch=True) in every info until a step follows
        # an info that reported it, so a reset right after the switching step (e.g. a
        # vector env's autoreset, whose info replaces the step's) announces it too.
        self._announce = _NONE
        self._task = self._task_params(0)
        self._apply_task(self._task)

    # -- to implement ----------------------------------------------------------------
    def _make_task(self, task_id: int, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def _apply_task(self, task: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- protocol API ----------------------------------------------------------------
    @property
    def task_id(self) -> int:
        """Index of the task the env is in (the pinned one while pinned)."""
        if self._pinned_task_id is not None:
            return self._pinned_task_id
        return self._schedule.task_id

    @property
    def task(self) -> dict[str, Any]:
        """Parameters of the current task (a copy)."""
        return dict(self._task)

    @property
    def num_tasks(self) -> int | None:
        """Length of the task sequence, or None when it is endless."""
        return self._schedule.num_tasks

    @property
    def schedule(self) -> TaskSchedule:
        return self._schedule

    def task_params(self, task_id: int) -> dict[str, Any]:
        """Parameters of any task in the sequence, without switching to it."""
        return self._task_params(self._schedule.check_task_id(task_id))

    def set_task(self, task_id: int | None) -> None:
        """Pin the env to task ``task_id`` (e.g. to evaluate on a past task).

        While pinned the schedule is frozen (no steps counted, no switches) and
        ``task_step`` counts the steps since pinning; ``set_task(None)`` unpins and
        returns to the scheduled task where it was left. The next info (of a step or
        a reset) announces the change with ``task_switch=True``.
        """
        if task_id is None:
            self._pinned_task_id = None
            target = self._schedule.task_id
        else:
            target = self._schedule.check_task_id(task_id)
            self._pinned_task_id = target
            self._pinned_steps = 0
        self._task = self._task_params(target)
        self._apply_task(self._task)
        self._announce = _PENDING

    def get_schedule_state(self) -> dict[str, Any]:
        """The schedule's state (step counters, pending switch), for checkpoints."""
        state = self._schedule.get_state()
        state["pinned_task_id"] = self._pinned_task_id
        return state

    def set_schedule_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_schedule_state`; applies that task now."""
        pinned = state.get("pinned_task_id") if isinstance(state, dict) else None
        if pinned is not None:
            try:
                pinned = self._schedule.check_task_id(pinned)
            except ValueError as error:
                raise ValueError(f"schedule state pinned_task_id: {error}") from None
        self._schedule.set_state(state)
        self._pinned_task_id = pinned
        self._task = self._task_params(self.task_id)
        self._apply_task(self._task)
        self._announce = _NONE

    @property
    def schedule_state(self) -> dict[str, Any]:
        """:meth:`get_schedule_state` as an attribute; assigning it restores a state.

        So a vector env restores one state per sub-env with
        ``envs.set_attr("schedule_state", states)``.
        """
        return self.get_schedule_state()

    @schedule_state.setter
    def schedule_state(self, state: dict[str, Any]) -> None:
        self.set_schedule_state(state)

    # -- an external clock (clenv.vector) --------------------------------------------
    def _clock_state(self) -> dict[str, Any]:
        """The clock alone: the schedule's counters, the pinned task and its steps."""
        state = self._schedule.get_state()
        state["pinned_task_id"] = self._pinned_task_id
        state["pinned_steps"] = self._pinned_steps
        return state

    def _follow_clock(self, clock: dict[str, Any]) -> dict[str, Any] | None:
        """Move this env's clock to ``clock`` (another env's :meth:`_clock_state`).

        Called between two steps by :class:`clenv.vector.ContinualVectorEnv`, which
        owns the one clock of its sub-envs: after a step in which this sub-env only
        reset (Gymnasium's ``NEXT_STEP`` autoreset) while others acted, or when a due
        ``switch_at="episode_end"`` switch met another sub-env's episode end. A new
        task takes effect from the next action, as when a step switches it.

        Returns:
            The info entries that describe the env now (the protocol keys and the
            env's own, e.g. ``physics``), or None when it already was at ``clock``.
        """
        if self._clock_state() == clock:
            return None
        previous = self.task_id
        self._schedule.set_state(clock)
        self._pinned_task_id = clock["pinned_task_id"]
        self._pinned_steps = int(clock["pinned_steps"])
        if self.task_id != previous:
            self._switch_to(self.task_id)
        else:
            self._clock_moved()
        return self._fill_info({})

    def _clock_moved(self) -> None:
        """Hook: the clock moved within the task (a subclass whose task changes
        gradually with ``task_step`` catches up here)."""

    # -- for subclasses --------------------------------------------------------------
    def _task_params(self, task_id: int) -> dict[str, Any]:
        return self._make_task(task_id, self._schedule.task_rng(task_id))

    def _schedule_reset(self, info: dict[str, Any], seed: int | None) -> dict[str, Any]:
        """Call from ``reset``; a seeded reset restarts the task sequence at task 0."""
        if seed is not None:
            self._schedule.restart()
            self._announce = _NONE
        if self._pinned_task_id is None and self._schedule.on_reset():
            self._switch_to(self._schedule.task_id)
        return self._fill_info(info)

    def _schedule_step(self, info: dict[str, Any]) -> dict[str, Any]:
        """Call from ``step`` after the transition (the agent has acted)."""
        if self._announce == _REPORTED:
            self._announce = _NONE
        if self._pinned_task_id is not None:
            self._pinned_steps += 1
        elif self._schedule.on_step():
            self._switch_to(self._schedule.task_id)
        return self._fill_info(info)

    def _switch_to(self, task_id: int) -> None:
        self._task = self._task_params(task_id)
        self._apply_task(self._task)
        self._announce = _PENDING

    def _fill_info(self, info: dict[str, Any]) -> dict[str, Any]:
        if self._pinned_task_id is None:
            info["task_id"] = self._schedule.task_id
            info["task_step"] = self._schedule.task_step
        else:
            info["task_id"] = self._pinned_task_id
            info["task_step"] = self._pinned_steps
        info["task_switch"] = self._announce != _NONE
        if self._announce == _PENDING:
            self._announce = _REPORTED
        info["task"] = dict(self._task)
        return info


def _per_env(
    infos: Mapping[str, Any], key: str, num_envs: int | None, missing: Any, dtype: type
) -> np.ndarray:
    """``infos[key]`` as one value per sub-env; ``missing`` where it was not reported."""
    if key not in infos:
        if num_envs is None:
            raise KeyError(
                f"info has no {key!r} key: not a clenv env (a ContinualEnv writes it "
                "at every reset and step), or an info of a vector env in which no "
                "sub-env reported it; pass num_envs=... to read that as 'none'"
            )
        return np.full(num_envs, missing, dtype=dtype)
    values = np.asarray(infos[key])
    if values.ndim == 0:  # a single env's info
        values = values.reshape(1)
    values = values.astype(dtype)
    mask = infos.get(f"_{key}")
    if mask is not None:
        values = np.where(np.asarray(mask, dtype=bool), values, missing).astype(dtype)
    if num_envs is not None and values.shape != (num_envs,):
        raise ValueError(
            f"info[{key!r}] holds {values.shape[0]} values, expected num_envs="
            f"{num_envs}; pass the infos of the env the count belongs to"
        )
    return values


def task_switches(infos: Mapping[str, Any], num_envs: int | None = None) -> np.ndarray:
    """Which sub-envs report a task switch in this ``info``.

    Works on the ``info`` dict of a single env (``info["task_switch"]`` a bool) and on
    the ``infos`` of a Gymnasium vector env (an array, with a ``_task_switch`` mask of
    the sub-envs that reported it; a masked-out sub-env counts as no switch).

    Args:
        infos: The info of ``reset``/``step``.
        num_envs: Number of sub-envs; when given, an info without the key reads as no
            switch and the result's length is checked.

    Returns:
        A bool array with one entry per sub-env (length 1 for a single env).

    Example:
        >>> task_switches({"task_switch": True, "task_id": 3}).tolist()
        [True]
        >>> infos = {"task_switch": np.array([True, True, False]),
        ...          "_task_switch": np.array([True, False, True])}
        >>> task_switches(infos).tolist()
        [True, False, False]
    """
    return _per_env(infos, "task_switch", num_envs, False, bool)


def task_ids(infos: Mapping[str, Any], num_envs: int | None = None) -> np.ndarray:
    """The task id of each sub-env in this ``info`` (-1 where it was not reported).

    As :func:`task_switches`, for ``info["task_id"]``.

    Example:
        >>> task_ids({"task_id": np.array([2, 3]),
        ...           "_task_id": np.array([True, False])}).tolist()
        [2, -1]
    """
    return _per_env(infos, "task_id", num_envs, -1, np.int64)


# ---------------------------------------------------------------- a loop's task bookkeeping
def task_params(infos: Mapping[str, Any], index: int = 0) -> dict[str, float]:
    """The numeric parameters of sub-env ``index``'s task in this ``info``.

    ``info["task"]`` of a single env (``index`` 0) or of a vector env (each parameter
    an array over the sub-envs), e.g. for logging ``cl/friction``.

    Example:
        >>> task_params({"task": {"friction": np.array([0.5, 0.5]), "name": "a"}})
        {'friction': 0.5}
    """
    params = {}
    for key, value in infos["task"].items():
        value = np.asarray(value)
        if not key.startswith("_") and np.issubdtype(value.dtype, np.number):
            params[key] = float(value.reshape(-1)[index])
    return params


def task_due(task_id: int, every: int) -> bool:
    """Whether a measurement taken every ``every``-th task (0: never) is due now.

    Example:
        >>> [task_due(task, 2) for task in range(4)], task_due(0, 0)
        ([True, False, True, False], False)
    """
    return every > 0 and task_id % every == 0


def log_episodes(logger: Any, infos: Mapping[str, Any], step: int) -> list[float]:
    """``charts/episodic_return`` and ``_length`` of the episodes ended at ``step``.

    Reads a vector ``RecordEpisodeStatistics``'s ``infos["episode"]`` with its
    ``_episode`` mask; ``logger`` has ``log_scalar(tag, value, step)``
    (:class:`clenv.logger.RunLogger`). Returns the returns, for a
    :class:`TaskTracker` (the episodes were played in the task the action was taken
    in, not the one a switch in this ``infos`` announces).
    """
    returns = []
    for index in np.flatnonzero(infos.get("_episode", [])):
        returns.append(float(infos["episode"]["r"][index]))
        logger.log_scalar("charts/episodic_return", returns[-1], step)
        logger.log_scalar("charts/episodic_length", infos["episode"]["l"][index], step)
    return returns


@dataclass
class TaskTracker:
    """What a continual RL loop keeps about the task it acts in.

    The returns of the episodes finished in the current task (for
    ``cl/mean_return_per_task``, :func:`end_task`), the last 20 returns (a progress
    bar), and the last rollout that lay wholly in one task, so that measurements can
    be taken on a task's first and last whole rollouts (:meth:`keep_rollout`). A
    plain dataclass: ``vars(tracker)`` goes into a checkpoint, ``TaskTracker(**saved)``
    restores it.

    Example:
        >>> tasks = TaskTracker()
        >>> tasks.add_episode(1.0); tasks.add_episode(3.0)
        >>> tasks.keep_rollout("rollout of task 0")  # its first whole rollout
        True
        >>> tasks.switch(1)
        (0, [1.0, 3.0])
        >>> tasks.returns, tasks.recent_returns, tasks.last_rollout_of(0)
        ([], [1.0, 3.0], 'rollout of task 0')
    """

    task_id: int = 0
    returns: list[float] = field(default_factory=list)
    """returns of the episodes finished in the current task"""
    recent_returns: list[float] = field(default_factory=list)
    """the last 20 episodes' returns"""
    start_pending: bool = True
    """the current task has had no whole rollout yet"""
    last_batch: Any = None
    """the last rollout wholly in a task (:meth:`keep_rollout`)"""
    last_batch_task: int = -1
    """the task of ``last_batch``"""

    def switch(self, task_id: int) -> tuple[int, list[float]]:
        """Move on to ``task_id``; returns the finished task and its returns."""
        finished, returns = self.task_id, self.returns
        self.task_id, self.returns, self.start_pending = task_id, [], True
        return finished, returns

    def add_episode(self, episodic_return: float) -> None:
        """An episode finished in the current task."""
        self.returns.append(episodic_return)
        self.recent_returns = [*self.recent_returns[-19:], episodic_return]

    def keep_rollout(self, rollout: Any) -> bool:
        """Keep ``rollout``, which lay wholly in the current task, as its last one.

        Pass a copy where the loop reuses its buffers. Returns True for the task's
        first whole rollout (where a task-start measurement belongs).
        """
        first = self.start_pending
        self.start_pending = False
        self.last_batch, self.last_batch_task = rollout, self.task_id
        return first

    def last_rollout_of(self, task_id: int) -> Any:
        """The last whole rollout kept if it was in ``task_id``, else None."""
        return self.last_batch if self.last_batch_task == task_id else None


def end_task(
    logger: Any, tasks: TaskTracker, new_task: int, step: int
) -> tuple[int, Any]:
    """Move ``tasks`` on to ``new_task`` at ``step``, logging the task that ended.

    Logs ``cl/mean_return_per_task`` of its episodes (if any ended in it), stamped
    with the finished task, then stamps what follows with ``new_task``
    (``logger.set_task``; :class:`clenv.logger.RunLogger`).

    Returns:
        The finished task and its last whole rollout (:meth:`TaskTracker.keep_rollout`),
        or None when it had none: where a task-end measurement belongs.
    """
    finished, returns = tasks.switch(new_task)
    if returns:
        logger.log_scalar(
            "cl/mean_return_per_task", np.mean(returns), step, task_id=finished
        )
    logger.set_task(new_task)
    return finished, tasks.last_rollout_of(finished)
