"""clenv.evaluation: masks over live classes, chunked held-out accuracy, task tensors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import clenv
from clenv.evaluation import accuracy, active_class_mask, masked_logits, task_tensors

gym.register_envs(clenv)


def test_masked_logits_hide_classes_outside_the_mask():
    logits = torch.tensor([[5.0, 1.0, 3.0], [0.0, 2.0, 9.0]])
    active = torch.tensor([False, True, True])
    out = masked_logits(logits, active)
    assert torch.isinf(out[:, 0]).all() and (out[:, 0] < 0).all()
    assert torch.equal(out[:, 1:], logits[:, 1:])
    assert out.argmax(1).tolist() == [2, 2]
    assert masked_logits(logits, None) is logits


def test_active_class_mask_from_info():
    mask = active_class_mask({"active_classes": np.array([3, 0])}, 5)
    assert mask.tolist() == [True, False, False, True, False]
    assert active_class_mask({"label": 1}, 5) is None


class Recorder(nn.Module):
    """Predicts class ``x[:, 0]``; records each batch size and its train flag."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x):
        self.calls.append((len(x), self.training))
        return nn.functional.one_hot(x[:, 0].long(), self.num_classes).float()


def test_accuracy_in_eval_mode_in_chunks_restoring_the_flag():
    model = Recorder(4).train()
    inputs = torch.tensor([[0], [1], [2], [3], [1]])
    labels = torch.tensor([0, 1, 0, 3, 1])
    assert accuracy(model, inputs, labels, chunk=2) == pytest.approx(4 / 5)
    assert model.calls == [(2, False), (2, False), (1, False)]
    assert model.training
    # Class 3 masked out: the argmax of an all-(-inf)-but-one row moves elsewhere.
    active = torch.tensor([True, True, True, False])
    assert accuracy(model, inputs, labels, active) == pytest.approx(3 / 5)
    assert accuracy(model, inputs[:0], labels[:0]) == 0.0
    with pytest.raises(ValueError, match="chunk"):
        accuracy(model, inputs, labels, chunk=0)


def test_task_tensors_read_held_out_data_and_new_classes(data_dir):
    env = gym.make(
        "clenv/IncrementalCIFAR100-v0", train_images_per_class=5, batch_size=10
    ).unwrapped
    inputs, labels = task_tensors(env, 0, "train", 7)
    expected_inputs, expected_labels = env.task_data(0, "train", max_examples=7)
    assert torch.equal(inputs, torch.as_tensor(expected_inputs))
    assert torch.equal(labels, torch.as_tensor(expected_labels))
    _, all_labels = task_tensors(env, 1, "train")
    _, new_labels = task_tensors(env, 1, "train", new_classes_only=True)
    seen = set(env.active_classes(0).tolist())
    added = set(env.active_classes(1).tolist()) - seen
    assert set(all_labels.tolist()) & seen  # task 1 replays the old classes
    assert set(new_labels.tolist()) == added
    _, first = task_tensors(env, 1, "train", 3, new_classes_only=True)
    assert first.tolist() == new_labels[:3].tolist()
