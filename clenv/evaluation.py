"""Held-out evaluation of a classifier on clenv's supervised streams.

A supervised clenv env (Permuted MNIST, Continual ImageNet, incremental CIFAR-100)
serves any task's held-out examples through ``env.unwrapped.task_data`` and, where
only some classes are live (incremental CIFAR), names them in
``info["active_classes"]``. These functions turn both into tensors and score a model
on them, for any training loop:

    active = active_class_mask(info, num_classes, device)
    inputs, labels = task_tensors(env.unwrapped, task_id, "test", device=device)
    test_accuracy = accuracy(model, inputs, labels, active)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from clenv.checks import check_range


def masked_logits(logits: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """``logits`` with the classes outside the boolean mask ``active`` set to -inf.

    ``active=None`` (every class live) returns ``logits`` unchanged.
    """
    if active is None:
        return logits
    return logits.masked_fill(~active, float("-inf"))


def active_class_mask(
    info: dict[str, Any], num_classes: int, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """The classes in ``info["active_classes"]`` as a boolean mask over the logits.

    None where ``info`` has no ``active_classes`` (every class is live).
    """
    if "active_classes" not in info:
        return None
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[torch.as_tensor(info["active_classes"], device=device)] = True
    return mask


@torch.no_grad()
def accuracy(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    active: torch.Tensor | None = None,
    chunk: int = 1000,
) -> float:
    """Share of ``labels`` the model's argmax over the ``active`` classes gets right.

    Computed in eval mode (BatchNorm's running statistics, no dropout), ``chunk``
    examples per forward pass; the model's train/eval flag is restored afterwards.
    No examples give 0.0.
    """
    check_range("chunk", chunk, 1)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), chunk):
        logits = masked_logits(model(inputs[start : start + chunk]), active)
        correct += int((logits.argmax(1) == labels[start : start + chunk]).sum())
    model.train(was_training)
    return correct / max(len(labels), 1)


def task_tensors(
    env: Any,
    task_id: int,
    split: str = "test",
    count: int | None = None,
    device: torch.device | str | None = None,
    *,
    new_classes_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's held-out ``(inputs, labels)`` as tensors on ``device``.

    Args:
        env: The unwrapped clenv env (``env.unwrapped``): its ``task_data``.
        task_id: Any task, current or past.
        split: ``"train"``, ``"validation"`` or ``"test"`` (what the env offers).
        count: At most this many examples (the task's fixed subset; None: all).
        new_classes_only: Keep only the classes the task adds to those of the
            tasks before it (incremental CIFAR's ``active_classes``); the first
            ``count`` of them. Ignored by envs without ``active_classes``.
    """
    if new_classes_only and hasattr(env, "active_classes"):
        inputs, labels = env.task_data(task_id, split)
        seen = env.active_classes(task_id - 1) if task_id > 0 else []
        keep = np.flatnonzero(~np.isin(labels, seen))[:count]
        inputs, labels = inputs[keep], labels[keep]
    else:
        inputs, labels = env.task_data(task_id, split, max_examples=count)
    return torch.as_tensor(inputs, device=device), torch.as_tensor(
        labels, device=device
    )
