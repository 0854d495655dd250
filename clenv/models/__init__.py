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
- ``head``: the output layer;
- ``norm`` (``None`` or ``"layer"``: LayerNorm before each hidden activation, SC's
  ``use_layernorm``) and ``activation`` (``"relu"``, ``"crelu"``, ``"fourier"``)
  keywords, built from :mod:`clenv.models.layers`, whose :func:`make_mlp` builds the same
  blocks for any MLP (a PPO agent's actor and critic).
"""

from __future__ import annotations

from clenv.models.convnet import ContinualImageNetConvNet
from clenv.models.init import lecun_normal_, variance_scaling_
from clenv.models.layers import (
    ACTIVATIONS,
    NORMS,
    ChannelLayerNorm,
    CReLU,
    FourierFeatures,
    feature_multiplier,
    make_activation,
    make_mlp,
    make_norm,
    norm_components,
)
from clenv.models.mlp import PermutedMNISTMLP
from clenv.models.resnet import BasicBlock, IncrementalCIFARResNet18

__all__ = [
    "BasicBlock",
    "ContinualImageNetConvNet",
    "IncrementalCIFARResNet18",
    "PermutedMNISTMLP",
    # building blocks: norm and activation options
    "make_mlp",
    "make_activation",
    "make_norm",
    "feature_multiplier",
    "norm_components",
    "CReLU",
    "FourierFeatures",
    "ChannelLayerNorm",
    "ACTIVATIONS",
    "NORMS",
    # initialisers of the reference codes
    "lecun_normal_",
    "variance_scaling_",
]
