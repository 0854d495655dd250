"""The networks of the supervised continual benchmarks (docs/protocols.md), in plain
PyTorch.

No torchvision: the ResNet-18 variant is written here. Every activation is its own
``nn.ReLU`` module so :func:`clenv.metrics.capture_activations` and the plasticity
methods find each hidden layer by name. Every model has the same interface:

- an ``init`` keyword naming the paper whose initialisation it uses (and the ConvNet a
  ``padding`` one), see docs/protocols.md for each paper's value;
- ``reset_parameters()``: draw all parameters again as at construction (a full reset);
  ``reset_head_parameters()`` the output layer only (a head reset);
- ``hidden_layer_spec()``: the ``(layer, activation, next_layer)`` module names of its
  hidden layers, for :func:`clenv.methods.make_method`'s ``hidden_layers``;
- ``head``: the output layer.
"""

from __future__ import annotations

from clenv.models.convnet import ContinualImageNetConvNet
from clenv.models.init import lecun_normal_, variance_scaling_
from clenv.models.mlp import PermutedMNISTMLP
from clenv.models.resnet import BasicBlock, IncrementalCIFARResNet18

__all__ = [
    "BasicBlock",
    "ContinualImageNetConvNet",
    "IncrementalCIFARResNet18",
    "PermutedMNISTMLP",
    # initialisers of the reference codes
    "lecun_normal_",
    "variance_scaling_",
]
