"""Per-unit activity of a layer: dead, active and dormant units, mean |activation|,
and the layer's feature norm.

A *unit* is a column of a (samples, units) activation matrix. For a convolutional
map (samples, channels, height, width, ...) a unit is a **channel**: its statistics
pool over samples and all spatial positions (as ReDo, Sokar et al. 2023, does for
conv layers). For other layouts (e.g. (batch, time, features)) reshape to put the
units on dim 1 first.

Two features per unit (:class:`clenv.models.CReLU`, :class:`clenv.models.FourierFeatures`:
unit ``i`` owns features ``2i`` and ``2i + 1``): by default every function here counts
the activation's *features* (a column is dead when it is zero on every sample), as
the activations' docstrings promise and as the rank measures see them.
``features_per_unit=2`` counts units instead: a unit's statistics pool over its
features, so a unit is dead only when both of its features are zero on every sample
(for CReLU, a pre-activation exactly 0 everywhere; never for Fourier features, as
``cos(0) = 1``), and its mean |activation| averages its two features.
"""

from __future__ import annotations

import torch

from clenv.checks import check_range


def group_by_unit(features: torch.Tensor, features_per_unit: int) -> torch.Tensor:
    """``(samples, k * units, ...)`` features as ``(samples, units, k, ...)``, unit
    ``i`` owning features ``k*i .. k*i + k - 1`` (``k = features_per_unit``; a view
    where the layout allows). CBP and ReDo (:mod:`clenv.methods.units`) group their
    features this way too.

    Raises:
        ValueError: ``features`` has no dim 1, or ``features_per_unit`` is not >= 1
            or does not divide it.

    Example:
        >>> group_by_unit(torch.arange(8.0).reshape(2, 4), 2)[1]
        tensor([[4., 5.],
                [6., 7.]])
    """
    if features.dim() < 2:
        raise ValueError(
            "grouping features by unit needs (samples, features, ...) features, got "
            f"shape {tuple(features.shape)}"
        )
    if features_per_unit < 1 or features.shape[1] % features_per_unit:
        raise ValueError(
            f"features_per_unit must be >= 1 and divide the {features.shape[1]} "
            f"features of the activation, got {features_per_unit} (2 for CReLU and "
            "Fourier features, 1 otherwise)"
        )
    units = features.shape[1] // features_per_unit
    return features.reshape(
        features.shape[0], units, features_per_unit, *features.shape[2:]
    )


def _per_unit(activation: torch.Tensor, features_per_unit: int = 1) -> torch.Tensor:
    """(samples, k * units, ...) -> (units, samples * k * positions) of |activation|,
    unit ``i`` owning features ``k*i .. k*i + k - 1``."""
    if activation.dim() < 2 or activation.shape[0] == 0:
        raise ValueError(
            "unit metrics need a (samples, units, ...) activation with at least one "
            f"sample, got shape {tuple(activation.shape)}"
        )
    grouped = group_by_unit(activation.detach(), features_per_unit)
    return grouped.transpose(0, 1).reshape(grouped.shape[1], -1).abs()


def unit_mean_abs_activation(
    activation: torch.Tensor, features_per_unit: int = 1
) -> torch.Tensor:
    """Mean |activation| of each unit over samples (and positions, and its
    ``features_per_unit`` features): shape (units,)."""
    return _per_unit(activation, features_per_unit).float().mean(dim=1)


def dead_unit_mask(
    activation: torch.Tensor, features_per_unit: int = 1
) -> torch.Tensor:
    """Boolean (units,) mask of units that are exactly zero on every sample.

    PROTOCOLS' "dead unit" (LoP, SC): zero activation on every sample of the batch
    (the protocol's evaluation batch is 2000 samples). For a conv map a channel is
    dead when it is zero at every position of every sample. With
    ``features_per_unit=2`` (CReLU, Fourier features) a unit is dead when both of
    its features are (see the module docstring); the default counts features.
    """
    return _per_unit(activation, features_per_unit).amax(dim=1) == 0


def dead_unit_count(activation: torch.Tensor, features_per_unit: int = 1) -> int:
    """Number of dead units (see :func:`dead_unit_mask`)."""
    return int(dead_unit_mask(activation, features_per_unit).sum())


def active_unit_mask(
    activation: torch.Tensor, features_per_unit: int = 1
) -> torch.Tensor:
    """Boolean (units,) mask of active units: nonzero on at least one sample.

    The complement of :func:`dead_unit_mask`, so active and dead units always add
    up to the layer's units (Lyle et al. 2023 and Plasticine plot the "fraction of
    active units" of ReLU networks; LoP and SC plot its complement, dead units).
    """
    return ~dead_unit_mask(activation, features_per_unit)


def active_unit_fraction(activation: torch.Tensor, features_per_unit: int = 1) -> float:
    """Share in [0, 1] of the layer's units that are active (1 - dead fraction).

    Example:
        >>> active_unit_fraction(torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]]))
        0.6666666666666666
    """
    mask = active_unit_mask(activation, features_per_unit)
    return int(mask.sum()) / mask.numel()


def dormant_unit_mask(
    activation: torch.Tensor, threshold: float = 0.025, features_per_unit: int = 1
) -> torch.Tensor:
    """Boolean (units,) mask of tau-dormant units (ReDo, Sokar et al. 2023, Def. 3.1).

    Score s_i = E|h_i| / ((1/units) sum_k E|h_k|); a unit is dormant when
    s_i < ``threshold`` (PROTOCOLS' strict inequality; ReDo writes <=, which differs
    only for scores exactly at tau). A layer whose activations are all zero has every
    unit dormant. Dead units are always dormant for ``threshold > 0``.

    Args:
        activation: (samples, units, ...) activation.
        threshold: tau; 0.025 is ReDo's common choice, LoP's Ant config uses 0.1.
        features_per_unit: 2 to score CReLU / Fourier units (E|h| over both of a
            unit's features, as CBP and ReDo score them); 1 scores features.
    """
    check_range("dormant threshold tau", threshold, 0)
    mean_abs = unit_mean_abs_activation(activation, features_per_unit)
    layer_mean = mean_abs.mean()
    if layer_mean <= 0:
        return torch.ones_like(mean_abs, dtype=torch.bool)
    return mean_abs / layer_mean < threshold


def dormant_unit_count(
    activation: torch.Tensor, threshold: float = 0.025, features_per_unit: int = 1
) -> int:
    """Number of tau-dormant units (see :func:`dormant_unit_mask`)."""
    return int(dormant_unit_mask(activation, threshold, features_per_unit).sum())


def mean_abs_activation(activation: torch.Tensor) -> float:
    """Mean |activation| over all samples, units (and positions) of a layer."""
    return float(activation.detach().abs().float().mean())


def feature_norm(activation: torch.Tensor) -> float:
    """Mean over samples of the L2 norm of each sample's features, E_x ||h(x)||_2.

    A conv map's features are all its channels and positions (the flattened
    (samples, rest) row, as the rank measures use). Growing feature norms accompany
    loss of plasticity in RL (Lyle et al. 2024, "Disentangling the causes of
    plasticity loss"); computed in float64.

    Example:
        >>> feature_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        3.0
    """
    if activation.dim() < 2 or activation.shape[0] == 0:
        raise ValueError(
            "feature_norm needs a (samples, units, ...) activation with at least one "
            f"sample, got shape {tuple(activation.shape)}"
        )
    rows = activation.detach().reshape(activation.shape[0], -1).double()
    return float(torch.linalg.vector_norm(rows, dim=1).mean())
