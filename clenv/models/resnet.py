"""The ResNet-18 variant of the Incremental CIFAR-100 benchmark (LoP; SC adds 2 FC).

Differences from torchvision's ``resnet18`` (both papers): every convolution has a bias,
the stem is a 3x3 stride-1 convolution, and there is no max-pool, so 32x32 images keep
their resolution in the first stage. SC inserts two fully connected ReLU layers of 512
units between the pooled features and the head (its ER layers).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from clenv.models.init import check_choice, variance_scaling_
from clenv.models.layers import (
    check_activation,
    check_norm,
    feature_multiplier,
    make_activation,
    make_norm,
    sequential_hidden_layer_spec,
)

INITS = ("sc", "lop")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=True),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class IncrementalCIFARResNet18(nn.Module):
    """ResNet-18 with conv biases, a 3x3 stride-1 stem and no max-pool.

    Layout: stem conv3x3(64)-BN-ReLU, four stages of two :class:`BasicBlock` (64, 128,
    256, 512 channels; stride 2 from the second stage), global average pooling, then
    optionally ``extra_fc`` hidden FC ReLU layers of ``fc_width`` units (SC: 2 of 512;
    LoP: none), then the head.

    Initialisation (``init``); every bias zero, BatchNorm weight 1 and bias 0 in both:

    - ``"sc"`` (SC's ``incremental_cifar/model.py``): convolutions from a normal
      truncated at two standard deviations with variance ``2 / fan_out``, every linear
      layer (the extra FC layers and the head) with variance ``1 / fan_out`` (JAX's
      ``variance_scaling(2 or 1, "fan_out", "truncated_normal")``).
    - ``"lop"`` (LoP's ``kaiming_init_resnet_module``, applied after construction):
      convolutions Kaiming-normal with fan-in and the ReLU gain (std
      ``sqrt(2 / fan_in)``), linear layers Kaiming-normal with fan-in and the linear
      gain (std ``sqrt(1 / fan_in)``).

    Args:
        num_classes: output logits (100; the agent masks the unseen classes).
        extra_fc: hidden FC layers after pooling (SC 2, LoP 0).
        fc_width: units of each extra FC layer.
        in_channels: image channels.
        base_channels: channels of the first stage (64; the stages have 1, 2, 4, 8
            times as many). Smaller values give a narrow ResNet for quick runs.
        init: ``"sc"`` or ``"lop"`` (see above).
        norm: ``None`` or ``"layer"``: a LayerNorm (epsilon 1e-6) before the
            activation of each extra FC layer, as SC's ``use_layernorm`` ResNet
            (``incremental_cifar/model.py:177-188``; its convolutions keep their
            BatchNorm).
        activation: ``"relu"``, ``"crelu"`` or ``"fourier"`` on the extra FC layers
            (:mod:`clenv.models.layers`; ``fc_width`` stays the units, so the next
            layer reads twice as many features). The residual blocks keep ReLU: a
            two-feature activation there would change the channel count that the
            skip connections add to.
    """

    def __init__(
        self,
        num_classes: int = 100,
        extra_fc: int = 2,
        fc_width: int = 512,
        in_channels: int = 3,
        base_channels: int = 64,
        init: Literal["sc", "lop"] = "sc",
        norm: Literal["layer"] | None = None,
        activation: Literal["relu", "crelu", "fourier"] = "relu",
    ) -> None:
        super().__init__()
        if num_classes < 1 or extra_fc < 0 or fc_width < 1 or base_channels < 1:
            raise ValueError(
                "IncrementalCIFARResNet18 needs num_classes >= 1, extra_fc >= 0, "
                f"fc_width >= 1 and base_channels >= 1, got {num_classes}, {extra_fc}, "
                f"{fc_width}, {base_channels}"
            )
        self.init = check_choice("init", init, INITS)
        self.norm = check_norm(norm)
        self.activation = check_activation(activation)
        widths = [base_channels * k for k in (1, 2, 4, 8)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=True),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for index, channels in enumerate(widths):
            stride = 1 if index == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(in_ch, channels, stride), BasicBlock(channels, channels)
                )
            )
            in_ch = channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        fc: list[nn.Module] = []
        for _ in range(extra_fc):
            fc += [
                nn.Linear(in_ch, fc_width),
                *make_norm(norm, fc_width),
                make_activation(activation),
            ]
            in_ch = fc_width * feature_multiplier(activation)
        self.fc = nn.Sequential(*fc)
        self.head = nn.Linear(in_ch, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every weight again from the construction's initialisation (torch's
        global generator), zero the biases, and reset the BatchNorm layers (weight 1,
        bias 0, fresh running statistics)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                self._init_layer(module)
            elif isinstance(module, nn.BatchNorm2d | nn.LayerNorm):
                module.reset_parameters()  # weight 1, bias 0, running statistics

    def reset_head_parameters(self) -> None:
        """Draw the output layer again from the construction's initialisation (LoP's
        head reset re-runs ``kaiming_init_resnet_module`` on it)."""
        self._init_layer(self.head)

    def _init_layer(self, module: nn.Conv2d | nn.Linear) -> None:
        conv = isinstance(module, nn.Conv2d)
        if self.init == "sc":
            variance_scaling_(module.weight, 2.0 if conv else 1.0, "fan_out")
        else:
            nn.init.kaiming_normal_(
                module.weight, nonlinearity="relu" if conv else "linear"
            )
        nn.init.zeros_(module.bias)

    def hidden_layer_spec(self) -> list[tuple[str, ...]]:
        """Module names of the units a method may act on, in forward order.

        Each block's inner convolution as ``(conv1, bn1, relu1, conv2)`` (its output
        feeds only ``conv2``; the BatchNorm between is named so CBP and ReDo reset a
        replaced unit's BatchNorm entries too, as LoP's ``ResGnT`` does), then the
        extra FC layers as ``(layer, activation, next_layer)``. The block outputs are
        left out:
        they are summed with the skip connection, so a unit there has no outgoing
        weights of its own. Pass it as ``hidden_layers=`` to
        :func:`clenv.methods.make_method` (ER's ``last_layers=2`` then picks SC's two
        FC layers).
        """
        spec = []
        for s, stage in enumerate(self.stages):
            for b in range(len(stage)):
                block = f"stages.{s}.{b}"
                spec.append(
                    tuple(
                        f"{block}.{name}" for name in ("conv1", "bn1", "relu1", "conv2")
                    )
                )
        last = max(
            (i for i, m in enumerate(self.fc) if isinstance(m, nn.Linear)), default=0
        )
        spec += sequential_hidden_layer_spec(self.fc, "fc", {last: "head"})
        return spec

    def fc_activation_names(self) -> list[str]:
        """The extra FC activations, or the pooled features' last ReLU without
        them."""
        names = [
            f"fc.{i}" for i, m in enumerate(self.fc) if not isinstance(m, nn.Linear)
        ]
        names = [
            n for n in names if not isinstance(self.get_submodule(n), nn.LayerNorm)
        ]
        return names or [f"stages.{len(self.stages) - 1}.1.relu2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.pool(self.stages(self.stem(x)))))
