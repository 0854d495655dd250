"""A vector env whose sub-envs share one task clock: ``gym.make_vec`` of a clenv id.

Every clenv id registers :class:`ContinualVectorEnv` as its ``vector_entry_point``,
so ``gym.make_vec("clenv/SlipperyAnt-v0", num_envs=N)`` builds one: N sub-envs (each
``gym.make(id, **kwargs)``, stepped in this process or, with ``asynchronous=True``,
in one process each) that are on the same task at every vector step, in every
autoreset mode. The vector env owns the clock:

* it counts **vector steps in which at least one sub-env acted** (a sub-env that
  only resets, under Gymnasium's ``NEXT_STEP`` autoreset, does not act; a vector
  step in which every sub-env only resets does not count). With ``SAME_STEP``
  autoreset every vector step counts, and with one sub-env the clock is the env's
  own;
* ``switch_at="step"``: the task changes after ``switch_every`` counted steps;
* ``switch_at="episode_end"``: once ``switch_every`` steps are done, the task
  changes at the first vector step in which **any** sub-env starts a new episode,
  for every sub-env at once (the others mid-episode);
* every sub-env runs the task-switch protocol itself (clenv.protocol), and a
  sub-env whose own clock fell behind (it only reset while others acted) or which
  has a switch to follow is moved to the vector env's clock before the next step.

``infos`` carry ``task_id``, ``task_step`` and ``task_switch`` with the same value
for every sub-env (all mask entries True), with the meaning they have for a single
env whose step is the vector step; ``task`` holds each sub-env's task parameters.
``set_task``, ``get_schedule_state`` and ``set_schedule_state`` act on the clock
and every sub-env. See docs/protocol.md ("Vector envs").
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from clenv.checks import check_flags, check_range
from clenv.protocol import ContinualEnv, TaskSchedule

# Methods that change the clock: through ``call`` they act on the vector env's clock too.
_CLOCK_METHODS = ("set_task", "set_schedule_state")
_UNIFORM_KEYS = ("task_id", "task_step", "task_switch")


class _Clock(ContinualEnv):
    """The vector env's clock: a :class:`ContinualEnv` without an environment.

    Its schedule is a copy of the sub-envs' (the same class, e.g. a supervised
    stream's per-task lengths), so it switches exactly where one sub-env alone
    would; it steps when a sub-env acts and resets when one starts an episode.
    """

    def __init__(self, schedule: TaskSchedule) -> None:
        self._init_schedule(schedule.switch_every, schedule.switch_at)
        self._schedule = schedule
        self._schedule.restart()

    def _make_task(self, task_id: int, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def _apply_task(self, task: dict[str, Any]) -> None:
        pass


class ContinualVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a clenv env on one task clock (the module docstring).

    Built by ``gym.make_vec(env_id, num_envs=N, **kwargs)`` (the registered
    ``vector_entry_point``); the arguments below are passed as keywords there, next
    to the env's own (``switch_every=...``). Gymnasium's ``vector_kwargs`` and
    ``wrappers`` do not apply to a vector entry point: wrap the vector env instead
    (e.g. ``gym.wrappers.vector.RecordEpisodeStatistics``).
    ``vectorization_mode="sync"`` or ``"async"`` asks Gymnasium for its generic
    vector env instead, in which every sub-env keeps its own clock.

    Args:
        env_id: the clenv id of the sub-envs.
        num_envs: number of sub-envs.
        autoreset_mode: Gymnasium's autoreset mode (default ``NEXT_STEP``, as
            Gymnasium's vector envs); the sub-envs stay on one task in each.
        asynchronous: step the sub-envs in one subprocess each
            (``gym.vector.AsyncVectorEnv``) instead of in this process.
        context: the multiprocessing start method when ``asynchronous`` (e.g.
            ``"spawn"``); None for the platform's default.
        **env_kwargs: passed to ``gym.make(env_id, ...)`` for every sub-env.

    Example:
        >>> import gymnasium as gym, clenv
        >>> gym.register_envs(clenv)
        >>> envs = gym.make_vec("clenv/SlipperyAnt-v0", num_envs=2, switch_every=3)
        >>> _ = envs.reset(seed=0)
        >>> for _ in range(3):
        ...     infos = envs.step(envs.action_space.sample())[4]
        >>> infos["task_id"].tolist(), infos["task_switch"].tolist()
        ([1, 1], [True, True])
        >>> envs.close()
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        asynchronous: bool = False,
        context: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer):
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        check_range("num_envs", num_envs, 1)
        try:
            autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(
                f"autoreset_mode must be one of {[m.value for m in AutoresetMode]} or "
                f"a gym.vector.AutoresetMode, got {autoreset_mode!r}"
            ) from None
        check_flags(asynchronous=asynchronous)
        if context is not None and not asynchronous:
            raise ValueError(
                f"context={context!r} is a start method for sub-env processes; pass "
                "asynchronous=True with it, or leave context=None"
            )
        env_fns = [functools.partial(gym.make, env_id, **env_kwargs)] * int(num_envs)
        if asynchronous:
            self._envs: gym.vector.VectorEnv = gym.vector.AsyncVectorEnv(
                env_fns, context=context, autoreset_mode=autoreset_mode
            )
        else:
            self._envs = gym.vector.SyncVectorEnv(
                env_fns, autoreset_mode=autoreset_mode
            )
        try:
            schedules = self._envs.get_attr("schedule")
        except Exception:  # an env without the attribute
            schedules = (None,)
        if not all(isinstance(s, TaskSchedule) for s in schedules):
            self._envs.close()
            raise ValueError(
                f"{env_id} is not a clenv continual env (it has no task schedule); "
                "ContinualVectorEnv runs envs that follow clenv.protocol (ContinualEnv)"
            )
        self._clock = _Clock(copy.deepcopy(schedules[0]))  # sync: sub-env 0's own
        self._asynchronous = bool(asynchronous)
        self.env_id = env_id
        self.num_envs = int(num_envs)
        self.single_observation_space = self._envs.single_observation_space
        self.single_action_space = self._envs.single_action_space
        self.observation_space = self._envs.observation_space
        self.action_space = self._envs.action_space
        self.metadata = {**self._envs.metadata, "autoreset_mode": autoreset_mode}
        self.render_mode = self._envs.render_mode
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    # -- the Gymnasium API -----------------------------------------------------------
    @property
    def autoreset_mode(self) -> AutoresetMode:
        return self.metadata["autoreset_mode"]

    @property
    def envs(self) -> list[gym.Env]:
        """The sub-envs (only when they run in this process: not ``asynchronous``)."""
        if self._asynchronous:
            raise AttributeError(
                "the sub-envs of an asynchronous ContinualVectorEnv live in other "
                "processes; use call(), get_attr() or set_attr()"
            )
        return self._envs.envs

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the sub-envs; with a seed, the task sequence starts over at task 0.

        A seeded reset restarts every sub-env's schedule, so it must reset (and seed)
        all of them: a ``reset_mask`` or a seed list with ``None`` entries is refused
        with a seed.
        """
        seeds = list(seed) if isinstance(seed, Sequence) else None
        seeded = seed is not None and (
            seeds is None or any(s is not None for s in seeds)
        )
        if seeds is not None and seeded and any(s is None for s in seeds):
            raise ValueError(
                f"seed={seed!r} seeds some sub-envs only; a seed restarts the task "
                "sequence, which must restart for every sub-env: give every sub-env "
                "a seed, or none"
            )
        mask = None if options is None else options.get("reset_mask")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if seeded and not mask.all():
                raise ValueError(
                    "a seeded reset restarts the task sequence of every sub-env, so it "
                    "cannot have a reset_mask that leaves sub-envs out; reset all "
                    "sub-envs with the seed, or reset the masked ones without one"
                )
        obs, infos = self._envs.reset(seed=seed, options=options)
        started = np.ones(self.num_envs, bool) if mask is None else mask
        self._autoreset[started] = False
        clock_info: dict[str, Any] = {}
        if started.any():
            clock_info = self._clock._schedule_reset({}, 0 if seeded else None)
        self._align(infos, clock_info, check_all=mask is not None)
        return obs, infos

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, rewards, terminated, truncated, infos = self._envs.step(actions)
        ended = np.logical_or(terminated, truncated)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            acted, started = ~self._autoreset, self._autoreset.copy()
            self._autoreset = ended
        elif self.autoreset_mode == AutoresetMode.SAME_STEP:
            acted, started = np.ones(self.num_envs, bool), ended
        else:  # DISABLED: the user resets finished sub-envs with a reset_mask
            acted, started = np.ones(self.num_envs, bool), np.zeros(self.num_envs, bool)
        clock_info: dict[str, Any] = {}
        if acted.any():
            clock_info = self._clock._schedule_step({})
        if started.any():
            clock_info = self._clock._schedule_reset({}, None)
        self._align(infos, clock_info)
        return obs, rewards, terminated, truncated, infos

    def render(self) -> Any:
        return self._envs.render()

    def close_extras(self, **kwargs: Any) -> None:
        envs = getattr(self, "_envs", None)  # None: __init__ failed before building
        if envs is not None:
            envs.close(**kwargs)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` on every sub-env; ``set_task`` and ``set_schedule_state``
        go through the vector env's clock (:meth:`set_task`, ...)."""
        if name in _CLOCK_METHODS:
            getattr(self, name)(*args, **kwargs)
            return (None,) * self.num_envs
        return self._envs.call(name, *args, **kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self._envs.get_attr(name)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | object) -> None:
        if name == "schedule_state":  # through the clock, like set_schedule_state
            if not isinstance(values, list | tuple):
                self.set_schedule_state(values)  # one state for every sub-env
                return
            clock = {"pinned_task_id": None, "pinned_steps": 0, **values[0]}
            self.set_schedule_state({"clock": clock, "sub_envs": list(values)})
            return
        self._envs.set_attr(name, values)

    # -- the task protocol -----------------------------------------------------------
    @property
    def task_id(self) -> int:
        """The task every sub-env is in (the pinned one while pinned)."""
        return self._clock.task_id

    @property
    def num_tasks(self) -> int | None:
        """Length of the task sequence, or None when it is endless."""
        return self._clock.num_tasks

    @property
    def schedule(self) -> TaskSchedule:
        """The vector env's clock (a copy of the sub-envs' schedule)."""
        return self._clock.schedule

    def set_task(self, task_id: int | None) -> None:
        """Pin every sub-env to task ``task_id``; None unpins (``ContinualEnv.set_task``).

        While pinned the clock is frozen and ``task_step`` counts the vector steps
        since pinning; the next infos announce the change with ``task_switch``.
        """
        self._clock.set_task(task_id)  # checks task_id, before any sub-env changes
        self._envs.call("set_task", task_id)

    def get_schedule_state(self) -> dict[str, Any]:
        """The clock's state and every sub-env's (a supervised stream's position and
        generator included), for checkpoints: :meth:`set_schedule_state` restores it."""
        return {
            "clock": self._clock._clock_state(),
            "sub_envs": list(self._envs.call("get_schedule_state")),
        }

    def set_schedule_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_schedule_state`'s state, or give every sub-env one env's
        state (``env.get_schedule_state()``); the next step continues from it."""
        if not isinstance(state, dict):
            raise ValueError(
                "schedule state must be the dict that get_schedule_state() returned, "
                f"got {type(state).__name__} {state!r}"
            )
        if "sub_envs" not in state:  # one env's state, for every sub-env
            self._clock.set_schedule_state(state)
            self._envs.call("set_schedule_state", state)
            return
        clock, sub_states = state.get("clock"), state["sub_envs"]
        if not isinstance(clock, dict) or not isinstance(sub_states, list | tuple):
            raise ValueError(
                "schedule state of a vector env needs 'clock' (a dict) and 'sub_envs' "
                f"(a list of dicts), got clock={clock!r}, sub_envs={sub_states!r}; "
                "restore a state saved by a vector env's get_schedule_state"
            )
        sub_states = list(sub_states)
        for index, sub_state in enumerate(sub_states):
            if not isinstance(sub_state, dict) or "task_id" not in sub_state:
                raise ValueError(
                    f"schedule state sub_envs[{index}] must be a sub-env's state dict, "
                    f"got {sub_state!r}"
                )
        for key in ("task_id", "pinned_task_id", "pinned_steps"):
            if key not in clock:
                raise ValueError(f"schedule state clock is missing the key {key!r}")
        if len(sub_states) != self.num_envs:
            raise ValueError(
                f"schedule state sub_envs holds {len(sub_states)} sub-env states but "
                "this vector env "
                f"has num_envs={self.num_envs}; build it with the same num_envs"
            )
        for index, sub_state in enumerate(sub_states):
            task = (sub_state["task_id"], sub_state.get("pinned_task_id"))
            if task != (clock["task_id"], clock["pinned_task_id"]):
                raise ValueError(
                    f"sub-env {index}'s state is in task {task[0]} (pinned: {task[1]}) "
                    f"but the clock's is in task {clock['task_id']} (pinned: "
                    f"{clock['pinned_task_id']}): restore a state saved by a vector "
                    "env's get_schedule_state"
                )
        self._clock.set_schedule_state(clock)
        self._clock._pinned_steps = int(clock["pinned_steps"])
        self._envs.set_attr("schedule_state", sub_states)
        # A sub-env's own state holds no pinned_steps: the clock's sets them.
        self._envs.call("_follow_clock", self._clock._clock_state())

    # -- keeping the sub-envs on the clock -------------------------------------------
    def _align(
        self, infos: dict[str, Any], clock_info: dict[str, Any], check_all: bool = False
    ) -> None:
        """Move every sub-env whose clock differs to the vector env's; then write the
        clock's ``task_id``, ``task_step`` and ``task_switch`` for every sub-env."""
        if not clock_info:
            clock_info = self._clock._fill_info({})
        expected = (clock_info["task_id"], clock_info["task_step"])
        task_ids = _reported(infos, "task_id", self.num_envs)
        task_steps = _reported(infos, "task_step", self.num_envs)
        behind = [
            index
            for index in range(self.num_envs)
            if check_all or (task_ids[index], task_steps[index]) != expected
        ]
        if behind:
            clock = self._clock._clock_state()
            if self._asynchronous:  # one round trip; the others return None
                moved = list(self._envs.call("_follow_clock", clock))
            else:
                moved = [None] * self.num_envs
                for index in behind:
                    moved[index] = self.envs[index].unwrapped._follow_clock(clock)
            for index, info in enumerate(moved):
                if info is None:
                    continue
                if (info["task_id"], info["task_step"]) != expected:
                    raise RuntimeError(
                        f"sub-env {index} is in task {info['task_id']} at step "
                        f"{info['task_step']} after following the vector env's clock "
                        f"(task {expected[0]}, step {expected[1]}): its schedule "
                        "differs from the clock's"
                    )
                infos = self._add_info(infos, info, index)
            missing = [i for i in behind if task_ids[i] is None and moved[i] is None]
            if missing:  # a partial reset: the others' info is not in infos yet
                tasks = self._envs.get_attr("task")
                for index in missing:
                    infos = self._add_info(infos, {"task": tasks[index]}, index)
        for key in _UNIFORM_KEYS:
            value = clock_info[key]
            infos[key] = np.full(self.num_envs, value, dtype=type(value))
            infos[f"_{key}"] = np.ones(self.num_envs, dtype=bool)


def _reported(infos: dict[str, Any], key: str, num_envs: int) -> list[Any]:
    """``infos[key]`` per sub-env as Python values, None where not reported."""
    if key not in infos:
        return [None] * num_envs
    values, mask = infos[key], infos.get(f"_{key}")
    return [
        value.item() if mask is None or mask[index] else None
        for index, value in enumerate(values)
    ]
