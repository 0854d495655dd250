"""clenv in a CleanRL-style loop: vector envs, task switches, a plasticity method, metrics.

A compact actor-critic (one A2C-style update per rollout) in CleanRL's structure, to
show the four things a continual-RL script does with clenv:

1. read the task-switch keys from a Gymnasium *vector* env's ``infos`` (a dict of
   arrays with a ``_<key>`` mask, not a list of dicts);
2. drive a plasticity method from :mod:`clenv.methods` through its hooks;
3. log :mod:`clenv.metrics` representation metrics (effective rank, dead units);
4. compute the mean return per task from ``infos["episode"]`` (``RecordEpisodeStatistics``;
   Gymnasium 1.x has no ``final_info`` in the default autoreset mode).

    python docs/examples/cleanrl_style_loop.py --total-timesteps 4096 --switch-every 1024

For the full agent (PPO, checkpoints, curvature, HDF5 logs) see agents/ppo_l2er.py.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch import nn

import clenv
from clenv.methods import make_method
from clenv.metrics import capture_activations, representation_metrics
from clenv.protocol import task_ids, task_switches

gym.register_envs(clenv)


@dataclass
class Args:
    env_id: str = "clenv/SlipperyAnt-v0"
    """the clenv (or any continuous-action Gymnasium) environment id"""
    switch_every: int = 1024
    """steps per task (friction changes this often)"""
    seed: int = 1
    """seed of the run (also the env's task_seed)"""
    num_envs: int = 2
    """parallel sub-envs; they switch tasks in lockstep (same task_seed)"""
    num_steps: int = 256
    """steps per env per rollout"""
    total_timesteps: int = 4096
    """total env steps"""
    learning_rate: float = 1e-4
    """Adam learning rate"""
    gamma: float = 0.99
    """discount factor"""
    reg: str = "l2er"
    """plasticity method (clenv.methods.make_method name): bp, l2, l2er, cbp, ..."""


def make_env(env_id: str, switch_every: int, seed: int):
    def thunk():
        env = gym.make(env_id, switch_every=switch_every, task_seed=seed)
        return gym.wrappers.RecordEpisodeStatistics(env)

    return thunk


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.ReLU(),
            layer_init(nn.Linear(hidden, 1), std=1.0),
        )  # fmt: skip
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.ReLU(),
            layer_init(nn.Linear(hidden, act_dim), std=0.01),
        )  # fmt: skip
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        mean = self.actor_mean(x)
        probs = torch.distributions.Normal(
            mean, self.actor_logstd.expand_as(mean).exp()
        )
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), self.critic(x).squeeze(-1)


def actor_and_critic(agent: Agent, obs: torch.Tensor):
    """Runs every hidden layer: what methods and metrics call instead of forward()."""
    return agent.actor_mean(obs), agent.critic(obs)


def main(args: Args) -> dict:
    """Train; return the task switches seen and the mean return of each task."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    envs = gym.vector.SyncVectorEnv(
        [
            make_env(args.env_id, args.switch_every, args.seed)
            for _ in range(args.num_envs)
        ]
    )
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    agent = Agent(obs_dim, act_dim)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate)
    # The "ant" preset ascends the effective rank once per epoch on the rollout.
    method = make_method(
        args.reg, agent, optimizer, preset="ant", forward_fn=actor_and_critic
    )

    obs_buf = torch.zeros((args.num_steps, args.num_envs, obs_dim))
    actions_buf = torch.zeros((args.num_steps, args.num_envs, act_dim))
    rewards_buf = torch.zeros((args.num_steps, args.num_envs))
    dones_buf = torch.zeros((args.num_steps, args.num_envs))

    # to be filled in runtime
    switches: list[tuple[int, int, dict]] = []  # (global step, task id, task)
    returns_per_task: dict[int, list[float]] = {}
    global_step, start_time = 0, time.time()
    next_obs, infos = envs.reset(seed=args.seed)
    env_task = task_ids(infos)  # task of each sub-env
    task_id = int(env_task.max())
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
    next_done = torch.zeros(args.num_envs)
    num_iterations = args.total_timesteps // (args.num_steps * args.num_envs)

    for iteration in range(1, num_iterations + 1):
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs_buf[step], dones_buf[step] = next_obs, next_done
            with torch.no_grad():
                action, _, _ = agent.get_action_and_value(next_obs)
            actions_buf[step] = action
            next_obs, reward, terminated, truncated, infos = envs.step(action.numpy())
            rewards_buf[step] = torch.as_tensor(reward, dtype=torch.float32)
            next_done = torch.as_tensor(
                np.logical_or(terminated, truncated), dtype=torch.float32
            )
            next_obs = torch.as_tensor(next_obs, dtype=torch.float32)

            # (4) episode statistics, credited to the task the sub-env was in.
            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    ret = float(infos["episode"]["r"][i])
                    returns_per_task.setdefault(int(env_task[i]), []).append(ret)
            # (1) task switches: a vector env's infos hold arrays with a "_key" mask;
            # clenv.protocol.task_switches/task_ids read them (one entry per sub-env).
            # In Gymnasium's default NEXT_STEP autoreset mode a reset takes one vector
            # step, so a sub-env that ended more episodes reaches the switch a few
            # vector steps later: track the task per sub-env.
            switched = task_switches(infos, args.num_envs)
            env_task[switched] = task_ids(infos, args.num_envs)[switched]
            for i in np.flatnonzero(switched):
                if env_task[i] > task_id:  # the first sub-env to enter a new task
                    task_id = int(env_task[i])
                    task = {k: float(v[i]) for k, v in infos["task"].items()
                            if not k.startswith("_")}  # fmt: skip
                    switches.append((global_step, task_id, task))
                    print(f"global_step={global_step}: task {task_id} {task}")
                    method.on_task_switch(task_id)  # (2) e.g. a head reset runs here

        # One A2C-style update on the rollout (returns bootstrapped with the critic).
        with torch.no_grad():
            _, _, next_value = agent.get_action_and_value(next_obs)
        returns = torch.zeros_like(rewards_buf)
        running = next_value
        for t in reversed(range(args.num_steps)):
            not_done = 1.0 - (
                next_done if t == args.num_steps - 1 else dones_buf[t + 1]
            )
            running = rewards_buf[t] + args.gamma * running * not_done
            returns[t] = running
        b_obs = obs_buf.reshape(-1, obs_dim)
        _, logprob, value = agent.get_action_and_value(
            b_obs, actions_buf.reshape(-1, act_dim)
        )
        advantages = (returns.reshape(-1) - value).detach()
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        loss = (
            -(logprob * advantages).mean()
            + 0.5 * ((returns.reshape(-1) - value) ** 2).mean()
        )
        optimizer.zero_grad()
        loss.backward()
        method.after_backward()  # (2) L2 adds lambda * theta to the gradient
        optimizer.step()
        method.after_step(b_obs)
        method.after_epoch(b_obs)  # (2) ER ascent once per epoch on the rollout

        # (3) representation metrics of actor and critic hidden layers.
        acts = capture_activations(agent, b_obs, forward_fn=actor_and_critic)
        metrics = representation_metrics(acts)
        print(f"iter {iteration}: step {global_step} task {task_id} "
              f"dead {metrics['dead_units']:.0f} "
              f"erank {metrics['mean_effective_rank']:.1f} "
              f"SPS {int(global_step / (time.time() - start_time))}")  # fmt: skip
    envs.close()
    mean_returns = {t: float(np.mean(r)) for t, r in returns_per_task.items()}
    return {"switches": switches, "mean_return_per_task": mean_returns}


if __name__ == "__main__":
    main(tyro.cli(Args))
