"""Small models and a training step shared by the clenv.methods tests."""

from __future__ import annotations

import torch
from torch import nn


def mlp(widths=(6, 16, 16, 3), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(dtype)


def train_step(model, optimizer, method, x, y):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    method.after_backward()
    optimizer.step()
    method.after_step(x)
    return loss.item()


def batch(n=8, d=6, classes=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(
        classes, (n,), generator=g
    )


class Agent(nn.Module):
    """CleanRL-style PPO agent: separate critic and actor MLPs, no plain forward."""

    def __init__(self):
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
        self.actor_mean = nn.Sequential(
            nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, 2))


def agent_forward(agent, obs):
    return agent.actor_mean(obs), agent.critic(obs)
