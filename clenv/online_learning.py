"""Bookkeeping of an online learner on clenv's supervised streams.

A supervised clenv env (Permuted MNIST, Continual ImageNet, incremental CIFAR-100)
shows a batch, takes the learner's predictions as the action and answers with the
accuracy as the reward and the labels in ``info["label"]``. These pieces keep the
learner's side of that exchange:

- :class:`TaskStats`: what the learner accumulates within the current task (online
  accuracy, loss, env reward, best validation), checkpointed as a dict;
- :func:`step_through_group`: step the env through the next minibatches before
  training on them (SC's grouped effective-rank ascent on ImageNet and CIFAR).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clenv.evaluation import active_class_mask, masked_logits
from clenv.protocol import task_switches

__all__ = ["TaskStats", "step_through_group"]


@dataclass
class TaskStats:
    """What the learner accumulates within the current task (checkpointed)."""

    task_id: int = 0
    examples: int = 0
    correct: int = 0
    env_reward_sum: float = 0.0
    env_steps: int = 0
    loss_sum: float = 0.0
    window_examples: int = 0
    window_correct: int = 0
    epoch: int = 0
    best_validation: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None

    def record(self, examples: int, correct: int, loss_sum: float, reward: Any) -> None:
        """Counts one env step (the window of cl/online_accuracy included)."""
        self.examples += examples
        self.correct += correct
        self.loss_sum += loss_sum
        self.env_reward_sum += float(reward)
        self.env_steps += 1
        self.window_examples += examples
        self.window_correct += correct

    def summary(self) -> dict[str, float]:
        """The task's averages: online accuracy, env reward and training loss."""
        return {
            "cl/online_accuracy_per_task": self.correct / max(self.examples, 1),
            "cl/env_reward_per_task": self.env_reward_sum / max(self.env_steps, 1),
            "losses/train_loss_per_task": self.loss_sum / max(self.examples, 1),
        }

    def window_accuracy(self, every: int) -> float | None:
        """The online accuracy of the examples since the last window, once there are
        at least ``every`` of them (a new window starts), else None."""
        if self.window_examples < every:
            return None
        accuracy = self.window_correct / self.window_examples
        self.window_examples = self.window_correct = 0
        return accuracy

    def next_task(self, task_id: int, epoch: int) -> TaskStats:
        """Fresh statistics for the next task; the running-accuracy window spans task
        boundaries."""
        return TaskStats(task_id=task_id, epoch=epoch,
                         window_examples=self.window_examples,
                         window_correct=self.window_correct)  # fmt: skip

    def keep_if_best(self, validation_accuracy: float, model: nn.Module) -> None:
        """LoP's best-validation bookkeeping: a copy of the weights of the epoch with
        the best validation accuracy so far."""
        if validation_accuracy > self.best_validation:
            self.best_validation = validation_accuracy
            self.best_state = copy.deepcopy(model.state_dict())


@torch.no_grad()
def step_through_group(
    env: Any,
    model: nn.Module,
    obs: Any,
    info: dict[str, Any],
    size: int,
    num_classes: int,
    device: torch.device | str,
) -> tuple[list[tuple[torch.Tensor, dict[str, Any], Any, dict[str, Any]]], Any, Any]:
    """Step the env through the next ``size`` minibatches (at most to the end of the
    epoch or task), answered with the current weights in eval mode. Returns the steps
    ``(inputs, info before, reward, info after)`` and the env's latest ``obs, info``."""
    steps = []
    model.eval()
    while len(steps) < size:
        x = torch.as_tensor(obs, device=device)
        active = active_class_mask(info, num_classes, device)
        action = masked_logits(model(x), active).argmax(1).cpu().numpy()
        next_obs, reward, _, _, next_info = env.step(action)
        steps.append((x, info, reward, next_info))
        obs, info = next_obs, next_info
        if next_info["epoch"] != steps[0][1]["epoch"] or task_switches(next_info)[0]:
            break
    model.train()
    return steps, obs, info
