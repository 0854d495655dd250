"""One-call summaries the agents log: representation and curvature reports."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clenv.metrics.rank import rank_metrics
from clenv.metrics.units import (
    dead_unit_mask,
    dormant_unit_mask,
    unit_mean_abs_activation,
)


def representation_metrics(
    activations: Mapping[str, torch.Tensor],
    dormant_threshold: float = 0.025,
    rank_fraction: float = 0.99,
) -> dict[str, float]:
    """Rank and unit-activity metrics of every captured layer, plus aggregates.

    Per layer (keys ``"<layer>/<metric>"``): ``effective_rank``,
    ``approximate_rank``, ``lop_stable_rank``, ``stable_rank``, ``numerical_rank``
    (see :mod:`clenv.metrics.rank`; computed on the (samples, rest) matrix, i.e. a
    conv map is flattened), ``units``, ``dead_units``, ``dead_unit_fraction``,
    ``dormant_units`` (ReDo score < ``dormant_threshold``) and
    ``mean_abs_activation`` (a conv unit is a channel; see :mod:`clenv.metrics.units`).

    Aggregates over layers: ``units``, ``dead_units``, ``dead_unit_fraction``,
    ``dormant_units``, ``mean_abs_activation`` (unit-weighted) and
    ``mean_effective_rank`` (the mean over layers that L2-ER ascends).

    Args:
        activations: ``{layer: (samples, units, ...) tensor}``, e.g. from
            :func:`~clenv.metrics.capture_activations` on the protocol's 2000-sample
            evaluation batch.
        dormant_threshold: ReDo's tau.
        rank_fraction: Share of the spectrum for the approximate and LoP stable ranks.

    Returns:
        ``{key: float}``.
    """
    if not activations:
        raise ValueError(
            "representation_metrics got no activations; capture some first"
        )
    metrics: dict[str, float] = {}
    total_units = total_dead = total_dormant = 0
    weighted_activity = 0.0
    ranks = []
    for layer, activation in activations.items():
        activity = unit_mean_abs_activation(activation)
        units = activity.numel()
        dead = int(dead_unit_mask(activation).sum())
        dormant = int(dormant_unit_mask(activation, dormant_threshold).sum())
        layer_metrics = rank_metrics(activation, rank_fraction)
        layer_metrics |= {
            "units": float(units),
            "dead_units": float(dead),
            "dead_unit_fraction": dead / units,
            "dormant_units": float(dormant),
            "mean_abs_activation": float(activity.mean()),
        }
        metrics |= {f"{layer}/{name}": value for name, value in layer_metrics.items()}
        total_units += units
        total_dead += dead
        total_dormant += dormant
        weighted_activity += float(activity.sum())
        ranks.append(layer_metrics["effective_rank"])
    metrics |= {
        "units": float(total_units),
        "dead_units": float(total_dead),
        "dead_unit_fraction": total_dead / total_units,
        "dormant_units": float(total_dormant),
        "mean_abs_activation": weighted_activity / total_units,
        "mean_effective_rank": sum(ranks) / len(ranks),
    }
    return metrics
