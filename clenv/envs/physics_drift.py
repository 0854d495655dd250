"""Any Gymnasium MuJoCo environment, non-stationary in one physical parameter."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import gymnasium as gym

try:
    import mujoco
except AttributeError as error:  # PyOpenGL found no OSMesa library
    raise ImportError(
        f"import mujoco failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: the "
        "OSMesa library is not installed (Debian: apt install libosmesa6); or set "
        "MUJOCO_GL=egl, or unset it when nothing is rendered"
    ) from error
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv

from clenv.envs._mujoco_params import PARAMETERS, PhysicalParameter
from clenv.protocol import ContinualEnv, SwitchAt, TaskSchedule

DRIFT_CHOICES = ("abrupt", "gradual")
Drift = Literal["abrupt", "gradual"]


class PhysicsDriftEnv(ContinualEnv, gym.Env, utils.EzPickle):
    r"""A Gymnasium MuJoCo env whose physics changes from task to task.

    ## Description
    Wraps any Gymnasium MuJoCo environment (`HalfCheetah-v5`, `Hopper-v5`, `Ant-v5`,
    ... or a `MujocoEnv` instance) and makes it non-stationary in one physical
    parameter, following clenv's task-switch protocol (docs/protocol.md). Each task
    draws a new value of the parameter; the value is written *in place* into the
    compiled MuJoCo model (no rebuild), so an episode that is running when the task
    changes simply continues under the new physics. Dynamics, observations, rewards
    and episode ends are otherwise the base env's, unchanged.

    | `parameter` | what a task sets | default range | sampling | `info` key |
    |---|---|---|---|---|
    | `"friction"` | sliding friction of **every** geom, floor included (absolute value; torsional and rolling friction unchanged) | [0.02, 2] | log-uniform | `friction` |
    | `"gravity"` | z component of gravity, m/s² (Earth −9.81) | [−15, −5] | uniform | `gravity` |
    | `"body_mass"` | scale of every body's mass and rotational inertia, relative to the original model | [0.5, 2] | log-uniform | `body_mass_scale` |
    | `"actuator_gear"` | scale of every actuator's gear (torque per unit action), relative to the original | [0.5, 2] | log-uniform | `actuator_gear_scale` |

    Friction: every geom gets the same value, so every contact has that friction
    (MuJoCo uses the larger of the two geoms'), whatever the base model's per-geom
    values were (e.g. Hopper's feet have 2.0 and its floor 1.0). Mass and gear changes
    are followed by `mujoco.mj_setConst` (on a private scratch `MjData`, so the running
    state is untouched) to keep the model's derived constants consistent.

    ## Action Space
    The base env's. An action of the wrong shape, or containing NaN or ±inf, raises
    `ValueError` before it reaches MuJoCo.

    ## Observation Space
    The base env's.

    ## Rewards
    The base env's; its `reward_*` terms in `info` still add up to the reward.

    ## Starting State
    The base env's (its reset noise is drawn from the base env's generator, seeded by
    `reset(seed=...)`).

    ## Episode End
    The base env's termination; truncation by the `TimeLimit` of the registered id
    (1000 steps for every `clenv/` MuJoCo id).

    ## Task Schedule
    - Task *k* draws its value from a generator seeded with `(task_seed, k)`: the
      sequence depends on `task_seed` only.
    - `switch_at="step"` (default): the task changes exactly every `switch_every` steps,
      mid-episode if need be (SC). `"episode_end"`: at the first episode start after
      `switch_every` steps (LoP).
    - `drift="abrupt"` (default): the new value holds from the first step of the new
      task. `drift="gradual"`: over the first `drift_steps` steps of task *k* the
      physical value moves linearly from task *k−1*'s value to task *k*'s (task 0
      starts at its own value); after `t` steps of the task it is
      `v[k-1] + min(t / drift_steps, 1) * (v[k] - v[k-1])`.
    - `info` at every reset and step: the protocol keys `task_id`, `task_switch`,
      `task_step`, `task` (`task` holds the task's *target* value, e.g.
      `{"friction": 0.13}`) and `physics`: the value the MuJoCo model holds *now*,
      i.e. for the next action (equal to `task` under abrupt drift, interpolated under
      gradual drift).
    - `set_task(k)` pins task *k* at its target value (no drift) for evaluation.
    - The current value is always readable from the model, e.g.
      `env.unwrapped.model.geom_friction[:, 0]` or `env.unwrapped.model.opt.gravity`.

    ## Arguments
    | Parameter | Type | Default | Description |
    |---|---|---|---|
    | `base_env_id` | **str \| None** | `"HalfCheetah-v5"` | id of the Gymnasium MuJoCo env to wrap (ignored when `base_env` is given) |
    | `base_env_kwargs` | **dict \| None** | `None` | keyword arguments for `gym.make(base_env_id, ...)` |
    | `base_env` | **MujocoEnv \| None** | `None` | an already built MuJoCo env to wrap instead (it is used, not copied) |
    | `parameter` | **str** | `"friction"` | `"friction"`, `"gravity"`, `"body_mass"` or `"actuator_gear"` |
    | `value_range` | **tuple \| None** | `None` | `(low, high)` of the task values; `None` = the parameter's default (table above) |
    | `drift` | **str** | `"abrupt"` | `"abrupt"` or `"gradual"` |
    | `drift_steps` | **int \| None** | `None` | steps of a gradual drift, 1..`switch_every`; `None` = `switch_every` (the value never stops moving) |
    | `switch_every` | **int** | `2_000_000` | steps per task |
    | `switch_at` | **str** | `"step"` | `"step"` (SC) or `"episode_end"` (LoP) |
    | `num_tasks` | **int \| None** | `None` | length of the task sequence (`None` = endless) |
    | `task_seed` | **int** | `0` | seed of the task sequence |
    | `render_mode` | **str \| None** | `None` | passed to the base env |

    ```python
    import gymnasium as gym
    import clenv
    from clenv.envs.physics_drift import PhysicsDriftEnv

    gym.register_envs(clenv)
    env = gym.make("clenv/SlipperyHopper-v0", switch_every=100_000)
    heavy = PhysicsDriftEnv(  # built directly: no TimeLimit unless you add one
        base_env_id="HalfCheetah-v5",
        parameter="body_mass",
        value_range=(0.7, 1.4),
        drift="gradual",
        drift_steps=10_000,
    )
    ```

    ## Version History
    * v0: initial version (Gymnasium MuJoCo v5 base envs).
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}
    # The argument that sets the range, as error messages name it (subclasses rename).
    _range_argument = "value_range"

    def __init__(
        self,
        base_env_id: str | None = "HalfCheetah-v5",
        base_env_kwargs: dict[str, Any] | None = None,
        base_env: MujocoEnv | None = None,
        parameter: str = "friction",
        value_range: tuple[float, float] | None = None,
        drift: Drift = "abrupt",
        drift_steps: int | None = None,
        switch_every: int = 2_000_000,
        switch_at: SwitchAt = "step",
        num_tasks: int | None = None,
        task_seed: int = 0,
        render_mode: str | None = None,
    ) -> None:
        utils.EzPickle.__init__(
            self,
            base_env_id,
            base_env_kwargs,
            base_env,
            parameter,
            value_range,
            drift,
            drift_steps,
            switch_every,
            switch_at,
            num_tasks,
            task_seed,
            render_mode,
        )
        # Validate the schedule before building MuJoCo (cheap errors first).
        TaskSchedule(switch_every, switch_at, num_tasks, task_seed)
        if parameter not in PARAMETERS:
            raise ValueError(
                f"parameter must be one of {tuple(PARAMETERS)}, got {parameter!r}"
            )
        self._parameter = PARAMETERS[parameter]
        self._value_range = _check_value_range(
            value_range, self._parameter, self._range_argument
        )
        if drift not in DRIFT_CHOICES:
            raise ValueError(
                f"drift must be one of {DRIFT_CHOICES}, got {drift!r}: 'abrupt' sets the "
                "new value at the switch, 'gradual' moves to it linearly over "
                "drift_steps steps"
            )
        if drift == "abrupt" and drift_steps is not None:
            raise ValueError(
                f"drift_steps={drift_steps!r} only applies to drift='gradual'; pass "
                "drift='gradual' or leave drift_steps=None"
            )
        self._drift = drift
        self._drift_steps = _check_drift_steps(drift_steps, switch_every)

        self._mujoco_env = _build_base_env(
            base_env_id, base_env_kwargs, base_env, render_mode
        )
        self.render_mode = self._mujoco_env.render_mode
        self.metadata = self._mujoco_env.metadata
        self.observation_space = self._mujoco_env.observation_space
        self.action_space = self._mujoco_env.action_space
        self._action_shape = self.action_space.shape
        self._task_key = self._parameter.task_key
        self._writer = self._parameter.bind(self._mujoco_env.model)
        self._value_now = float("nan")
        self._drift_from = self._drift_to = float("nan")
        self._drifting = False
        self._init_schedule(switch_every, switch_at, num_tasks, task_seed)

    # -- what the base env is ---------------------------------------------------------
    @property
    def base_env(self) -> MujocoEnv:
        """The wrapped Gymnasium MuJoCo env (its physics is what drifts)."""
        return self._mujoco_env

    @property
    def model(self):
        """The live ``mujoco.MjModel`` (e.g. ``model.geom_friction[:, 0]``)."""
        return self._mujoco_env.model

    @property
    def data(self):
        """The live ``mujoco.MjData``."""
        return self._mujoco_env.data

    @property
    def dt(self) -> float:
        """Seconds of simulated time per env step."""
        return self._mujoco_env.dt

    @property
    def parameter(self) -> str:
        """The drifting parameter (``"friction"``, ``"gravity"``, ...)."""
        return self._parameter.name

    @property
    def physics(self) -> dict[str, float]:
        """The parameter's value in the model now, e.g. ``{"friction": 0.13}``."""
        return {self._task_key: self._value_now}

    # -- gymnasium API ----------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # The schedule first: a switch due at this episode start (switch_at=
        # "episode_end") or a seeded restart sets the physics the episode starts in.
        schedule_info = self._schedule_reset({}, seed)
        obs, info = self._mujoco_env.reset(seed=seed, options=options)
        info.update(schedule_info)
        info["physics"] = {self._task_key: self._value_now}
        return obs, info

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action)
        if action.shape != self._action_shape:
            raise ValueError(
                f"action must have shape {self._action_shape} (the action space is "
                f"{self.action_space}), got shape {action.shape}"
            )
        try:
            # The sum is finite only if every entry is (NaN and inf propagate); over
            # Python floats it costs a fraction of np.isfinite().all(), which settles
            # the rare overflow case exactly. (MuJoCo actions are 1-D.)
            finite = math.isfinite(sum(action.tolist())) or np.isfinite(action).all()
        except TypeError:
            raise ValueError(
                f"action must be an array of numbers, got dtype {action.dtype}"
            ) from None
        if not finite:
            raise ValueError(
                f"action contains NaN or inf: {action}; check the policy's outputs "
                "(e.g. a diverged network or a log-std overflow)"
            )
        obs, reward, terminated, truncated, info = self._mujoco_env.step(action)
        self._schedule_step(info)
        if self._drifting:
            self._advance_drift()
        info["physics"] = {self._task_key: self._value_now}
        return obs, reward, terminated, truncated, info

    def render(self):
        try:
            return self._mujoco_env.render()
        except mujoco.FatalError as error:
            backend = os.environ.get("MUJOCO_GL")
            raise RuntimeError(
                f"MuJoCo could not render with MUJOCO_GL={backend!r}: {error}. On a "
                "machine without a display, set MUJOCO_GL=egl (or osmesa) before "
                "Python starts"
            ) from None

    def close(self) -> None:
        self._mujoco_env.close()

    # -- tasks ------------------------------------------------------------------------
    def _make_task(self, task_id: int, rng: np.random.Generator) -> dict[str, Any]:
        return {self._task_key: self._parameter.sample(rng, *self._value_range)}

    def _apply_task(self, task: dict[str, Any]) -> None:
        target = task[self._task_key]
        scheduled_task_id = self._schedule.task_id
        self._drifting = (
            self._drift == "gradual"
            and self._pinned_task_id is None
            and scheduled_task_id > 0
        )
        if self._drifting:
            previous = self._task_params(scheduled_task_id - 1)[self._task_key]
            self._drift_from, self._drift_to = previous, target
            # Computed from the schedule's clock, so a restored schedule state (or an
            # unpinned task) lands on the same point of the drift.
            self._advance_drift()
        else:
            self._set_value(target)

    def _clock_moved(self) -> None:
        # A lockstep vector env moved the clock (clenv.vector): catch up the drift.
        if self._drifting:
            self._advance_drift()

    def _follow_clock(self, clock: dict[str, Any]) -> dict[str, Any] | None:
        info = super()._follow_clock(clock)
        if info is not None:
            info["physics"] = {self._task_key: self._value_now}
        return info

    def _advance_drift(self) -> None:
        fraction = self._schedule.task_step / self._drift_steps
        if fraction >= 1.0:
            self._drifting = False
            self._set_value(self._drift_to)
        else:
            self._set_value(
                self._drift_from + fraction * (self._drift_to - self._drift_from)
            )

    def _set_value(self, value: float) -> None:
        if value != self._value_now:
            self._writer.write(value)
            self._value_now = value


