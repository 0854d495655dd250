"""The Permuted MNIST MLP (SC: 784-1000-1000-1000-10; LoP: 2000 wide)."""

from __future__ import annotations

import torch
from torch import nn


class PermutedMNISTMLP(nn.Module):
    """ReLU MLP ``in -> width x depth -> classes`` with Kaiming-uniform weights, zero bias.

    The layers are one ``nn.Sequential`` (``self.layers``) alternating ``nn.Linear`` and
    ``nn.ReLU``, so hidden layer ``l`` is ``layers[2 l]`` and its activation
    ``layers[2 l + 1]``; the output layer is ``layers[-1]`` (``self.head``).

    Initialisation follows both reference codes: ``kaiming_uniform_(nonlinearity="relu")``
    (bound ``sqrt(6 / fan_in)``) on every weight, the output layer included, and zero
    biases.

    Args:
        input_dim: flattened input size (784 for MNIST).
        width: units per hidden layer (SC 1000, LoP 2000).
        depth: number of hidden layers (3 in both papers).
        num_classes: output logits.
    """

    def __init__(
        self,
        input_dim: int = 784,
        width: int = 1000,
        depth: int = 3,
        num_classes: int = 10,
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
        modules: list[nn.Module] = []
        fan_in = input_dim
        for _ in range(depth):
            modules += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        modules.append(nn.Linear(fan_in, num_classes))
        self.layers = nn.Sequential(*modules)
        for module in self.layers:
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        return self.layers[-1]

    @property
    def linear_layers(self) -> list[nn.Linear]:
        """Every ``nn.Linear`` in order, the head last."""
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))
