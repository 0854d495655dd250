"""LoP's ConvNet for Continual ImageNet (Dohare et al. 2024, Methods; ``conv_net.py``)."""

from __future__ import annotations

import torch
from torch import nn


class ContinualImageNetConvNet(nn.Module):
    """conv5x5(32)-pool-conv3x3(64)-pool-conv3x3(128)-pool-FC128-FC128-classes, ReLU.

    On 3x32x32 inputs the flattened features are 2x2x128 = 512. PyTorch's default
    initialisation, as LoP's code. The whole net is one ``nn.Sequential``
    (``self.layers``), so :func:`clenv.methods.find_hidden_layers` finds all five
    hidden layers (the three convs and the two FC layers, SC's ER layers) in order;
    ``self.head`` is its last module.

    Args:
        num_classes: output logits (2 for the binary tasks).
        in_channels: image channels.
        image_size: square input side (32).
    """

    def __init__(
        self, num_classes: int = 2, in_channels: int = 3, image_size: int = 32
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        side = ((image_size - 4) // 2 - 2) // 2
        side = (side - 2) // 2
        if side < 1:
            raise ValueError(
                f"image_size={image_size} is too small for three conv+pool stages; "
                "use >= 22"
            )
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(128 * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        return self.layers[-1]

    def fc_activation_names(self) -> list[str]:
        """Names of the two FC layers' ReLUs (SC's ER layers; cheap to rank)."""
        return ["layers.11", "layers.13"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
