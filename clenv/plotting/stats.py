"""Statistics behind the plots: confidence intervals, ε-rank, R²."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_confidence_interval(
    samples: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t confidence half-width over the seeds axis.

    Args:
        samples: ``(num_seeds, num_points)``; NaN marks a seed with no value at a
            point (the mean and interval use the seeds that have one).
        confidence: coverage of the interval.

    Returns:
        ``(mean, half_width, count)`` per point; the half-width is 0 where fewer than
        two seeds have a value (no interval can be given from one sample).
    """
    samples = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    count = np.sum(~np.isnan(samples), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(np.where(count > 0, samples, 0.0), axis=0)
        mean = np.where(count > 0, mean, np.nan)
        if samples.shape[0] > 1:
            with warnings.catch_warnings():  # points with one seed: no spread, no band
                warnings.simplefilter("ignore", RuntimeWarning)
                std = np.nanstd(samples, axis=0, ddof=1)
        else:
            std = np.zeros(samples.shape[1])
        quantile = stats.t.ppf(0.5 + confidence / 2, np.maximum(count - 1, 1))
        half = np.where(count >= 2, quantile * std / np.sqrt(np.maximum(count, 1)), 0.0)
    return mean, half, count


def align_by_key(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``(keys, values)`` pairs of several seeds on the union of their keys.

    Returns:
        ``(keys, table)`` with ``table[s, i]`` seed ``s``'s value at ``keys[i]`` (NaN
        where that seed has none).
    """
    keys = np.unique(np.concatenate([np.asarray(k) for k, _ in per_seed]))
    table = np.full((len(per_seed), len(keys)), np.nan)
    for row, (seed_keys, values) in enumerate(per_seed):
        table[row, np.searchsorted(keys, seed_keys)] = values
    return keys, table


def binned_mean(steps: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of ``values`` in each step bin ``[edges[i], edges[i+1])`` (NaN if empty)."""
    index = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, len(edges) - 2)
    sums = np.bincount(index, weights=values, minlength=len(edges) - 1)
    counts = np.bincount(index, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _cell_widths(grid: np.ndarray) -> np.ndarray:
    """Trapezoid weights of a sorted grid, so ``sum(density * w)`` integrates it."""
    widths = np.zeros_like(grid, dtype=np.float64)
    gaps = np.diff(grid)
    widths[:-1] += gaps / 2
    widths[1:] += gaps / 2
    return widths


def epsilon_rank_from_density(
    grid: np.ndarray, density: np.ndarray, eps: float
) -> np.ndarray:
    """ε-rank (SC): the share of the spectral density's mass outside ``[-eps, eps]``.

    Args:
        grid: ``(G,)`` eigenvalue grid of the density, sorted ascending.
        density: ``(G,)`` or ``(n, G)`` density values on the grid.
        eps: half-width of the band around zero counted as "no curvature".

    Returns:
        ``()`` or ``(n,)`` shares in [0, 1].
    """
    grid = np.asarray(grid, dtype=np.float64)
    mass = np.asarray(density, dtype=np.float64) * _cell_widths(grid)
    total = mass.sum(axis=-1)
    outside = mass[..., np.abs(grid) > eps].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, outside / total, np.nan)


def log_abs_mass(
    grid: np.ndarray, density: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """Fold a density over λ onto bins of log10|λ|: the mass fraction in each bin.

    Mass with ``|λ|`` below the first edge goes into the first bin, so a density that
    collapses onto zero shows up as mass in the lowest bin rather than disappearing.

    Args:
        grid: ``(G,)`` eigenvalue grid, sorted ascending.
        density: ``(n, G)`` densities.
        edges: ``(B + 1,)`` ascending bin edges in log10|λ|.

    Returns:
        ``(n, B)`` fractions of each row's mass.
    """
    grid = np.asarray(grid, dtype=np.float64)
    mass = np.atleast_2d(np.asarray(density, dtype=np.float64)) * _cell_widths(grid)
    with np.errstate(divide="ignore"):
        log_abs = np.log10(np.abs(grid))
    index = np.clip(
        np.searchsorted(edges, log_abs, side="right") - 1, 0, len(edges) - 2
    )
    binned = np.zeros((mass.shape[0], len(edges) - 1))
    for column in range(len(edges) - 1):
        binned[:, column] = mass[:, index == column].sum(axis=1)
    total = binned.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, binned / total, 0.0)


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line ``y ≈ slope x + intercept`` and its R² (NaN if undefined)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r_squared = 1.0 - np.sum(residual**2) / np.sum((y - y.mean()) ** 2)
    return float(slope), float(intercept), float(r_squared)


def best_epsilon(
    spectra: Sequence[tuple[np.ndarray, np.ndarray]],
    performance: np.ndarray,
    candidates: Sequence[float],
) -> tuple[float, float]:
    """The ε among ``candidates`` whose ε-rank best explains ``performance`` (max R²).

    SC chooses ε after the fact in this way (PMNIST ε = 0.01, R² = 0.77); report the ε
    with the figure.

    Args:
        spectra: ``(grid, densities)`` blocks (one per run, each its own grid) whose
            rows, concatenated, pair with ``performance``.
        performance: one value per density row.
        candidates: the ε values to try.

    Returns:
        ``(eps, r_squared)``; ``(nan, nan)`` when no candidate gives a defined R².
    """
    best = (float("nan"), float("nan"))
    for eps in candidates:
        ranks = np.concatenate(
            [epsilon_rank_from_density(grid, rows, eps) for grid, rows in spectra]
        )
        _, _, r_squared = linear_fit(ranks, performance)
        if np.isfinite(r_squared) and not r_squared <= best[1]:
            best = (float(eps), r_squared)
    return best
