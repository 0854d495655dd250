"""Bookkeeping of an online learner on clenv's supervised streams.

A supervised clenv env (Permuted MNIST, Continual ImageNet, incremental CIFAR-100)
shows a batch, takes the learner's predictions as the action and answers with the
accuracy as the reward and the labels in ``info["label"]``. These pieces keep the
learner's side of that exchange:

- :class:`TaskStats`: what the learner accumulates within the current task (online
  accuracy, loss, env reward, best validation), checkpointed as a dict;
- :func:`step_through_group`: step the env through the next minibatches before
  training on them (SC's grouped effective-rank ascent on ImageNet and CIFAR);
- :func:`task_plasticity_report`: the ``plasticity/*`` metrics of a task's samples
  (representation, weights, the loss's gradient norm per layer, the weight change
  since the task's start), leaving the run untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clenv.evaluation import active_class_mask, masked_logits
from clenv.metrics import WeightChangeTracker, plasticity_report
from clenv.metrics.activations import preserved_training_state
from clenv.protocol import task_switches

__all__ = ["TaskStats", "step_through_group", "task_plasticity_report"]


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


def task_plasticity_report(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    layers: Sequence[str] | None = None,
    weight_change: WeightChangeTracker | None = None,
) -> dict[str, float]:
    """:func:`clenv.metrics.plasticity_report` of ``model`` on a task's samples with
    every opt-in metric: active-unit fraction and feature norm per layer, the norm
    per layer of the gradient of ``loss_fn`` (the training loss) on ``batch`` at the
    current weights, and ``weight_change``'s distance from the task's start.

    The gradient comes from one backward pass of its own: the parameters' ``.grad``,
    every buffer, train/eval flag and RNG stream are as before afterwards, so the run
    continues exactly as if nothing had been measured.

    Args:
        model: the network.
        loss_fn: ``loss_fn(model, (inputs, labels))``, the batch-mean training loss.
        batch: ``(inputs, labels)``, the task's samples.
        layers: the activations to rank (:func:`~clenv.metrics.capture_activations`;
            default every activation module).
        weight_change: the tracker reset at the task's start, or None.
    """
    params = list(model.parameters())
    saved = [param.grad for param in params]
    try:
        for param in params:
            param.grad = None
        with preserved_training_state(model, None), torch.enable_grad():
            loss_fn(model, batch).backward()
        return plasticity_report(
            {"": model}, batch[0], layers={"": layers}, active_units=True,
            feature_norms=True, gradient_norm=True, weight_change=weight_change,
        )  # fmt: skip
    finally:
        for param, grad in zip(params, saved, strict=True):
            param.grad = grad
