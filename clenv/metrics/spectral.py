"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ), and epsilon-rank.

SLQ (Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization
via Hessian Eigenvalue Density", Sec. 2; Papyan 2019; Lin, Saad & Yang 2016): for a
random unit vector v, m Lanczos steps from v give the Gauss quadrature nodes
theta_j (Ritz values) and weights w_j = s_{1j}^2 with v^T f(H) v ~ sum_j w_j
f(theta_j). Averaged over probes this estimates the normalised spectral density
phi(lambda) = (1/P) sum_i delta(lambda - lambda_i); each delta is smoothed by a
Gaussian. Defaults follow SC (Prakash et al. 2026, Diagnostics): order 100, full
reorthogonalisation, sigma^2 = 1e-5 in Ghorbani et al.'s convention (the variance is
sigma^2 * max(1, lambda_max - lambda_min), i.e. relative to the spectrum's width,
as in their code and PyHessian; see :func:`smoothing_variance`).

Every logged density lives on one grid, :data:`DENSITY_GRID` (|lambda| from 1e-5 to
1e6, 50 points per decade, both signs and 0), as exact bin masses
(:func:`density_on_grid` from the Ritz values, :func:`rebin_density` from a density
on another grid): densities of every task, run and agent stack, and a peak
narrower than a bin keeps its mass.

Two epsilon-ranks: :func:`epsilon_rank` (default; the exact mass of the smoothed
density outside [-eps, eps], a share in [0, 1]) and :func:`epsilon_rank_trapezoid`
(SC's plotting computation, a trapezoid over the grid points with |lambda| > eps,
in percent).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clenv.metrics.hessian import (
    Backend,
    HessianOperator,
    curvature_context,
    rademacher,
)
from clenv.metrics.lanczos import lanczos, ritz_pairs
from clenv.metrics.losses import LossFn
from clenv.metrics.weights import parameter_layers


def log_spaced_grid(low: float, high: float, per_decade: int) -> np.ndarray:
    """An eigenvalue grid log-spaced in |lambda| on both sides of 0, and 0.

    Args:
        low: Smallest |lambda| > 0 on the grid.
        high: Largest |lambda|.
        per_decade: Points per factor of 10 (the relative resolution).

    Returns:
        A sorted float64 array ``[-high, ..., -low, 0, low, ..., high]``.

    Example:
        >>> log_spaced_grid(1.0, 100.0, 1).tolist()
        [-100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0]
    """
    if not 0 < low < high or per_decade < 1:
        raise ValueError(
            f"log_spaced_grid needs 0 < low < high and per_decade >= 1, got "
            f"low={low}, high={high}, per_decade={per_decade}"
        )
    count = round(per_decade * math.log10(high / low)) + 1
    positive = np.logspace(math.log10(low), math.log10(high), count)
    return np.concatenate([-positive[::-1], [0.0], positive])


#: The one grid of every logged spectral density: |lambda| from 1e-5 to 1e6, 50
#: points per decade, both signs and 0 (1103 points).
DENSITY_GRID = log_spaced_grid(1e-5, 1e6, 50)
DENSITY_GRID.flags.writeable = False


def trapezoid_weights(grid: np.ndarray) -> np.ndarray:
    """Weights w with ``sum(w * f) == np.trapezoid(f, grid)`` for any f on ``grid``.

    Half the distance between each point's neighbours (half a spacing at the ends).

    Example:
        >>> trapezoid_weights(np.array([0.0, 1.0, 3.0])).tolist()
        [0.5, 1.5, 1.0]
    """
    grid = _check_grid(grid)
    spacing = np.diff(grid) / 2
    weights = np.zeros_like(grid)
    weights[:-1] += spacing
    weights[1:] += spacing
    return weights


