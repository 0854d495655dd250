"""Weight initialisers of the reference codes, in PyTorch.

SC's code is written in JAX/Flax, whose initialisers are ``variance_scaling(scale,
mode, distribution)``: weights with variance ``scale / fan`` (``fan`` the fan-in or
fan-out of the layer), drawn from a normal truncated at two standard deviations
(rescaled so the variance is exact), a normal, or a uniform. Flax's default kernel
initialiser, ``lecun_normal``, is ``variance_scaling(1, "fan_in", "truncated_normal")``.
:func:`variance_scaling_` reproduces them on PyTorch weights (``(out, in, *kernel)``),
drawing from torch's global generator like ``torch.nn.init``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

# Standard deviation of a unit normal truncated to [-2, 2] (JAX's constant).
TRUNCATED_NORMAL_STD = 0.87962566103423978

FanMode = Literal["fan_in", "fan_out"]
Distribution = Literal["truncated_normal", "normal", "uniform"]


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a ``Linear`` or ``Conv`` weight (as torch and JAX
    count them: input or output channels times the kernel's size)."""
    if weight.dim() < 2:
        raise ValueError(
            f"fans need a Linear or Conv weight (2 or more dims), got shape "
            f"{tuple(weight.shape)}"
        )
    receptive_field = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


@torch.no_grad()
def variance_scaling_(
    weight: torch.Tensor,
    scale: float = 1.0,
    mode: FanMode = "fan_in",
    distribution: Distribution = "truncated_normal",
) -> torch.Tensor:
    """JAX's ``variance_scaling(scale, mode, distribution)``, in place.

    The weights get variance ``scale / fan``: from a normal truncated at +-2 of its
    standard deviation (``std = sqrt(scale / fan) / 0.8796``, so the truncated
    variance is ``scale / fan``), a normal, or ``U(-sqrt(3 scale / fan), +...)``.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> w = variance_scaling_(torch.empty(400, 500), 2.0, "fan_out")
        >>> round(w.var().item() * 400, 1)  # = scale
        2.0
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    fan_in, fan_out = fans(weight)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    variance = scale / (fan_in if mode == "fan_in" else fan_out)
    if distribution == "truncated_normal":
        std = math.sqrt(variance) / TRUNCATED_NORMAL_STD
        return nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)
    if distribution == "normal":
        return nn.init.normal_(weight, 0.0, math.sqrt(variance))
    if distribution == "uniform":
        bound = math.sqrt(3 * variance)
        return nn.init.uniform_(weight, -bound, bound)
    raise ValueError(
        "distribution must be 'truncated_normal', 'normal' or 'uniform', got "
        f"{distribution!r}"
    )


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Flax's default kernel initialiser: ``variance_scaling(1, "fan_in",
    "truncated_normal")``."""
    return variance_scaling_(weight, 1.0, "fan_in", "truncated_normal")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``name``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value
