"""The ConvNet of Continual ImageNet: LoP's (``lop/nets/conv_net.py``) or SC's
(``imagenet/models.py``, Flax)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from clenv.models.init import check_choice, lecun_normal_
from clenv.models.layers import (
    check_activation,
    check_norm,
    feature_multiplier,
    make_activation,
    make_norm,
    sequential_hidden_layer_spec,
)

PADDINGS = ("valid", "same")
INITS = ("lop", "sc")


class ContinualImageNetConvNet(nn.Module):
    """conv5x5(32)-pool-conv3x3(64)-pool-conv3x3(128)-pool-FC128-FC128-classes, ReLU.

    Two published variants of the same layers:

    - LoP (the default): ``padding="valid"``, so 3x32x32 inputs flatten to 2x2x128 =
      512 features; ``init="lop"``: PyTorch's default initialisation (weights and
      biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), which LoP's ``ConvNet`` keeps.
    - SC: ``padding="same"`` (Flax's default), so the features flatten to 4x4x128 =
      2048; ``init="sc"``: Flax's defaults, LeCun-normal weights (normal truncated at
      two standard deviations, variance ``1 / fan_in``) and zero biases.

    The whole net is one ``nn.Sequential`` (``self.layers``), so
    :func:`clenv.methods.find_hidden_layers` finds all five hidden layers (the three
    convs and the two FC layers, SC's ER layers) in order; ``self.head`` is its last
    module.

    Args:
        num_classes: output logits (2 for the binary tasks).
        in_channels: image channels.
        image_size: square input side (32).
        padding: ``"valid"`` (LoP) or ``"same"`` (SC) for the three convolutions.
        init: ``"lop"`` or ``"sc"`` (see above).
        norm: ``None`` or ``"layer"``: a LayerNorm (epsilon 1e-6) before every hidden
            activation, the three convolutions' (over the channels at each position,
            :class:`clenv.models.layers.ChannelLayerNorm`) and the two FC layers', as
            SC's ``use_layernorm`` ConvNet (``imagenet/models.py:12-37``).
        activation: ``"relu"``, ``"crelu"`` or ``"fourier"`` on every hidden layer
            (:mod:`clenv.models.layers`); the unit and channel counts stay, so CReLU
            and Fourier features double the inputs of each next layer.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        image_size: int = 32,
        padding: Literal["valid", "same"] = "valid",
        init: Literal["lop", "sc"] = "lop",
        norm: Literal["layer"] | None = None,
        activation: Literal["relu", "crelu", "fourier"] = "relu",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.padding = check_choice("padding", padding, PADDINGS)
        self.init = check_choice("init", init, INITS)
        self.norm = check_norm(norm)
        self.activation = check_activation(activation)
        k = feature_multiplier(activation)
        if padding == "valid":
            side = ((((image_size - 4) // 2) - 2) // 2 - 2) // 2
            smallest = 26
        else:
            side = image_size // 8
            smallest = 8
        if side < 1:
            raise ValueError(
                f"image_size={image_size} is too small for three conv+pool stages "
                f"with padding={padding!r}; use >= {smallest}"
            )

        def hidden(layer: nn.Module, units: int, conv: bool) -> list[nn.Module]:
            return [layer, *make_norm(norm, units, conv), make_activation(activation)]

        self.layers = nn.Sequential(
            *hidden(nn.Conv2d(in_channels, 32, 5, padding=padding), 32, True),
            nn.MaxPool2d(2, 2),
            *hidden(nn.Conv2d(32 * k, 64, 3, padding=padding), 64, True),
            nn.MaxPool2d(2, 2),
            *hidden(nn.Conv2d(64 * k, 128, 3, padding=padding), 128, True),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            *hidden(nn.Linear(128 * k * side * side, 128), 128, False),
            *hidden(nn.Linear(128 * k, 128), 128, False),
            nn.Linear(128 * k, num_classes),
        )
        if self.init == "sc":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every weight and bias again from the construction's initialisation
        (torch's global generator); reset each LayerNorm (scale 1, bias 0)."""
        for module in self.layers:
            if isinstance(module, nn.Conv2d | nn.Linear):
                self._init_layer(module)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def reset_head_parameters(self) -> None:
        """Draw the output layer again from the construction's initialisation."""
        self._init_layer(self.head)

    def _init_layer(self, module: nn.Conv2d | nn.Linear) -> None:
        if self.init == "lop":
            module.reset_parameters()
        else:
            lecun_normal_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        return self.layers[-1]

    def hidden_layer_spec(self) -> list[tuple[str, str, str]]:
        """``(layer, activation, next_layer)`` module names of the five hidden layers
        (three convs, two FC), as :func:`clenv.methods.find_hidden_layers` finds
        them (the LayerNorm's name second under ``norm="layer"``)."""
        return sequential_hidden_layer_spec(self.layers, "layers")

    def fc_activation_names(self) -> list[str]:
        """Names of the two FC layers' activations (SC's ER layers; cheap to rank)."""
        return [spec[-2] for spec in self.hidden_layer_spec()[-2:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