def _bin_edges(grid: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring points; the outer bins reach to +-inf."""
    return np.concatenate([[-np.inf], 0.5 * (grid[1:] + grid[:-1]), [np.inf]])


def _check_grid(grid: Any) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size < 2 or not np.all(np.diff(grid) > 0):
        raise ValueError(
            f"a density grid must hold >= 2 strictly increasing points, got "
            f"{grid.size} points{'' if grid.size < 2 else ' out of order'}; sort it "
            "(np.unique) or use clenv.metrics.DENSITY_GRID"
        )
    return grid


def _float64_cpu(values: Any) -> torch.Tensor:
    """A flat float64 CPU tensor of a tensor (any device) or an array-like."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).reshape(-1)
    return torch.from_numpy(np.asarray(values, dtype=np.float64).reshape(-1))


def _check_density(
    grid: Any, density: Any, caller: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, density)`` as float64 arrays, checked to match."""
    grid = _check_grid(grid)
    density = np.asarray(density, dtype=np.float64).reshape(-1)
    if density.shape != grid.shape:
        raise ValueError(
            f"{caller} got {density.size} density values for {grid.size} grid "
            "points; pass the grid the density was evaluated on"
        )
    return grid, density


def density_on_grid(
    ritz_values: Any,
    ritz_weights: Any,
    variance: float,
    grid: np.ndarray = DENSITY_GRID,
) -> np.ndarray:
    """The Gaussian-smoothed quadrature as exact bin masses on ``grid``.

    Grid point i gets the mixture's mass between the midpoints to its neighbours (the
    outer points take the tails), computed from the normal CDF, divided by its
    trapezoid weight (:func:`trapezoid_weights`). So ``np.trapezoid(result, grid)``
    is the total weight (1 for SLQ) exactly, and a peak narrower than a bin keeps its
    mass, unlike sampling the smooth density at the grid points.

    Args:
        ritz_values: Quadrature nodes (any shape, flattened).
        ritz_weights: Their weights (normalised here to sum 1).
        variance: Variance of each Gaussian bump, e.g. :attr:`SpectralDensity.variance`
            or :func:`smoothing_variance` (SC's).
        grid: Sorted evaluation grid (default :data:`DENSITY_GRID`).

    Returns:
        (G,) float64 density on ``grid``.
    """
    grid = _check_grid(grid)
    values, weights = (_float64_cpu(x) for x in (ritz_values, ritz_weights))
    if values.shape != weights.shape or weights.sum() <= 0 or variance <= 0:
        raise ValueError(
            "density_on_grid needs as many ritz_weights as ritz_values, a positive "
            f"weight sum and a positive variance; got {values.numel()} values, "
            f"{weights.numel()} weights summing to {float(weights.sum())}, "
            f"variance {variance}"
        )
    edges = torch.as_tensor(_bin_edges(grid))
    cdf = torch.special.ndtr((edges[:, None] - values[None, :]) / math.sqrt(variance))
    mass = (torch.diff(cdf, dim=0) @ (weights / weights.sum())).numpy()
    return mass / trapezoid_weights(grid)


def rebin_density(
    grid: np.ndarray, density: np.ndarray, target: np.ndarray = DENSITY_GRID
) -> np.ndarray:
    """Move a density from its own grid to ``target``, conserving mass exactly.

    The mass (trapezoid rule on ``grid``) between the midpoints of neighbouring
    target points goes to that point (the outer points take everything beyond),
    divided by its trapezoid weight. So ``np.trapezoid(result, target) ==
    np.trapezoid(density, grid)`` and a peak narrower than a target bin keeps its
    mass, unlike interpolation. Within a source interval the mass is spread evenly.

    Args:
        grid: Sorted grid of ``density`` (e.g. :attr:`SpectralDensity.grid`).
        density: (G,) values on ``grid``.
        target: Sorted grid to move to (default :data:`DENSITY_GRID`).

    Returns:
        (T,) float64 density on ``target``.
    """
    grid, density = _check_density(grid, density, "rebin_density")
    target = _check_grid(target)
    cumulative = np.concatenate(
        [[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))]
    )
    mass = np.diff(np.interp(_bin_edges(target), grid, cumulative))
    return mass / trapezoid_weights(target)


def smoothing_variance(
    probe_ritz_values: Sequence[torch.Tensor] | torch.Tensor,
    sigma_squared: float = 1e-5,
    grid_expand: float = 1e-2,
) -> float:
    """SC's Gaussian smoothing variance, scaled by the spectrum's range.

    ``sigma_squared * max(1, lambda_max - lambda_min)`` with ``lambda_max`` the mean
    over probes of each probe's largest Ritz value plus ``grid_expand`` and
    ``lambda_min`` the mean of the smallest minus ``grid_expand``: SC's
    ``eigv_to_density`` (``permuted_mnist/utils/density.py:60-71``, identical in
    ``imagenet/`` and ``incremental_cifar/utils/density.py``; Ghorbani et al. 2019,
    whose code it copies).

    Args:
        probe_ritz_values: The Ritz values of each probe (a list), or of one probe.
        sigma_squared: SC's sigma^2 (their default 1e-5, ``density.py:69``).
        grid_expand: Padding of the range (SC's ``grid_expand=1e-2``).

    Returns:
        The variance of each Gaussian bump.
    """
    if isinstance(probe_ritz_values, torch.Tensor):
        probe_ritz_values = [probe_ritz_values]
    if not probe_ritz_values or any(p.numel() == 0 for p in probe_ritz_values):
        raise ValueError("smoothing_variance needs the Ritz values of >= 1 probe")
    highs = [float(values.max()) for values in probe_ritz_values]
    lows = [float(values.min()) for values in probe_ritz_values]
    width = (sum(highs) - sum(lows)) / len(highs) + 2 * grid_expand
    return sigma_squared * max(1.0, width)


@dataclass(frozen=True)
class SpectralDensity:
    """A smoothed eigenvalue density and the quadrature it comes from.

    Attributes:
        grid: (G,) eigenvalue grid (float64, CPU).
        density: (G,) density on ``grid``; integrates to ~1 over the real line.
        ritz_values: (K,) quadrature nodes of all probes concatenated.
        ritz_weights: (K,) their weights, divided by the number of probes (sum 1).
        variance: Variance of each Gaussian bump (after scaling by the width).
        order: Lanczos order asked for (a probe stops early at an invariant
            subspace, e.g. when P < order).
        num_probes: Number of random start vectors.
        num_parameters: P, the Hessian's size (multiply a mass by P for a count).
    """

    grid: torch.Tensor
    density: torch.Tensor
    ritz_values: torch.Tensor
    ritz_weights: torch.Tensor
    variance: float
    order: int
    num_probes: int
    num_parameters: int

    def moment(self, power: int) -> float:
        """k-th moment of the quadrature, estimating tr(H^k) / P (k <= 2m-1 exact in
        expectation for Gauss quadrature with m nodes)."""
        return float((self.ritz_weights * self.ritz_values**power).sum())

    def evaluate(self, points: torch.Tensor) -> torch.Tensor:
        """Smoothed density at arbitrary ``points`` (e.g. a fixed logging grid)."""
        return gaussian_mixture(
            points.to(torch.float64), self.ritz_values, self.ritz_weights, self.variance
        )


def gaussian_mixture(
    points: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, variance: float
) -> torch.Tensor:
    """sum_j weights_j N(points; means_j, variance), evaluated in chunks."""
    chunks = []
    scale = 1.0 / math.sqrt(2 * math.pi * variance)
    for chunk in points.split(4096):
        squared = (chunk[:, None] - means[None, :]) ** 2
        chunks.append(scale * (torch.exp(-squared / (2 * variance)) @ weights))
    return torch.cat(chunks)


def density_from_ritz(
    ritz_values: torch.Tensor,
    ritz_weights: torch.Tensor,
    sigma_squared: float = 1e-5,
    scale_by_width: bool = True,
    grid: torch.Tensor | None = None,
    num_points: int = 10_000,
    margin: float = 0.01,
    variance: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Gaussian-smoothed density of a quadrature (Ghorbani et al. 2019, Eq. 8).

    Sampled at grid points (SC's ``eigv_to_density``); for a logged density use
    :func:`density_on_grid`, which keeps the mass of peaks narrower than the grid.

    Args:
        ritz_values: Nodes.
        ritz_weights: Weights (summing to 1).
        sigma_squared: Smoothing variance; multiplied by
            ``max(1, max - min + 2 margin)`` of the nodes when ``scale_by_width``
            (:func:`smoothing_variance` of one probe: Ghorbani et al.'s, SC's and
            PyHessian's convention, which SC's 1e-5 refers to).
        scale_by_width: See ``sigma_squared``; False uses it as an absolute variance.
        grid: Points to evaluate at; default ``num_points`` points from
            min - margin to max + margin of the nodes (their ``grid_expand``).
        num_points: Size of the default grid.
        margin: Padding of the default grid.
        variance: The variance to use, overriding ``sigma_squared`` (e.g.
            :func:`smoothing_variance` over several probes).

    Returns:
        ``(grid, density, variance)``.
    """
    low = float(ritz_values.min()) - margin
    high = float(ritz_values.max()) + margin
    if variance is None:
        variance = (
            smoothing_variance(ritz_values, sigma_squared, margin)
            if scale_by_width
            else sigma_squared
        )
    if grid is None:
        grid = torch.linspace(low, high, num_points, dtype=torch.float64)
    grid = grid.detach().to("cpu", torch.float64)
    density = gaussian_mixture(grid, ritz_values, ritz_weights, variance)
    return grid, density, variance


def hessian_spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    order: int = 100,
    num_probes: int = 1,
    sigma_squared: float = 1e-5,
    scale_by_width: bool = True,
    grid: torch.Tensor | None = None,
    num_points: int = 10_000,
    seed: int | None = 0,
    train_mode: bool = False,
    backend: Backend = "autograd",
    reuse_graph: bool = False,
    progressbar: bool = False,
    params: Sequence[nn.Parameter] | None = None,
) -> SpectralDensity:
    """Eigenvalue density of the loss Hessian by stochastic Lanczos quadrature.

    Cost: ``order * num_probes`` Hessian-vector products over all of ``data``, and
    ``order`` vectors of P numbers of memory. SC's protocol: 2000 samples of the
    current task, at task start and end, every 10 tasks.

    Args:
        model: The network (its device is used).
        loss_fn: ``loss_fn(model, batch) -> scalar`` batch-mean loss, e.g.
            :func:`~clenv.metrics.cross_entropy_loss` or a PPO loss.
        data: List of batches (see :class:`~clenv.metrics.HessianOperator`).
        order: Lanczos steps m per probe (SC: 100).
        num_probes: Random Rademacher start vectors (SC: 1; more lowers the variance
            of the weights, not the resolution).
        sigma_squared: Gaussian smoothing (SC: 1e-5); see :func:`smoothing_variance`.
        scale_by_width: Scale ``sigma_squared`` by the spectrum's width (SC,
            Ghorbani et al.): the mean over probes of each probe's range, as SC.
        grid: Fixed evaluation grid (e.g. to stack densities across tasks); default
            ``num_points`` points spanning the Ritz values.
        num_points: Size of the default grid (Ghorbani et al.: 10000).
        seed: Seed of the probes (None: fresh randomness). The global RNG is
            untouched.
        train_mode: Take the Hessian in train mode (dropout/BatchNorm batch stats).
        backend: Hessian-vector products by ``"autograd"`` (default) or
            ``"curvlinops"``; see :class:`~clenv.metrics.HessianOperator`.
        reuse_graph: Keep the gradient graph of every batch between products
            (about 1.5x faster, holds the activations of all of ``data``).
        progressbar: Show a progress bar over the Lanczos steps.
        params: Take the Hessian block of these parameters only (the rows and
            columns of the other parameters removed; default every trainable
            parameter). See :func:`partial_hessian_spectra`.

    Returns:
        A :class:`SpectralDensity`.
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    values, weights = [], []
    with curvature_context(model, seed, train_mode) as generator:
        operator = HessianOperator(
            model,
            loss_fn,
            data,
            params=params,
            backend=backend,
            reuse_graph=reuse_graph,
        )
        num_parameters = operator.dim
        matvec = operator.matvec
        if progressbar:
            bar = tqdm(total=min(order, num_parameters) * num_probes, desc="SLQ HVPs")

            def matvec(vector: torch.Tensor) -> torch.Tensor:
                bar.update()
                return operator.matvec(vector)

        for _ in range(num_probes):
            start = rademacher((num_parameters,), generator, operator.dtype)
            alpha, beta = lanczos(matvec, start, order)
            nodes, vectors = ritz_pairs(alpha, beta)
            values.append(nodes)
            weights.append(vectors[0] ** 2 / num_probes)
        if progressbar:
            bar.close()
    ritz_values, ritz_weights = torch.cat(values), torch.cat(weights)
    variance = (
        smoothing_variance(values, sigma_squared) if scale_by_width else sigma_squared
    )
    grid, density, variance = density_from_ritz(
        ritz_values, ritz_weights, grid=grid, num_points=num_points, variance=variance
    )
    return SpectralDensity(
        grid=grid,
        density=density,
        ritz_values=ritz_values,
        ritz_weights=ritz_weights,
        variance=variance,
        order=order,
        num_probes=num_probes,
        num_parameters=num_parameters,
    )


def epsilon_rank(
    density: SpectralDensity, eps: float | Sequence[float], smoothed: bool = True
) -> float | dict[float, float]:
    """Share of the spectral density's mass outside [-eps, eps] (SC's epsilon-rank).

    The exact definition, clenv's default: a share in [0, 1], computed in closed form
    from the quadrature. SC's figures use :func:`epsilon_rank_trapezoid` (a grid
    approximation, in percent). SC (Prakash et al. 2026, Sec. 4 / Diagnostics) relate it to trainability and pick
    eps after the fact (PMNIST eps = 0.01; ImageNet 0.03-0.1): report eps with it.
    Multiply by ``density.num_parameters`` for an estimated count of eigenvalues
    with |lambda| > eps.

    Args:
        density: From :func:`hessian_spectral_density`.
        eps: One threshold or a list.
        smoothed: Mass of the Gaussian-smoothed density, computed exactly from the
            normal CDF (no grid error). False: weight of the Ritz nodes with
            |theta| > eps.

    Returns:
        A float in [0, 1], or ``{eps: share}`` for a list.
    """
    thresholds = [eps] if isinstance(eps, int | float) else list(eps)
    if any(t < 0 for t in thresholds):
        raise ValueError(f"eps must be >= 0, got {thresholds}")
    nodes, weights = density.ritz_values, density.ritz_weights
    shares = {}
    for threshold in thresholds:
        if smoothed:
            std = math.sqrt(density.variance)
            normal = torch.distributions.Normal(nodes, std)
            inside = normal.cdf(torch.full_like(nodes, threshold)) - normal.cdf(
                torch.full_like(nodes, -threshold)
            )
            shares[threshold] = float((weights * (1 - inside)).sum())
        else:
            shares[threshold] = float(weights[nodes.abs() > threshold].sum())
    return shares[eps] if isinstance(eps, int | float) else shares


def epsilon_rank_trapezoid(
    grid: Any, density: Any, eps: float | Sequence[float]
) -> float | dict[float, float]:
    """SC's plotting epsilon-rank: percent of the density's trapezoid integral on the
    grid points with |lambda| > eps.

    ``100 * trapz(density[|grid| > eps], grid[|grid| > eps]) / trapz(density, grid)``
    as SC's ``calculate_epsilon_hessian_rank`` (``analysis/plot_epsilon_rank.py:102-112``)
    computes it on the saved ``eigv_to_density`` grid (10000 points spanning the Ritz
    values, ``permuted_mnist/utils/density.py:60-65``). Kept as written, including
    its quirks: the one trapezoid that joins the last point below -eps to the first
    above +eps counts as outside, and nothing between a grid point and eps counts.
    For the exact share use :func:`epsilon_rank`.

    Args:
        grid: Sorted grid (e.g. :attr:`SpectralDensity.grid`).
        density: Density on ``grid``.
        eps: One threshold or a list.

    Returns:
        A percentage in [0, 100] (a float), or ``{eps: percent}`` for a list.

    Example:
        >>> grid = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
        >>> epsilon_rank_trapezoid(grid, np.array([0.0, 1.0, 2.0, 1.0, 0.0]), 0.5)
        75.0

        (3 of the total 4: the trapezoid from -1 to 1 counts as outside.)
    """
    grid, density = _check_density(grid, density, "epsilon_rank_trapezoid")
    thresholds = [eps] if isinstance(eps, int | float) else list(eps)
    if any(t < 0 for t in thresholds):
        raise ValueError(f"eps must be >= 0, got {thresholds}")
    total = np.trapezoid(density, grid)
    percents = {}
    for threshold in thresholds:
        outside = np.abs(grid) > threshold
        percents[threshold] = float(
            100.0 * np.trapezoid(density[outside], grid[outside]) / total
        )
    return percents[eps] if isinstance(eps, int | float) else percents


def hessian_second_moment(density: SpectralDensity) -> float:
    """Second moment of the quadrature, sum_j w_j theta_j^2: an estimate of
    tr(H^2) / P = ||H||_F^2 / P (Gauss quadrature of order m >= 2 is exact per probe
    for degree 2, so it is a Hutchinson estimate of tr(H^2)/P over the probes)."""
    return density.moment(2)


def hessian_variance(density: SpectralDensity, smoothed: bool = False) -> float:
    """Variance of the Hessian's eigenvalue density around its mean (SC's "Hessian
    variance"), exactly from the quadrature.

    ``sum_j w_j (theta_j - mu)^2`` with ``mu = sum_j w_j theta_j``: an estimate of
    tr(H^2)/P - (tr(H)/P)^2, the variance of the P eigenvalues. SC plot the variance
    of the smoothed density (``analysis/plot_hessian_variance.py:59-67`` of their
    code, a trapezoid over the saved grid: :func:`hessian_variance_trapezoid`);
    ``smoothed=True`` gives that quantity exactly, i.e. adds the Gaussian smoothing
    variance ``density.variance``.

    Args:
        density: From :func:`hessian_spectral_density`.
        smoothed: Variance of the Gaussian-smoothed density instead of the
            eigenvalues'.

    Returns:
        A float >= 0.
    """
    mean = density.moment(1)
    spread = float(
        (density.ritz_weights * (density.ritz_values - mean) ** 2).sum()
    ) / float(density.ritz_weights.sum())
    return spread + (density.variance if smoothed else 0.0)


def hessian_variance_trapezoid(grid: Any, density: Any) -> float:
    """SC's plotting "Hessian variance": the variance of a density on a grid by the
    trapezoid rule.

    As SC's ``weighted_stats`` (``analysis/plot_hessian_variance.py:59-67``): clip
    the density at 0, ``Z = trapz(f, x)``, ``mean = trapz(x f, x) / Z``, ``var =
    trapz((x - mean)^2 f, x) / Z``, on the saved ``eigv_to_density`` grid (10000
    points from the smallest Ritz value - 0.01 to the largest + 0.01; SC's trimming
    options are off by default and not reproduced). The grid ends 0.01 beyond the
    outermost nodes, so their Gaussian bumps (std ``sqrt(1e-5 * width)``, above
    0.01 once the spectrum is wider than 10) lose up to half their mass there, and
    the result can fall below :func:`hessian_variance` even unsmoothed; where the
    bumps fit, it is :func:`hessian_variance` with ``smoothed=True``.

    Args:
        grid: Sorted grid (e.g. :attr:`SpectralDensity.grid`).
        density: Density on ``grid``.

    Returns:
        The variance (NaN when the density has no positive mass, as SC).

    Example:
        >>> grid = np.linspace(-1.0, 1.0, 2001)
        >>> round(hessian_variance_trapezoid(grid, np.ones_like(grid)), 6)  # uniform
        0.333334
    """
    grid, density = _check_density(grid, density, "hessian_variance_trapezoid")
    density = np.clip(density, 0.0, None)
    total = np.trapezoid(density, grid)
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    mean = np.trapezoid(grid * density, grid) / total
    return float(np.trapezoid((grid - mean) ** 2 * density, grid) / total)


def partial_hessian_spectra(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    layers: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, SpectralDensity]:
    """Per-layer ("partial") Hessian spectra: SLQ on each layer's diagonal block.

    The block of layer l is the Hessian of the loss with respect to that layer's
    parameters alone (its weight and bias), the others held fixed: the rows and
    columns of H belonging to the layer. Its eigenvalues are not those of H
    (they interlace them), and the blocks show which layer's curvature collapses.
    Each block gets its own :func:`hessian_spectral_density` run with the same
    settings and seed.

    Cost: ``order * num_probes`` Hessian-vector products per layer (each a full
    forward and backward pass, restricted to the layer's gradients).

    Args:
        model: The network.
        loss_fn: ``loss_fn(model, batch) -> scalar`` batch-mean loss.
        data: List of batches.
        layers: Layer names as :func:`~clenv.metrics.weights.parameter_layers`
            names them (the modules that own parameters: ``"0"``, ``"fc1"``, ...;
            default every layer, in registration order).
        **kwargs: Settings of :func:`hessian_spectral_density` (order, num_probes,
            sigma_squared, seed, reuse_graph, ...).

    Returns:
        ``{layer: SpectralDensity}`` (``num_parameters`` is the block's size).
    """
    if "params" in kwargs:
        raise ValueError("partial_hessian_spectra picks the parameters; pass layers=")
    blocks = parameter_layers(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    names = list(blocks) if layers is None else list(layers)
    unknown = [name for name in names if name not in blocks]
    if unknown:
        raise ValueError(
            f"no layer {unknown} in {type(model).__name__}; layers with parameters: "
            f"{list(blocks)}"
        )
    batches = list(data)
    return {
        name: hessian_spectral_density(
            model,
            loss_fn,
            batches,
            params=[param for _, param in blocks[name]],
            **kwargs,
        )
        for name in names
    }
