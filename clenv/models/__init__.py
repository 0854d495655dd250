"""The networks of the supervised continual benchmarks (PROTOCOLS.md), in plain PyTorch.

No torchvision: the ResNet-18 variant is written here. Every activation is its own
``nn.ReLU`` module so :func:`clenv.metrics.capture_activations` and the plasticity
methods find each hidden layer by name.
"""

from __future__ import annotations

from clenv.models.convnet import ContinualImageNetConvNet
from clenv.models.mlp import PermutedMNISTMLP
from clenv.models.resnet import BasicBlock, IncrementalCIFARResNet18

__all__ = [
    "BasicBlock",
    "ContinualImageNetConvNet",
    "IncrementalCIFARResNet18",
    "PermutedMNISTMLP",
]
