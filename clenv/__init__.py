"""clenv: continual-learning environments and plasticity tools.

``import clenv`` registers the ``clenv/*`` Gymnasium ids::

    import gymnasium as gym
    import clenv

    gym.register_envs(clenv)
    env = gym.make("clenv/SlipperyAnt-v0", switch_every=1000)
    envs = gym.make_vec("clenv/SlipperyAnt-v0", num_envs=4)  # sub-envs in lockstep

The metrics and methods live in :mod:`clenv.metrics` and :mod:`clenv.methods` (they
import torch, so they are not imported here).
"""

from __future__ import annotations

from clenv.protocol import ContinualEnv, TaskSchedule
from clenv.registration import ENV_IDS, register_all
from clenv.vector import ContinualVectorEnv

__version__ = "0.1.0"
__all__ = [
    "ENV_IDS",
    "ContinualEnv",
    "ContinualVectorEnv",
    "TaskSchedule",
    "__version__",
]

register_all()
