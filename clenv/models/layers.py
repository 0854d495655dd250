"""Building blocks shared by the clenv networks: activations, normalisation, MLPs.

Every network takes ``norm`` and ``activation`` keywords that select these:

- ``norm=None`` (the default) or ``"layer"``: a LayerNorm between each hidden layer's
  weights and its activation, as SC's ``use_layernorm`` networks (Prakash et al.
  2026: ``permuted_mnist/train_permuted_mnist.py:71-72,84-85``,
  ``imagenet/models.py:12-37``, ``incremental_cifar/model.py:177-188``,
  ``rlopt/models.py:21-22,51-52``). Flax's ``nn.LayerNorm`` normalises the last
  axis (the channels of an NHWC convolution) with epsilon 1e-6; :func:`make_norm`
  does the same on PyTorch's NCHW layout (:class:`ChannelLayerNorm`).
- ``activation="relu"`` (the default), ``"crelu"`` (:class:`CReLU`) or ``"fourier"``
  (:class:`FourierFeatures`). The last two output two features per unit, so the
  layer after them reads twice as many inputs (see :func:`feature_multiplier`).

Each activation is its own module, so :func:`clenv.methods.find_hidden_layers` and the
metrics find every hidden layer's features by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

NORMS = (None, "layer")
ACTIVATIONS = ("relu", "crelu", "fourier")
# Flax's nn.LayerNorm default epsilon (SC's networks use it unchanged).
LAYER_NORM_EPS = 1e-6


def _interleave(first: torch.Tensor, second: torch.Tensor, dim: int) -> torch.Tensor:
    """``[a_0, b_0, a_1, b_1, ...]`` along ``dim``: unit ``i`` owns features ``2i``
    and ``2i + 1``."""
    return torch.stack((first, second), dim=dim + 1).flatten(dim, dim + 1)


class CReLU(nn.Module):
    """Concatenated ReLU (Shang et al. 2016), the plasticity fix of Abbas et al.,
    *Loss of Plasticity in Continual Deep Reinforcement Learning* (CoLLAs 2023):
    ``CReLU(x) = [relu(x), relu(-x)]``, two features per unit.

    The two halves are interleaved unit by unit (``relu(x_i)`` at feature ``2i``,
    ``relu(-x_i)`` at ``2i + 1``): a fixed permutation of the paper's concatenation,
    so the function class is the same, chosen so that a unit's two features sit next
    to each other, as the plasticity methods count a unit's outgoing weights (the
    ``2i, 2i + 1`` columns of the next ``Linear``; for a convolution, its channels
    ``2i, 2i + 1``).

    Width: ``units`` keep their meaning (pre-activations), so the next layer reads
    ``2 * units`` features and the network has more parameters than its ReLU twin.
    Whether Abbas et al. halve the units to keep the parameter count was NOT
    verified (issue 14 could read only the paper's abstract and found no official
    code); Chung et al.'s official Parseval code halves them for its CReLU baseline
    (``github.com/wechu/parseval_reg``, ``parseval_reg/agent.py:702-706``;
    ``utils.py:187-193`` is the same ``relu([x, -x])``): pass half the width for
    that comparison.

    Dead units: the dead-unit metrics count features. A feature is dead when it is
    zero on every input; a unit is dead only when both of its features are, i.e. its
    pre-activation is exactly 0 on every input, which CReLU makes practically
    impossible (its point in the paper).

    Args:
        dim: the feature dimension (1: the features of ``(batch, features)`` and the
            channels of ``(batch, channels, H, W)``).
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim if x.dim() > 1 else 0
        return _interleave(F.relu(x), F.relu(-x), dim)


class FourierFeatures(nn.Module):
    """Deep Fourier features, Lewandowski, Schuurmans and Machado, *Plastic Learning
    with Deep Fourier Features* (ICLR 2025): the concatenation ``[sin(x), cos(x)]``
    of each pre-activation, two features per unit (interleaved unit by unit, as
    :class:`CReLU`).

    Checked for issue 14 against the abstract (arXiv:2410.20634, ICLR 2025
    proceedings page: "the concatenation of a sine and cosine in every layer"),
    which this matches. NOT verified (the paper's body and official code could not
    be read): no scaling of the pre-activation or of the features is applied, and
    the width is not halved (the next layer reads ``2 * units`` features); check
    both before quoting a parameter-matched comparison.

    Dead units: ``sin`` and ``cos`` are never both zero, so no unit is dead in the
    zero-activation sense (the dead-unit metrics report 0, as they do for ``tanh``);
    a feature counts as dead only if it is exactly zero on every input.

    Args:
        dim: the feature dimension (as :class:`CReLU`).
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim if x.dim() > 1 else 0
        return _interleave(torch.sin(x), torch.cos(x), dim)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``(batch, channels, H, W)`` tensor at each
    position: Flax's ``nn.LayerNorm`` on an NHWC convolution output (SC's ImageNet
    ConvNet, ``imagenet/models.py:12-25``), in PyTorch's NCHW layout. One scale and
    bias per channel, so CBP and ReDo reset a replaced channel's entries."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def check_norm(norm: str | None) -> str | None:
    """``norm`` if it is one of :data:`NORMS`, else a ValueError naming the choices."""
    if norm not in NORMS:
        raise ValueError(
            f"norm must be None or 'layer' (LayerNorm before each hidden activation), "
            f"got {norm!r}"
        )
    return norm


def check_activation(activation: str) -> str:
    """``activation`` if it is one of :data:`ACTIVATIONS`, else a ValueError."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}"
        )
    return activation


