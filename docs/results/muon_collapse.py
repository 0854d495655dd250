"""Where Muon's collapse at step size 1e-2 comes from (docs/results/README.md).

The study's Muon arm (SC's ``bp_muon`` at lr 1e-2, width 100, batch 1) reaches chance by
task 3. This script trains the same network on the same Permuted MNIST stream for a few
tasks and prints, per task, the online accuracy, the dead units, the weight matrices'
Frobenius norms and the hidden biases' mean, so three suspects can be told apart:

- clenv's transcription of optax's muon: ``--impl torch`` runs ``torch.optim.Muon``;
- the Adam part on the biases (Adam's steps are ~lr each whatever the gradient):
  ``--freeze-biases`` keeps every bias at 0;
- Muon's own steps on the weight matrices: what is left.

    CLENV_DATA_DIR=... python docs/results/muon_collapse.py --freeze-biases
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import torch
import torch.nn.functional as F
import tyro

import clenv
from clenv.metrics import capture_activations, dead_unit_count
from clenv.models.mlp import PermutedMNISTMLP
from clenv.optim import make_optimizer

gym.register_envs(clenv)


@dataclass
class Args:
    impl: Literal["optax", "torch"] = "optax"
    """Muon's implementation: SC's optax 0.2.5 (clenv's default) or torch.optim.Muon"""
    learning_rate: float = 1e-2
    """Muon's (and its Adam part's) step size; SC's bp_muon sweeps 1e-2, 1e-3, 1e-4"""
    freeze_biases: bool = False
    """keep every bias at its initial 0, so only Muon's matrix steps change the net"""
    tasks: int = 4
    examples_per_task: int = 5000
    width: int = 100
    seed: int = 1
    probe_examples: int = 1000
    """examples of each task's stream on which dead units are counted"""


def main(args: Args) -> list[dict]:
    torch.manual_seed(args.seed)
    env = gym.make("clenv/PermutedMNIST-v0", examples_per_task=args.examples_per_task,
                   num_tasks=args.tasks, task_seed=args.seed)  # fmt: skip
    model = PermutedMNISTMLP(784, args.width, 3, 10, init="sc")
    if args.freeze_biases:
        for bias in (p for p in model.parameters() if p.ndim == 1):
            bias.requires_grad_(False)
    optimizer = make_optimizer(
        "muon", model, lr=args.learning_rate, muon_impl=args.impl
    )
    relus = [m for m in model.layers if isinstance(m, torch.nn.ReLU)]
    obs, _ = env.reset(seed=args.seed)
    rows = []
    for task in range(args.tasks):
        correct, probe = 0, []
        for _ in range(args.examples_per_task):
            x = torch.as_tensor(obs).unsqueeze(0)
            logits = model(x)
            obs, _, _, _, info = env.step(int(logits.argmax()))
            label = torch.tensor([info["label"]])
            correct += int(logits.argmax() == label)
            if len(probe) < args.probe_examples:
                probe.append(x)
            optimizer.zero_grad()
            F.cross_entropy(logits, label).backward()
            optimizer.step()
        hidden = capture_activations(model, torch.cat(probe), relus)
        row = {
            "task": task,
            "accuracy": correct / args.examples_per_task,
            "dead_units": sum(dead_unit_count(h) for h in hidden.values()),
            "weight_norms": [float(p.detach().norm()) for p in model.parameters() if p.ndim == 2],
            "hidden_bias_means": [float(p.detach().mean()) for p in model.parameters() if p.ndim == 1][:-1],
        }  # fmt: skip
        rows.append(row)
        print(f"task {task}: online accuracy {row['accuracy']:.3f}, dead units "
              f"{row['dead_units']}, |W| {[round(n, 1) for n in row['weight_norms']]}, "
              f"hidden bias means {[round(b, 2) for b in row['hidden_bias_means']]}",
              flush=True)  # fmt: skip
    env.close()
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
