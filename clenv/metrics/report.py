"""One-call summaries the agents log: representation, plasticity and curvature reports."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from clenv.metrics.activations import ForwardFn, capture_activations
from clenv.metrics.bounds import dead_unit_rank_bound
from clenv.metrics.churn import PolicyChurnTracker
from clenv.metrics.hessian import hessian_trace
from clenv.metrics.kfac import kfac_rank
from clenv.metrics.losses import LossFn
from clenv.metrics.rank import rank_metrics
from clenv.metrics.spectral import (
    DENSITY_GRID,
    density_on_grid,
    epsilon_rank,
    epsilon_rank_trapezoid,
    hessian_second_moment,
    hessian_spectral_density,
    hessian_variance,
    hessian_variance_trapezoid,
    partial_hessian_spectra,
)
from clenv.metrics.units import (
    dead_unit_mask,
    dormant_unit_mask,
    feature_norm,
    unit_mean_abs_activation,
)
from clenv.metrics.weights import WeightChangeTracker, gradient_norms, weight_metrics


def representation_metrics(
    activations: Mapping[str, torch.Tensor],
    dormant_threshold: float = 0.025,
    rank_fraction: float = 0.99,
    *,
    active_units: bool = False,
    feature_norms: bool = False,
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

    Opt-in: ``active_units`` adds ``"<layer>/active_unit_fraction"`` and the
    unit-weighted ``active_unit_fraction`` (units nonzero on some sample: exactly
    1 - ``dead_unit_fraction``, :func:`~clenv.metrics.active_unit_fraction`);
    ``feature_norms`` adds ``"<layer>/feature_norm"`` (mean over samples of
    ||h(x)||_2, :func:`~clenv.metrics.feature_norm`) and their mean over layers
    ``mean_feature_norm``.

    Args:
        activations: ``{layer: (samples, units, ...) tensor}``, e.g. from
            :func:`~clenv.metrics.capture_activations` on the protocol's 2000-sample
            evaluation batch.
        dormant_threshold: ReDo's tau.
        rank_fraction: Share of the spectrum for the approximate and LoP stable ranks.
        active_units: Add the active-unit fractions.
        feature_norms: Add the feature norms.

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
    norms = []
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
        if active_units:
            layer_metrics["active_unit_fraction"] = (units - dead) / units
        if feature_norms:
            layer_metrics["feature_norm"] = feature_norm(activation)
            norms.append(layer_metrics["feature_norm"])
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
    if active_units:
        metrics["active_unit_fraction"] = (total_units - total_dead) / total_units
    if feature_norms:
        metrics["mean_feature_norm"] = sum(norms) / len(norms)
    return metrics


def plasticity_report(
    nets: Mapping[str, nn.Module],
    inputs: Any,
    *,
    layers: Mapping[str, Sequence[str | nn.Module]] | None = None,
    dormant_threshold: float = 0.025,
    active_units: bool = False,
    feature_norms: bool = False,
    gradient_norm: bool = False,
    weight_change: WeightChangeTracker | None = None,
    policy_churn: PolicyChurnTracker | None = None,
) -> dict[str, float]:
    """Representation and weight metrics of named networks on one batch of inputs.

    For each net, :func:`representation_metrics` of its activations on ``inputs``
    (:func:`~clenv.metrics.capture_activations`, renamed ``layer0``, ``layer1``, ... in
    call order) and ``weight_magnitude`` and ``parameter_norm`` of
    :func:`~clenv.metrics.weight_metrics`, keyed ``"<net>/<metric>"``; a net named
    ``""`` gives plain ``"<metric>"`` keys (a model that is one network).

    Opt-in metrics (off by default, so the default report never changes):

    - ``active_units``, ``feature_norms``: see :func:`representation_metrics`
      (``"<net>/layer<i>/active_unit_fraction"``, ``"<net>/active_unit_fraction"``,
      ``"<net>/layer<i>/feature_norm"``, ``"<net>/mean_feature_norm"``).
    - ``gradient_norm``: :func:`~clenv.metrics.gradient_norms` of each net's
      ``.grad`` from the last backward pass, ``"<net>/<module>/grad_norm"`` per
      layer (the module owning the parameters, e.g. ``"actor/0/grad_norm"``) and
      ``"<net>/grad_norm"``.
    - ``weight_change``: a :class:`~clenv.metrics.WeightChangeTracker` built on the
      same ``nets``; adds its :meth:`~clenv.metrics.WeightChangeTracker.metrics`
      (``"<net>/<module>/weight_change"``, ``"<net>/weight_change"``).
    - ``policy_churn``: a :class:`~clenv.metrics.PolicyChurnTracker`; calls its
      ``update()`` and adds ``"policy_churn"`` (mean KL between the policy at the
      previous call and now on its probe batch; absent on the first call).

    Args:
        nets: ``{name: module}``, e.g. ``{"actor": agent.actor_mean, "critic":
            agent.critic}``; each is called as ``module(inputs)``.
        inputs: The batch every net sees (e.g. a rollout's observations).
        layers: ``{name: layers}`` to capture for some nets (see
            :func:`~clenv.metrics.capture_activations`); default every activation
            module.
        dormant_threshold: ReDo's tau.
        active_units: Add active-unit fractions.
        feature_norms: Add feature norms.
        gradient_norm: Add gradient norms (needs ``.grad``).
        weight_change: Tracker whose distances from the task start to add.
        policy_churn: Tracker whose churn to measure and add.

    Returns:
        ``{key: float}``.
    """
    metrics: dict[str, float] = {}
    for name, net in nets.items():
        prefix = f"{name}/" if name else ""
        captured = capture_activations(net, inputs, (layers or {}).get(name))
        activations = {f"layer{i}": a for i, a in enumerate(captured.values())}
        report = representation_metrics(
            activations,
            dormant_threshold,
            active_units=active_units,
            feature_norms=feature_norms,
        )
        weights = weight_metrics(net)
        report |= {key: weights[key] for key in ("weight_magnitude", "parameter_norm")}
        if gradient_norm:
            report |= gradient_norms(net)
        metrics |= {prefix + key: value for key, value in report.items()}
    if weight_change is not None:
        metrics |= weight_change.metrics()
    if policy_churn is not None:
        churn = policy_churn.update()
        if churn is not None:
            metrics["policy_churn"] = churn
    return metrics


def curvature_report(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    *,
    eps: Sequence[float] = (1e-3, 1e-2, 3e-2, 1e-1),
    order: int = 100,
    num_probes: int = 1,
    sigma_squared: float = 1e-5,
    grid: np.ndarray = DENSITY_GRID,
    num_points: int = 10_000,
    trace_matvecs: int = 30,
    kfac: bool = True,
    dead_unit_bound: bool = True,
    dead_unit_inputs: Any | None = None,
    forward_fn: ForwardFn | None = None,
    seed: int | None = 0,
    reuse_graph: bool = False,
    variance: bool = False,
    partial_spectra: bool | Sequence[str] = False,
    partial_order: int | None = None,
) -> dict[str, Any]:
    """Every curvature diagnostic of SC in one call, on the model's device.

    Cost: ``order * num_probes + trace_matvecs`` Hessian-vector products over
    ``data``, one gradient pass for KFAC, one forward for the bound.

    Args:
        model: The network.
        loss_fn: ``loss_fn(model, batch) -> scalar`` batch-mean loss (cross-entropy,
            a PPO loss, ...). Its gradients also give KFAC's G (see
            :func:`~clenv.metrics.kfac_rank` for empirical vs sampled Fisher).
        data: List of batches (SC: 2000 samples of the current task).
        eps: Thresholds of the epsilon-rank (SC: PMNIST 0.01, ImageNet 0.03-0.1).
        order, num_probes, sigma_squared, num_points: SLQ settings, see
            :func:`~clenv.metrics.hessian_spectral_density` (defaults as SC;
            ``num_points`` sizes SC's linear grid over the Ritz values, on which
            ``epsilon_rank_trapezoid`` is computed as SC does).
        grid: Grid of the returned ``spectral_density`` (default
            :data:`~clenv.metrics.DENSITY_GRID`, which every agent logs as is).
        trace_matvecs: Hutch++ budget for the trace (0: skip).
        kfac: Compute the KFAC rank.
        dead_unit_bound: Compute the dead-unit rank bound.
        dead_unit_inputs: Model inputs for the bound (default: the first element of
            every ``(inputs, targets)`` batch, concatenated).
        forward_fn: ``forward_fn(model, inputs)`` for the bound's forward pass.
        seed: Seed of probes and sampled losses; the global RNG is untouched.
        reuse_graph: Keep each batch's gradient graph between Hessian-vector
            products (one backward pass per product instead of two plus a forward;
            memory: the activations of all of ``data``). See
            :class:`~clenv.metrics.HessianOperator`.
        variance: Opt-in: SC's Hessian variance, ``hessian_variance`` (exact
            variance of the eigenvalue density, :func:`~clenv.metrics.hessian_variance`),
            ``hessian_variance_trapezoid`` (SC's plotting computation on their
            10000-point grid, :func:`~clenv.metrics.hessian_variance_trapezoid`) and
            ``hessian_second_moment`` (estimate of tr(H^2)/P); no extra products.
        partial_spectra: Opt-in: per-layer ("partial") Hessian spectra,
            :func:`~clenv.metrics.partial_hessian_spectra` of every layer (True) or
            of the named layers; adds under ``"partial/<layer>/"``
            ``top_eigenvalue``, ``min_eigenvalue``, ``num_parameters``,
            ``smoothing_variance``, ``epsilon_rank/<eps>`` (and with ``variance``
            the three variance keys) and the arrays ``spectral_density`` (on
            ``grid``), ``spectral_density_grid``, ``ritz_values``, ``ritz_weights``.
            Cost: ``partial_order * num_probes`` products per layer.
        partial_order: Lanczos order of each partial spectrum (default ``order``).

    Returns:
        Floats ``top_eigenvalue`` and ``min_eigenvalue`` (extreme Ritz values of the
        SLQ run, which converge first), ``trace``, ``epsilon_rank/<eps>`` (exact
        share in [0, 1] of the smoothed density's mass with |lambda| > eps,
        :func:`~clenv.metrics.epsilon_rank`), ``epsilon_rank_trapezoid/<eps>``
        (SC's plotting computation, in percent,
        :func:`~clenv.metrics.epsilon_rank_trapezoid`), ``num_parameters``,
        ``kfac_rank``, ``kfac_rank_max``, ``dead_units``, ``dead_unit_rank_bound``,
        ``dead_unit_sc_bound``, ``smoothing_variance``, ``seconds``; float64 numpy
        arrays ``spectral_density`` (SC's smoothing as exact bin masses on
        ``grid``, :func:`~clenv.metrics.density_on_grid`; integrates to 1 by the
        trapezoid rule) and ``spectral_density_grid`` (``grid``), ``ritz_values``
        and ``ritz_weights``.
    """
    start = time.perf_counter()
    batches = list(data)
    density = hessian_spectral_density(
        model,
        loss_fn,
        batches,
        order=order,
        num_probes=num_probes,
        sigma_squared=sigma_squared,
        num_points=num_points,
        seed=seed,
        reuse_graph=reuse_graph,
    )
    report: dict[str, Any] = {
        "top_eigenvalue": float(density.ritz_values.max()),
        "min_eigenvalue": float(density.ritz_values.min()),
        "num_parameters": float(density.num_parameters),
        "smoothing_variance": density.variance,
    }
    for threshold, share in epsilon_rank(density, list(eps)).items():
        report[f"epsilon_rank/{threshold:g}"] = share
    percents = epsilon_rank_trapezoid(
        density.grid.numpy(), density.density.numpy(), list(eps)
    )
    for threshold, percent in percents.items():
        report[f"epsilon_rank_trapezoid/{threshold:g}"] = percent
    if trace_matvecs:
        report["trace"] = hessian_trace(
            model,
            loss_fn,
            batches,
            num_matvecs=trace_matvecs,
            seed=seed,
            reuse_graph=reuse_graph,
        )
    if kfac:
        ranks = kfac_rank(model, loss_fn, batches, seed=seed)
        report["kfac_rank"] = ranks["kfac_rank"]
        report["kfac_rank_max"] = ranks["kfac_rank_max"]
    if variance:
        report |= _variance_metrics(density)
    if partial_spectra:
        chosen = None  # partial_spectra=True: every layer
        if isinstance(partial_spectra, str):
            chosen = [partial_spectra]
        elif partial_spectra is not True:
            chosen = list(partial_spectra)
        spectra = partial_hessian_spectra(
            model,
            loss_fn,
            batches,
            layers=chosen,
            order=order if partial_order is None else partial_order,
            num_probes=num_probes,
            sigma_squared=sigma_squared,
            num_points=num_points,
            seed=seed,
            reuse_graph=reuse_graph,
        )
        for layer, block in spectra.items():
            prefix = f"partial/{layer}/"
            report |= {
                prefix + "top_eigenvalue": float(block.ritz_values.max()),
                prefix + "min_eigenvalue": float(block.ritz_values.min()),
                prefix + "num_parameters": float(block.num_parameters),
                prefix + "smoothing_variance": block.variance,
            }
            for threshold, share in epsilon_rank(block, list(eps)).items():
                report[f"{prefix}epsilon_rank/{threshold:g}"] = share
            if variance:
                report |= {
                    prefix + key: value
                    for key, value in _variance_metrics(block).items()
                }
            report |= {
                prefix + "spectral_density": density_on_grid(
                    block.ritz_values, block.ritz_weights, block.variance, grid
                ),
                prefix + "spectral_density_grid": np.asarray(grid, dtype=np.float64),
                prefix + "ritz_values": block.ritz_values.numpy(),
                prefix + "ritz_weights": block.ritz_weights.numpy(),
            }
    if dead_unit_bound:
        inputs = (
            _model_inputs(batches) if dead_unit_inputs is None else dead_unit_inputs
        )
        bound = dead_unit_rank_bound(model, inputs, forward_fn)
        report["dead_units"] = float(bound.dead_units)
        report["dead_unit_rank_bound"] = float(bound.bound)
        report["dead_unit_sc_bound"] = float(bound.sc_bound)
    report |= {
        "spectral_density": density_on_grid(
            density.ritz_values, density.ritz_weights, density.variance, grid
        ),
        "spectral_density_grid": np.asarray(grid, dtype=np.float64),
        "ritz_values": density.ritz_values.numpy(),
        "ritz_weights": density.ritz_weights.numpy(),
        "seconds": time.perf_counter() - start,
    }
    return report


def _variance_metrics(density: Any) -> dict[str, float]:
    return {
        "hessian_variance": hessian_variance(density),
        "hessian_variance_trapezoid": hessian_variance_trapezoid(
            density.grid.numpy(), density.density.numpy()
        ),
        "hessian_second_moment": hessian_second_moment(density),
    }


def _model_inputs(batches: list[Any]) -> torch.Tensor:
    if all(
        isinstance(b, list | tuple) and isinstance(b[0], torch.Tensor) for b in batches
    ):
        return torch.cat([batch[0] for batch in batches])
    raise ValueError(
        "curvature_report cannot tell the model inputs from these batches (not "
        "(inputs, targets) tuples); pass dead_unit_inputs=... (and forward_fn=...) "
        "or dead_unit_bound=False"
    )
