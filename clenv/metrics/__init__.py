"""Plasticity and curvature metrics for any PyTorch training loop.

Definitions, paper names and when to use each: docs/metrics.md.
"""

from __future__ import annotations

from clenv.metrics.activations import ACTIVATION_TYPES, capture_activations
from clenv.metrics.bounds import DeadUnitBound, dead_unit_rank_bound
from clenv.metrics.churn import PolicyChurnTracker, diagonal_gaussian_kl
from clenv.metrics.hessian import (
    HessianOperator,
    hessian_eigenvalues,
    hessian_matrix,
    hessian_trace,
    top_eigenvalues,
)
from clenv.metrics.kfac import kfac_rank
from clenv.metrics.lanczos import lanczos, ritz_pairs
from clenv.metrics.losses import (
    cross_entropy_loss,
    sampled_cross_entropy_loss,
    split_batch,
)
from clenv.metrics.rank import (
    approximate_rank,
    effective_rank,
    lop_stable_rank,
    numerical_rank,
    rank_metrics,
    stable_rank,
)
from clenv.metrics.report import (
    curvature_report,
    plasticity_report,
    representation_metrics,
)
from clenv.metrics.spectral import (
    DENSITY_GRID,
    SpectralDensity,
    density_from_ritz,
    density_on_grid,
    epsilon_rank,
    epsilon_rank_trapezoid,
    hessian_second_moment,
    hessian_spectral_density,
    hessian_variance,
    hessian_variance_trapezoid,
    log_spaced_grid,
    partial_hessian_spectra,
    rebin_density,
    smoothing_variance,
    trapezoid_weights,
)
from clenv.metrics.units import (
    active_unit_fraction,
    active_unit_mask,
    dead_unit_count,
    dead_unit_mask,
    dormant_unit_count,
    dormant_unit_mask,
    feature_norm,
    mean_abs_activation,
    unit_mean_abs_activation,
)
from clenv.metrics.weights import (
    WeightChangeTracker,
    gradient_norms,
    parameter_layers,
    weight_metrics,
)

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
    "active_unit_mask",
    "active_unit_fraction",
    "feature_norm",
    # capture and reports
    "ACTIVATION_TYPES",
    "capture_activations",
    "representation_metrics",
    "weight_metrics",
    "plasticity_report",
    # training dynamics: gradients, weight travel, policy churn
    "parameter_layers",
    "gradient_norms",
    "WeightChangeTracker",
    "diagonal_gaussian_kl",
    "PolicyChurnTracker",
    # curvature: loss closures and data
    "cross_entropy_loss",
    "sampled_cross_entropy_loss",
    "split_batch",
    # curvature: Hessian
    "HessianOperator",
    "hessian_matrix",
    "hessian_eigenvalues",
    "top_eigenvalues",
    "hessian_trace",
    # curvature: spectral density
    "lanczos",
    "ritz_pairs",
    "SpectralDensity",
    "hessian_spectral_density",
    "density_from_ritz",
    "smoothing_variance",
    "epsilon_rank",
    "epsilon_rank_trapezoid",
    "hessian_second_moment",
    "hessian_variance",
    "hessian_variance_trapezoid",
    "partial_hessian_spectra",
    # curvature: the one logging grid of every density
    "DENSITY_GRID",
    "log_spaced_grid",
    "trapezoid_weights",
    "density_on_grid",
    "rebin_density",
    # curvature: rank estimates
    "kfac_rank",
    "DeadUnitBound",
    "dead_unit_rank_bound",
    "curvature_report",
]
