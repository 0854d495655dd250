"""Slippery Ant: MuJoCo Ant whose friction changes from task to task (LoP, SC)."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from gymnasium import utils

from clenv.envs.physics_drift import Drift, PhysicsDriftEnv
from clenv.protocol import SwitchAt


class SlipperyAntEnv(PhysicsDriftEnv):
    r"""MuJoCo Ant on a floor whose friction changes every `switch_every` steps.

    ## Description
    The continual-RL benchmark of Dohare et al., *Loss of plasticity in deep continual
    learning* (Nature 2024, "LoP"), as also run by Prakash et al., *Spectral Collapse
    Drives Loss of Plasticity in Deep Continual Learning* (ICML 2026, "SC"). The robot
    and the task are Gymnasium's `Ant-v5` (a quadruped rewarded for running in +x);
    at each task switch the **sliding friction of every geom**, the floor and all of the
    ant's geoms, is set to a new value drawn log-uniformly from [0.02, 2]. The value is
    written in place into the compiled MuJoCo model (`model.geom_friction[:, 0]`), so
    an episode running at the switch continues on the new surface. Low friction makes
    the gait learnt on a grippy floor useless: the agent must keep learning.

    Built on `clenv.envs.physics_drift.PhysicsDriftEnv` with
    `base_env_id="Ant-v5"` and `parameter="friction"`.

    ## Action Space
    `Box(-1, 1, (8,), float32)`: torques of the eight hinges, as `Ant-v5`. An action of
    the wrong shape or containing NaN/inf raises `ValueError`.

    ## Observation Space
    `Box(-inf, inf, (105,), float64)`, as `Ant-v5`: 13 joint positions (torso x, y
    excluded), 14 joint velocities and 78 clipped external contact forces (13 bodies x
    6). With `use_contact_forces=False` (SC, Brax's `ant`): `(27,)`, the positions and
    velocities only. The friction is **not** observed: the agent must infer the change
    from the dynamics.

    ## Rewards
    As `Ant-v5` (the terms LoP used): `reward = reward_forward + reward_survive +
    reward_ctrl + reward_contact` with `reward_forward` = torso x velocity,
    `reward_survive` = 1 while healthy, `reward_ctrl` = -0.5 ||a||^2,
    `reward_contact` = -5e-4 ||clip(cfrc_ext, -1, 1)||^2. The four terms are in `info`
    and add up to the reward. With `use_contact_forces=False` (SC, Brax's `ant`) there
    is no contact cost: three terms, no `reward_contact` key.

    ## Starting State
    As `Ant-v5`: the standing pose plus uniform noise of scale 0.1 on positions and
    Gaussian noise of scale 0.1 on velocities.

    ## Episode End
    Terminates when the torso height leaves [0.2, 1.0] (or the state is not finite);
    truncated after 1000 steps by the registered `TimeLimit`.

    ## Task Schedule
    - What changes: `model.geom_friction[:, 0]` (all 14 geoms), the same value for all;
      torsional and rolling friction (0.5, 0.5) unchanged.
    - Values: task *k* draws `exp(U(log 0.02, log 2))` from a generator seeded with
      `(task_seed, k)`; task 0 is drawn too (LoP also started from a drawn value).
    - When: `switch_at="step"` (default, SC) exactly every `switch_every` = 2,000,000
      steps, mid-episode; `switch_at="episode_end"` (LoP) at the first episode start
      after 2,000,000 steps in the task. LoP ran 20M steps (10 tasks), SC 10M (5).
    - `info`, at every reset and step: `task_id`, `task_switch`, `task_step`,
      `task = {"friction": f}` (the protocol keys, see docs/protocol.md) and
      `physics = {"friction": f}` (the value in the model now; it differs from `task`
      only during a gradual drift).
    - `drift="gradual"` slides the friction linearly from the previous task's value to
      the new one over `drift_steps` steps (not in the papers).

    ## Differences from Gymnasium's Ant-v5 (defaults)
    - The friction: Ant-v5 has 1.0 everywhere and never changes; here it is drawn per
      task. Everything else (model, dynamics, observation, reward, termination,
      reset noise) is Ant-v5 with its default arguments.
    - `info` carries the task-switch keys and `physics`.
    - Non-finite or wrongly shaped actions raise `ValueError` instead of reaching
      MuJoCo.

    ## Differences from LoP's SlipperyAnt-v3 (gym 0.23.1 Ant-v3, free-mujoco-py 2.1.6)
    - **105 vs 111 observation dims.** Ant-v3 also observed the world body's 6 contact
      forces, which are always 0; Ant-v5 drops them. No information is lost.
    - **Contact forces.** With mujoco-py >= 2.0, Ant-v3's `cfrc_ext` is reported to
      read all zeros (openai/gym#1541; Gymnasium's Ant docs), so in LoP's runs the 84
      contact inputs and the contact cost were most likely zero. Gymnasium v5 computes
      them (`mj_rnePostConstraint`), so here they are real. To mimic what LoP's agent
      saw, pass `include_cfrc_ext_in_observation=False, contact_cost_weight=0.0`
      (27 observation dims), or `use_contact_forces=False`.
    - **Healthy reward on the terminal step.** Ant-v3 paid `healthy_reward` on every
      step, including the one where the ant became unhealthy; Ant-v5 pays it only while
      healthy, so a terminated episode's last reward is 1.0 lower.
    - **How friction is changed.** LoP rewrote the XML default geom class
      (`friction="f 0.5 0.5"`, inherited by the floor and every ant geom) and rebuilt
      the env at each switch; here the same field is written into the compiled model,
      with the same physical effect and no rebuild. LoP's friction sequence came from a
      pre-generated file per seed; here from `(task_seed, k)`: same distribution,
      different numbers.
    - **Switch timing.** LoP switched at the first episode end after more than 2M steps
      since the previous switch (`switch_at="episode_end"` here, the same rule up to an
      off-by-one); clenv's default is SC's exact switch every 2M steps.
    - MuJoCo 2.1 (mujoco-py) vs the current `mujoco` bindings: contact solver details
      differ slightly, so returns are comparable, not bit-identical.

    ## Arguments
    | Parameter | Type | Default | Description |
    |---|---|---|---|
    | `switch_every` | **int** | `2_000_000` | steps per task (LoP and SC: 2M) |
    | `switch_at` | **str** | `"step"` | `"step"` (SC, mid-episode) or `"episode_end"` (LoP) |
    | `num_tasks` | **int \| None** | `None` | length of the task sequence (`None` = endless) |
    | `task_seed` | **int** | `0` | seed of the friction sequence (agents pass their run seed) |
    | `friction_range` | **tuple** | `(0.02, 2.0)` | log-uniform range of the sliding friction |
    | `drift` | **str** | `"abrupt"` | `"abrupt"` (papers) or `"gradual"` |
    | `drift_steps` | **int \| None** | `None` | steps of a gradual drift (`None` = `switch_every`) |
    | `forward_reward_weight` | **float** | `1.0` | Ant-v5 argument |
    | `ctrl_cost_weight` | **float** | `0.5` | Ant-v5 argument |
    | `use_contact_forces` | **bool** | `True` | `False`: no contact forces in the observation (27 dims) and no contact cost, as SC's Brax `ant` |
    | `contact_cost_weight` | **float \| None** | `None` | Ant-v5 argument; `None`: 5e-4 (0 without contact forces) |
    | `healthy_reward` | **float** | `1.0` | Ant-v5 argument |
    | `terminate_when_unhealthy` | **bool** | `True` | Ant-v5 argument |
    | `healthy_z_range` | **tuple** | `(0.2, 1.0)` | Ant-v5 argument |
    | `contact_force_range` | **tuple** | `(-1.0, 1.0)` | Ant-v5 argument |
    | `reset_noise_scale` | **float** | `0.1` | Ant-v5 argument |
    | `exclude_current_positions_from_observation` | **bool** | `True` | Ant-v5 argument |
    | `include_cfrc_ext_in_observation` | **bool \| None** | `None` | Ant-v5 argument; `None`: `use_contact_forces` |
    | `render_mode` | **str \| None** | `None` | as Ant-v5 (`"rgb_array"` needs `MUJOCO_GL=egl` or `osmesa` on a headless machine) |
    | `width`, `height` | **int** | `480` | rendered frame size, as Ant-v5 |

    ```python
    import gymnasium as gym
    import clenv

    gym.register_envs(clenv)
    env = gym.make("clenv/SlipperyAnt-v0")  # SC: switch every 2M steps
    lop = gym.make("clenv/SlipperyAnt-v0", switch_at="episode_end", task_seed=1)
    quick = gym.make("clenv/SlipperyAnt-v0", switch_every=1000)
    sc = gym.make("clenv/SlipperyAnt-v0", use_contact_forces=False)  # 27 dims
    ```

    ## Differences from SC's Brax `ant` (with `use_contact_forces=False`)
    SC ran Brax's `ant` with the positional backend (lop-jax `rlopt/envs/wrappers.py`).
    The observation (27 dims: `qpos[2:]`, `qvel`) and the reward terms (forward
    velocity of the torso, 1.0 healthy, -0.5 ||a||^2, no contact cost) match; the
    physics does not: Brax's positional (position-based dynamics) solver with its own
    `ant.xml`, `dt = 0.005` x 10 substeps (here MuJoCo, 0.01 x 5; both 0.05 per step)
    and actuator gear 200 (here 150); Brax pays the healthy reward on the terminal step
    too; its friction schedule switches from a pre-generated file. Returns are
    comparable in kind, not in value.

    ## Version History
    * v0: initial version (Gymnasium Ant-v5, LoP/SC friction schedule);
      `use_contact_forces` added (default `True`: unchanged).
    """

    _range_argument = "friction_range"

    def __init__(
        self,
        switch_every: int = 2_000_000,
        switch_at: SwitchAt = "step",
        num_tasks: int | None = None,
        task_seed: int = 0,
        friction_range: tuple[float, float] = (0.02, 2.0),
        drift: Drift = "abrupt",
        drift_steps: int | None = None,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.5,
        use_contact_forces: bool = True,
        contact_cost_weight: float | None = None,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool = True,
        include_cfrc_ext_in_observation: bool | None = None,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        _check_ant_arguments(
            flags=dict(
                use_contact_forces=use_contact_forces,
                terminate_when_unhealthy=terminate_when_unhealthy,
                exclude_current_positions_from_observation=(
                    exclude_current_positions_from_observation
                ),
                include_cfrc_ext_in_observation=include_cfrc_ext_in_observation,
            ),
            numbers=dict(
                forward_reward_weight=forward_reward_weight,
                ctrl_cost_weight=ctrl_cost_weight,
                contact_cost_weight=contact_cost_weight,
                healthy_reward=healthy_reward,
                reset_noise_scale=reset_noise_scale,
            ),
            ranges=dict(
                healthy_z_range=healthy_z_range,
                contact_force_range=contact_force_range,
            ),
        )
        if not use_contact_forces and (
            contact_cost_weight or include_cfrc_ext_in_observation
        ):
            raise ValueError(
                "use_contact_forces=False means no contact forces in the observation "
                "and no contact cost; leave contact_cost_weight and "
                "include_cfrc_ext_in_observation unset (or 0 / False), got "
                f"contact_cost_weight={contact_cost_weight}, "
                f"include_cfrc_ext_in_observation={include_cfrc_ext_in_observation}"
            )
        self._use_contact_forces = use_contact_forces
        if contact_cost_weight is None:
            contact_cost_weight = 5e-4 if use_contact_forces else 0.0
        if include_cfrc_ext_in_observation is None:
            include_cfrc_ext_in_observation = use_contact_forces
        ant_kwargs = dict(
            forward_reward_weight=float(forward_reward_weight),
            ctrl_cost_weight=float(ctrl_cost_weight),
            contact_cost_weight=float(contact_cost_weight),
            healthy_reward=float(healthy_reward),
            terminate_when_unhealthy=terminate_when_unhealthy,
            healthy_z_range=tuple(float(v) for v in healthy_z_range),
            contact_force_range=tuple(float(v) for v in contact_force_range),
            reset_noise_scale=float(reset_noise_scale),
            exclude_current_positions_from_observation=(
                exclude_current_positions_from_observation
            ),
            include_cfrc_ext_in_observation=include_cfrc_ext_in_observation,
            width=width,
            height=height,
        )
        schedule_kwargs = dict(
            switch_every=switch_every,
            switch_at=switch_at,
            num_tasks=num_tasks,
            task_seed=task_seed,
            drift=drift,
            drift_steps=drift_steps,
        )
        super().__init__(
            base_env_id="Ant-v5",
            base_env_kwargs=ant_kwargs,
            parameter="friction",
            value_range=friction_range,
            render_mode=render_mode,
            **schedule_kwargs,
        )
        # After the parent's call, so that unpickling rebuilds a SlipperyAntEnv.
        utils.EzPickle.__init__(
            self,
            friction_range=friction_range,
            render_mode=render_mode,
            use_contact_forces=use_contact_forces,
            **schedule_kwargs,
            **ant_kwargs,
        )

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if not self._use_contact_forces:
            # No contact term at all (Brax's ant), not a term that is always 0.
            del info["reward_contact"]
        return obs, reward, terminated, truncated, info


def _check_ant_arguments(
    flags: dict[str, object], numbers: dict[str, object], ranges: dict[str, object]
) -> None:
    """The Ant-v5 arguments passed through to Gymnasium, checked here: Gymnasium uses
    them as given, so a wrong type would fail later inside its reward code.

    ``flags`` must be booleans (``include_cfrc_ext_in_observation`` may be None),
    ``numbers`` finite real numbers (``contact_cost_weight`` may be None), ``ranges``
    pairs ``(low, high)`` of finite numbers with ``low <= high``.
    """

    def finite(value: object) -> bool:
        return (
            isinstance(value, Real)
            and not isinstance(value, bool | np.bool_)
            and math.isfinite(float(value))
        )

    for name, value in flags.items():
        optional = name == "include_cfrc_ext_in_observation"
        if not (isinstance(value, bool | np.bool_) or (optional and value is None)):
            allowed = "True, False or None" if optional else "True or False"
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
    for name, value in numbers.items():
        if value is None and name == "contact_cost_weight":
            continue
        if not finite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    for name, value in ranges.items():
        if (
            not isinstance(value, tuple | list | np.ndarray)
            or len(value) != 2
            or not all(finite(v) for v in value)
            or value[0] > value[1]
        ):
            raise ValueError(
                f"{name} must be a pair (low, high) of finite numbers with low <= high, "
                f"got {value!r}"
            )
