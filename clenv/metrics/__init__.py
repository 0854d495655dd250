"""Plasticity and curvature metrics for any PyTorch training loop.

Definitions, paper names and when to use each: docs/metrics.md.
"""

from __future__ import annotations

from clenv.metrics.activations import ACTIVATION_TYPES, capture_activations
from clenv.metrics.rank import (
    approximate_rank,
    effective_rank,
    lop_stable_rank,
    numerical_rank,
    rank_metrics,
    stable_rank,
)
from clenv.metrics.report import representation_metrics
from clenv.metrics.units import (
    dead_unit_count,
    dead_unit_mask,
    dormant_unit_count,
    dormant_unit_mask,
    mean_abs_activation,
    unit_mean_abs_activation,
)
from clenv.metrics.weights import weight_metrics

__all__ = [
    # representation: rank of a (samples x units) matrix
    "effective_rank",
    "approximate_rank",
    "lop_stable_rank",
    "stable_rank",
    "numerical_rank",
    "rank_metrics",
    # representation: unit activity
    "dead_unit_mask",
    "dead_unit_count",
    "dormant_unit_mask",
    "dormant_unit_count",
    "unit_mean_abs_activation",
    "mean_abs_activation",
    # capture and reports
    "ACTIVATION_TYPES",
    "capture_activations",
    "representation_metrics",
    "weight_metrics",
]