def make_activation(activation: str = "relu") -> nn.Module:
    """A fresh activation module: ``nn.ReLU``, :class:`CReLU` or
    :class:`FourierFeatures`."""
    check_activation(activation)
    if activation == "crelu":
        return CReLU()
    if activation == "fourier":
        return FourierFeatures()
    return nn.ReLU()


def feature_multiplier(activation: str) -> int:
    """Features per unit after ``activation``: 1 for ReLU, 2 for CReLU and Fourier
    features (the next layer's fan-in is ``units * feature_multiplier``)."""
    return 1 if check_activation(activation) == "relu" else 2


def make_norm(norm: str | None, units: int, conv: bool = False) -> list[nn.Module]:
    """``[]`` for ``norm=None``; ``[LayerNorm(units, eps=1e-6)]`` for ``"layer"``
    (:class:`ChannelLayerNorm` after a convolution)."""
    if check_norm(norm) is None:
        return []
    cls = ChannelLayerNorm if conv else nn.LayerNorm
    return [cls(units, eps=LAYER_NORM_EPS)]


def norm_components(norm: str | None) -> tuple[str, ...]:
    """The settings tag of a ``norm``: ``("layernorm",)`` for ``"layer"``.

    :func:`clenv.settings.protocol_defaults` takes it with the ``--reg`` components,
    so the rows tuned with LayerNorm (``when="l2+layernorm"``, SC's ``laynorm_l2``)
    apply: ``components=[*split_name(reg), *norm_components(norm)]``.
    """
    return ("layernorm",) if check_norm(norm) == "layer" else ()


def make_mlp(
    sizes: Sequence[int],
    *,
    norm: str | None = None,
    activation: str = "relu",
    init: Callable[[nn.Linear], object] | None = None,
    head_init: Callable[[nn.Linear], object] | None = None,
) -> nn.Sequential:
    """``Linear -> [LayerNorm] -> activation`` per hidden size, then a ``Linear`` head.

    ``sizes`` is ``(inputs, hidden..., outputs)``; each hidden size is a number of
    units (pre-activations), so with ``"crelu"`` or ``"fourier"`` the next layer reads
    twice as many features. ``init`` (and ``head_init`` for the head; default
    ``init``) is called on each ``Linear`` right after it is built, in order, so a
    network built with the same calls draws the same weights from torch's generator
    as a hand-written loop (a PPO agent's ``layer_init``).

    Example:
        >>> net = make_mlp((4, 8, 2), norm="layer", activation="crelu")
        >>> [type(m).__name__ for m in net]
        ['Linear', 'LayerNorm', 'CReLU', 'Linear']
        >>> net[3].in_features
        16
    """
    if len(sizes) < 2 or any(size < 1 for size in sizes):
        raise ValueError(
            f"mlp needs sizes (inputs, hidden..., outputs), all >= 1, got {sizes}"
        )
    check_norm(norm)
    multiplier = feature_multiplier(activation)
    head_init = head_init or init
    layers: list[nn.Module] = []
    fan_in = sizes[0]
    for width in sizes[1:-1]:
        linear = nn.Linear(fan_in, width)
        if init is not None:
            init(linear)
        layers += [linear, *make_norm(norm, width), make_activation(activation)]
        fan_in = width * multiplier
    head = nn.Linear(fan_in, sizes[-1])
    if head_init is not None:
        head_init(head)
    layers.append(head)
    return nn.Sequential(*layers)


def sequential_hidden_layer_spec(
    layers: nn.Sequential, prefix: str, next_names: dict[int, str] | None = None
) -> list[tuple[str, ...]]:
    """``(layer, [norm], activation, next_layer)`` names of every hidden layer in a
    ``Sequential`` of weight layers, optional norms, activations and pass-through
    modules (pooling, ``Flatten``). ``next_names`` maps the index of a hidden
    layer's weight module to the name of its reader when that sits outside
    ``layers`` (a ResNet's head)."""
    weight_types = (nn.Linear, nn.Conv2d)
    norm_types = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)
    modules = list(layers)
    spec = []
    for index, module in enumerate(modules):
        if not isinstance(module, weight_types):
            continue
        names = [f"{prefix}.{index}"]
        position = index + 1
        while position < len(modules) and isinstance(modules[position], norm_types):
            names.append(f"{prefix}.{position}")
            position += 1
        if position >= len(modules) or isinstance(modules[position], weight_types):
            continue  # the head, or a layer without activation
        names.append(f"{prefix}.{position}")
        following = next(
            (
                i
                for i in range(position + 1, len(modules))
                if isinstance(modules[i], weight_types)
            ),
            None,
        )
        if following is not None:
            names.append(f"{prefix}.{following}")
        elif next_names and index in next_names:
            names.append(next_names[index])
        else:
            continue
        spec.append(tuple(names))
    return spec