def _check_value_range(
    value_range: tuple[float, float] | None,
    parameter: PhysicalParameter,
    argument: str,
) -> tuple[float, float]:
    if value_range is None:
        return parameter.default_range
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"{argument} must be a pair (low, high) of numbers for {parameter.name} "
            f"({parameter.description}), got {value_range!r}"
        ) from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{argument} must be finite, got {value_range!r}")
    if low > high:
        raise ValueError(
            f"{argument} must satisfy low <= high, got {value_range!r}; "
            f"did you mean {(high, low)!r}?"
        )
    if parameter.log_uniform and low <= 0:
        raise ValueError(
            f"{parameter.name} values are drawn log-uniformly, so {argument} must be "
            f"positive (0 < low <= high), got {value_range!r}"
        )
    return low, high


def _check_drift_steps(drift_steps: int | None, switch_every: int) -> int:
    if drift_steps is None:
        return int(switch_every)
    if (
        isinstance(drift_steps, bool)
        or not isinstance(drift_steps, int | np.integer)
        or not 1 <= drift_steps <= switch_every
    ):
        raise ValueError(
            f"drift_steps must be an int in [1, switch_every={switch_every}] (a drift "
            f"must end before the next task begins), got {drift_steps!r}"
        )
    return int(drift_steps)


