"""clenv from TorchRL: GymEnv on clenv/SlipperyAnt-v0, task switches read from info.

TorchRL's ``GymEnv`` wraps any Gymnasium id; ``import clenv`` registers ours. Its
stock ``default_info_dict_reader`` expects numpy values, while clenv's protocol puts
plain Python ints, bools and a small dict (``task``) in ``info``, so this example
reads them with a small ``BaseInfoDictReader``. Each task parameter (e.g. ``friction``)
becomes a ``task_<name>`` entry, so a rollout carries the whole schedule:

    python docs/examples/torchrl_slippery_ant.py --steps 600 --switch-every 200
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import GymEnv
from torchrl.envs.gym_like import BaseInfoDictReader

import clenv

gym.register_envs(clenv)


class TaskInfoReader(BaseInfoDictReader):
    """Copies clenv's task-switch keys from ``info`` into the TensorDict.

    Args:
        task_keys: names of the task parameters (``info["task"]`` keys) to copy, as
            float64 entries ``task_<name>``.
    """

    def __init__(self, task_keys: tuple[str, ...] = ("friction",)) -> None:
        self.task_keys = task_keys
        self._spec = Composite(
            task_id=Unbounded((), dtype=torch.int64),
            task_step=Unbounded((), dtype=torch.int64),
            task_switch=Unbounded((), dtype=torch.bool),
            **{f"task_{k}": Unbounded((), dtype=torch.float64) for k in task_keys},
            shape=(),
        )

    def __call__(self, info: dict, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set("task_id", torch.tensor(info["task_id"], dtype=torch.int64))
        tensordict.set("task_step", torch.tensor(info["task_step"], dtype=torch.int64))
        tensordict.set("task_switch", torch.tensor(bool(info["task_switch"])))
        for key in self.task_keys:
            value = torch.tensor(float(info["task"][key]), dtype=torch.float64)
            tensordict.set(f"task_{key}", value)
        return tensordict

    @property
    def info_spec(self) -> Composite:
        return self._spec


def make_env(switch_every: int, seed: int) -> GymEnv:
    """A TorchRL env of clenv/SlipperyAnt-v0 whose rollouts carry the task keys."""
    env = GymEnv("clenv/SlipperyAnt-v0", switch_every=switch_every)
    env.set_info_dict_reader(TaskInfoReader())
    env.set_seed(seed)
    return env


def main(steps: int = 600, switch_every: int = 200, seed: int = 0) -> TensorDictBase:
    """Roll out a random policy and print where the friction changed."""
    env = make_env(switch_every, seed)
    rollout = env.rollout(steps, break_when_any_done=False)
    switches = rollout["next", "task_switch"].nonzero().flatten()
    for index in switches.tolist():
        task = rollout["next", "task_id"][index].item()
        friction = rollout["next", "task_friction"][index].item()
        print(f"step {index + 1}: task {task} begins, friction {friction:.3f}")
    env.close()
    return rollout


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--switch-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    main(cli.steps, cli.switch_every, cli.seed)
