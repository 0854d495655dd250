"""Registers every clenv environment id with Gymnasium (run on ``import clenv``).

Each id also gets a ``vector_entry_point``: ``gym.make_vec(id, num_envs=N)`` builds a
:class:`clenv.vector.ContinualVectorEnv`, whose sub-envs share one task clock.
"""

from __future__ import annotations

import functools

from gymnasium.envs.registration import register, registry

from clenv.vector import ContinualVectorEnv

# -- continual RL: MuJoCo with drifting physics --------------------------------------
MUJOCO_ENVS: dict[str, dict] = {
    "clenv/SlipperyAnt-v0": dict(
        entry_point="clenv.envs.slippery_ant:SlipperyAntEnv", max_episode_steps=1000
    ),
    "clenv/SlipperyHalfCheetah-v0": dict(
        entry_point="clenv.envs.physics_drift:PhysicsDriftEnv",
        max_episode_steps=1000,
        kwargs={"base_env_id": "HalfCheetah-v5", "parameter": "friction"},
    ),
    "clenv/SlipperyHopper-v0": dict(
        entry_point="clenv.envs.physics_drift:PhysicsDriftEnv",
        max_episode_steps=1000,
        kwargs={"base_env_id": "Hopper-v5", "parameter": "friction"},
    ),
    "clenv/SlipperyWalker2d-v0": dict(
        entry_point="clenv.envs.physics_drift:PhysicsDriftEnv",
        max_episode_steps=1000,
        kwargs={"base_env_id": "Walker2d-v5", "parameter": "friction"},
    ),
    "clenv/GravityDriftHalfCheetah-v0": dict(
        entry_point="clenv.envs.physics_drift:PhysicsDriftEnv",
        max_episode_steps=1000,
        kwargs={
            "base_env_id": "HalfCheetah-v5",
            "parameter": "gravity",
            "drift": "gradual",
        },
    ),
}

# -- continual supervised streams ----------------------------------------------------
SUPERVISED_ENVS: dict[str, dict] = {
    "clenv/PermutedMNIST-v0": dict(
        entry_point="clenv.envs.permuted_mnist:PermutedMNISTEnv"
    ),
    "clenv/ContinualImageNet-v0": dict(
        entry_point="clenv.envs.continual_imagenet:ContinualImageNetEnv"
    ),
    "clenv/IncrementalCIFAR100-v0": dict(
        entry_point="clenv.envs.incremental_cifar:IncrementalCIFAR100Env"
    ),
}

ENV_IDS = (*MUJOCO_ENVS, *SUPERVISED_ENVS)


def register_all() -> None:
    for env_id, spec in {**MUJOCO_ENVS, **SUPERVISED_ENVS}.items():
        if env_id not in registry:
            register(
                id=env_id,
                vector_entry_point=functools.partial(ContinualVectorEnv, env_id),
                **spec,
            )
