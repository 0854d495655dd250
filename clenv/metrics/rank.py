"""Rank measures of a (samples x units) feature matrix.

Effective rank follows Roy & Vetterli (2007), "The effective rank: a measure of
effective dimensionality", as both LoP (Dohare et al. 2024) and SC (Prakash et al.
2026) compute it: the entropy of the *singular values* normalised to sum to one.
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def effective_rank(features: torch.Tensor) -> torch.Tensor:
    """Effective rank exp(H(p)) with p = sigma / sum(sigma) of ``features``.

    Differentiable (L2-ER ascends it). Matches the reference code: ``p = sigma /
    max(sum sigma, 1e-8)``, ``erank = exp(-sum p log(p + 1e-8))``. The features are
    not centred.

    Args:
        features: (samples, units) matrix, or (samples, channels, ...) which is
            flattened to (samples, rest).

    Returns:
        A 0-dim tensor; between 1 and min(samples, units) for a nonzero matrix.

    Example:
        >>> round(effective_rank(torch.eye(5)).item(), 4)
        5.0
    """
    if features.dim() < 2:
        raise ValueError(
            f"effective_rank needs a (samples, units) matrix, got shape "
            f"{tuple(features.shape)}"
        )
    matrix = features.reshape(features.shape[0], -1)
    sigma = torch.linalg.svdvals(matrix)
    p = sigma / torch.clamp(sigma.sum(), min=_EPS)
    return torch.exp(-(p * torch.log(p + _EPS)).sum())
