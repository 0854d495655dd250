"""The physical parameters :class:`~clenv.envs.physics_drift.PhysicsDriftEnv` can drift.

Each parameter knows its default range, how tasks sample it, and how to write a value
into a compiled ``mujoco.MjModel`` *in place* (no recompilation, so a running episode
simply continues under the new physics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np


@dataclass(frozen=True)
class PhysicalParameter:
    """How one physical parameter is named, sampled and written into a MuJoCo model.

    Attributes:
        name: the ``parameter=`` argument of ``PhysicsDriftEnv``.
        task_key: its key in ``info["task"]`` and ``info["physics"]``.
        default_range: ``(low, high)`` the task values are drawn from by default.
        log_uniform: draw ``exp(U(log low, log high))`` instead of ``U(low, high)``.
        description: one line for error messages and docs.
    """

    name: str
    task_key: str
    default_range: tuple[float, float]
    log_uniform: bool
    description: str

    def sample(self, rng: np.random.Generator, low: float, high: float) -> float:
        """One task value drawn from ``rng``."""
        if self.log_uniform:
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return float(rng.uniform(low, high))

    def bind(self, model: mujoco.MjModel) -> ModelWriter:
        """A writer for ``model`` that remembers the model's original values."""
        return _WRITERS[self.name](model)


PARAMETERS: dict[str, PhysicalParameter] = {
    p.name: p
    for p in (
        PhysicalParameter(
            "friction",
            "friction",
            (0.02, 2.0),
            True,
            "sliding friction coefficient of every geom (absolute value)",
        ),
        PhysicalParameter(
            "gravity",
            "gravity",
            (-15.0, -5.0),
            False,
            "z component of gravity in m/s^2 (Earth: -9.81)",
        ),
        PhysicalParameter(
            "body_mass",
            "body_mass_scale",
            (0.5, 2.0),
            True,
            "scale of every body's mass and rotational inertia (1 = original)",
        ),
        PhysicalParameter(
            "actuator_gear",
            "actuator_gear_scale",
            (0.5, 2.0),
            True,
            "scale of every actuator's gear, i.e. its torque per unit of action "
            "(1 = original)",
        ),
    )
}


class ModelWriter:
    """Writes one parameter's value into a model; ``write`` is called per switch."""

    def __init__(self, model: mujoco.MjModel) -> None:
        self.model = model

    def write(self, value: float) -> None:
        raise NotImplementedError


class _FrictionWriter(ModelWriter):
    def write(self, value: float) -> None:
        # Column 0 is sliding friction; torsional and rolling (columns 1, 2) stay. With
        # every geom equal, every contact gets this value (MuJoCo takes the pair's max).
        self.model.geom_friction[:, 0] = value


class _GravityWriter(ModelWriter):
    def write(self, value: float) -> None:
        self.model.opt.gravity[2] = value


class _ScaleWriter(ModelWriter):
    """Scales model arrays relative to their original values, then ``mj_setConst``."""

    fields: tuple[str, ...] = ()

    def __init__(self, model: mujoco.MjModel) -> None:
        super().__init__(model)
        self._original = {f: getattr(model, f).copy() for f in self.fields}
        # mj_setConst uses its MjData as scratch space (it overwrites qpos to qpos0);
        # a private one keeps the running episode's state untouched.
        self._scratch = mujoco.MjData(model)

    def write(self, value: float) -> None:
        for field, original in self._original.items():
            np.multiply(original, value, out=getattr(self.model, field))
        # Derived constants (subtree masses, inverse weights used by the constraint
        # solver, actuator moment arms at qpos0) must follow the new values.
        mujoco.mj_setConst(self.model, self._scratch)


class _BodyMassWriter(_ScaleWriter):
    # Scaling the inertia with the mass keeps each body's shape (its density changes).
    fields = ("body_mass", "body_inertia")


class _ActuatorGearWriter(_ScaleWriter):
    fields = ("actuator_gear",)


_WRITERS: dict[str, type[ModelWriter]] = {
    "friction": _FrictionWriter,
    "gravity": _GravityWriter,
    "body_mass": _BodyMassWriter,
    "actuator_gear": _ActuatorGearWriter,
}
