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
as in their code and PyHessian).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Gaussian-smoothed density of a quadrature (Ghorbani et al. 2019, Eq. 8).

    Args:
        ritz_values: Nodes.
        ritz_weights: Weights (summing to 1).
        sigma_squared: Smoothing variance; multiplied by
            ``max(1, max - min + 2 margin)`` of the nodes when ``scale_by_width``
            (Ghorbani et al.'s and PyHessian's convention, which SC's 1e-5 refers to).
        scale_by_width: See ``sigma_squared``; False uses it as an absolute variance.
        grid: Points to evaluate at; default ``num_points`` points from
            min - margin to max + margin of the nodes (their ``overhead``).
        num_points: Size of the default grid.
        margin: Padding of the default grid.

    Returns:
        ``(grid, density, variance)``.
    """
    low = float(ritz_values.min()) - margin
    high = float(ritz_values.max()) + margin
    variance = sigma_squared * (max(1.0, high - low) if scale_by_width else 1.0)
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
        sigma_squared: Gaussian smoothing (SC: 1e-5); see :func:`density_from_ritz`.
        scale_by_width: Scale ``sigma_squared`` by the spectrum's width (SC,
            Ghorbani et al.).
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

    Returns:
        A :class:`SpectralDensity`.
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    values, weights = [], []
    with curvature_context(model, seed, train_mode) as generator:
        operator = HessianOperator(
            model, loss_fn, data, backend=backend, reuse_graph=reuse_graph
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
    grid, density, variance = density_from_ritz(
        ritz_values, ritz_weights, sigma_squared, scale_by_width, grid, num_points
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

    SC (Prakash et al. 2026, Sec. 4 / Diagnostics) relate it to trainability and pick
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
