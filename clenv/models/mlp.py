"""The Permuted MNIST MLP (SC: 784-1000-1000-1000-10; LoP: 2000 wide)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from clenv.models.init import check_choice
from clenv.models.layers import (
    check_activation,
    check_norm,
    feature_multiplier,
    make_activation,
    make_norm,
    sequential_hidden_layer_spec,
)

INITS = ("sc", "lop")


class PermutedMNISTMLP(nn.Module):
    """ReLU MLP ``in -> width x depth -> classes`` with Kaiming-uniform weights, zero bias.

    The layers are one ``nn.Sequential`` (``self.layers``) alternating ``nn.Linear`` and
    ``nn.ReLU``, so hidden layer ``l`` is ``layers[2 l]`` and its activation
    ``layers[2 l + 1]``; the output layer is ``layers[-1]`` (``self.head``). With
    ``norm="layer"`` a LayerNorm sits between each hidden ``Linear`` and its activation
    (three modules per hidden layer; :meth:`hidden_layer_spec` names them).

    Initialisation (``init``), zero biases in both:

    - ``"sc"``: Kaiming-uniform with the ReLU gain (bound ``sqrt(6 / fan_in)``) on every
      weight, the head included (SC: Flax's ``kaiming_uniform()`` on every layer).
    - ``"lop"``: the same on the hidden layers, the head with the linear gain (bound
      ``sqrt(3 / fan_in)``; LoP's ``DeepFFNN`` gives its output layer
      ``act_type='linear'``).

    Args:
        input_dim: flattened input size (784 for MNIST).
        width: units per hidden layer (SC 1000, LoP 2000).
        depth: number of hidden layers (3 in both papers).
        num_classes: output logits.
        init: ``"sc"`` or ``"lop"`` (see above).
        norm: ``None`` or ``"layer"``: LayerNorm (epsilon 1e-6, Flax's) before each
            hidden activation, as SC's ``use_layernorm``
            (``permuted_mnist/train_permuted_mnist.py:71-72,84-85``).
        activation: ``"relu"``, ``"crelu"`` or ``"fourier"``
            (:mod:`clenv.models.layers`); ``width`` stays the units per layer, so
            CReLU and Fourier features double the next layer's inputs.
    """

    def __init__(
        self,
        input_dim: int = 784,
        width: int = 1000,
        depth: int = 3,
        num_classes: int = 10,
        init: Literal["sc", "lop"] = "sc",
        norm: Literal["layer"] | None = None,
        activation: Literal["relu", "crelu", "fourier"] = "relu",
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_dim", input_dim),
            ("width", width),
            ("depth", depth),
            ("num_classes", num_classes),
        ):
            if value < 1:
                raise ValueError(f"PermutedMNISTMLP needs {name} >= 1, got {value}")
        self.init = check_choice("init", init, INITS)
        self.norm = check_norm(norm)
        self.activation = check_activation(activation)
        modules: list[nn.Module] = []
        fan_in = input_dim
        for _ in range(depth):
            modules += [
                nn.Linear(fan_in, width),
                *make_norm(norm, width),
                make_activation(activation),
            ]
            fan_in = width * feature_multiplier(activation)
        modules.append(nn.Linear(fan_in, num_classes))
        self.layers = nn.Sequential(*modules)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every weight again from the construction's initialisation (torch's
        global generator), zero every bias, and reset each LayerNorm (scale 1, bias
        0)."""
        for module in self.layers:
            if isinstance(module, nn.Linear):
                self._init_linear(module)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def reset_head_parameters(self) -> None:
        """Draw the output layer again from the construction's initialisation."""
        self._init_linear(self.head)

    def _init_linear(self, module: nn.Linear) -> None:
        head = module is self.head
        gain = "linear" if head and self.init == "lop" else "relu"
        nn.init.kaiming_uniform_(module.weight, nonlinearity=gain)
        nn.init.zeros_(module.bias)

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        return self.layers[-1]

    @property
    def linear_layers(self) -> list[nn.Linear]:
        """Every ``nn.Linear`` in order, the head last."""
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def hidden_layer_spec(self) -> list[tuple[str, str, str]]:
        """``(layer, activation, next_layer)`` module names of every hidden layer, in
        order (what :func:`clenv.methods.find_hidden_layers` discovers too), with the
        LayerNorm's name second under ``norm="layer"``."""
        return sequential_hidden_layer_spec(self.layers, "layers")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))