def _build_base_env(
    base_env_id: str | None,
    base_env_kwargs: dict[str, Any] | None,
    base_env: MujocoEnv | None,
    render_mode: str | None,
) -> MujocoEnv:
    if base_env is not None:
        env = base_env.unwrapped
        if render_mode is not None and render_mode != env.render_mode:
            raise ValueError(
                f"render_mode={render_mode!r} cannot be changed on a given base_env "
                f"(it has {env.render_mode!r}); build the base env with it instead"
            )
    elif base_env_id is None:
        raise ValueError(
            "give the env to wrap: base_env_id (e.g. 'Ant-v5') or base_env (an instance)"
        )
    else:
        kwargs = dict(base_env_kwargs or {})
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        try:
            env = gym.make(base_env_id, disable_env_checker=True, **kwargs).unwrapped
        except gym.error.Error as error:
            raise ValueError(
                f"cannot build base_env_id={base_env_id!r}: {error}; use a Gymnasium "
                "MuJoCo id such as 'HalfCheetah-v5', 'Hopper-v5' or 'Ant-v5'"
            ) from None
        except TypeError as error:
            raise ValueError(
                f"base_env_kwargs {base_env_kwargs!r} not accepted by {base_env_id!r}: "
                f"{error}"
            ) from None
    if not isinstance(env, MujocoEnv):
        raise ValueError(
            f"the base env must be a Gymnasium MuJoCo env (a MujocoEnv), got "
            f"{type(env).__name__}"
        )
    return env
