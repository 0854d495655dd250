"""clenv from Stable-Baselines3: PPO on clenv/SlipperyAnt-v0, task switches from info.

SB3 needs nothing special: ``gym.make`` the clenv id and hand it to ``PPO``. A
callback reads the protocol keys that every clenv env puts in ``info`` (``task_id``,
``task_switch``, ``task``) and logs each switch, e.g. to reset something or to compute
per-task returns:

    python docs/examples/sb3_ppo_slippery_ant.py --total-timesteps 4096 --switch-every 1000

One subtlety: SB3's vector env resets a finished episode inside ``step`` and keeps
that reset's ``info`` in ``reset_infos``; with ``switch_at="episode_end"`` the switch is
announced there. Comparing ``task_id`` with the last one seen catches both modes.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

import clenv

gym.register_envs(clenv)


class TaskSwitchCallback(BaseCallback):
    """Records every task switch of every sub-env and logs the task to SB3's logger."""

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.switches: list[dict] = []  # {"timestep", "env", "task_id", "task"}
        self._last_task: dict[int, int] = {}

    def _on_step(self) -> bool:
        for env_index, info in enumerate(self.locals["infos"]):
            task_id = info["task_id"]
            previous = self._last_task.get(env_index, task_id)
            if info["task_switch"] or task_id != previous:
                event = {"timestep": self.num_timesteps, "env": env_index,
                         "task_id": task_id, "task": dict(info["task"])}  # fmt: skip
                self.switches.append(event)
                if self.verbose:
                    print(f"step {self.num_timesteps}: env {env_index} -> task "
                          f"{task_id} {info['task']}")  # fmt: skip
            self._last_task[env_index] = task_id
            self.logger.record("cl/task_id", task_id)
            for name, value in info["task"].items():
                self.logger.record(f"cl/{name}", value)
        return True


def main(
    total_timesteps: int = 4096,
    switch_every: int = 1000,
    seed: int = 0,
    n_steps: int = 1024,
) -> tuple[PPO, TaskSwitchCallback]:
    """Train SB3 PPO on Slippery Ant for a few thousand steps; return model and switches."""
    env = make_vec_env(
        "clenv/SlipperyAnt-v0",
        n_envs=1,
        seed=seed,
        env_kwargs={"switch_every": switch_every, "task_seed": seed},
    )
    model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=256, n_epochs=2,
                learning_rate=1e-4, seed=seed, device="cpu", verbose=0)  # fmt: skip
    callback = TaskSwitchCallback(verbose=1)
    model.learn(total_timesteps=total_timesteps, callback=callback)
    env.close()
    return model, callback


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-timesteps", type=int, default=4096)
    parser.add_argument("--switch-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    main(cli.total_timesteps, cli.switch_every, cli.seed)
