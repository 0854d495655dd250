"""Rank measures of a (samples x units) feature matrix.

Every function takes the feature matrix ``A`` (rows = samples, columns = units; a
(samples, channels, ...) map is flattened to (samples, rest)) and works on its singular
values sigma_1 >= sigma_2 >= ... Each measure has one name:

- :func:`effective_rank`: exp of the entropy of sigma / sum(sigma) (Roy & Vetterli
  2007), as LoP (Dohare et al. 2024) and SC (Prakash et al. 2026) compute it.
- :func:`approximate_rank`: fewest sigma^2 holding 99% of sum(sigma^2) (LoP's
  "approximate rank").
- :func:`lop_stable_rank`: fewest sigma holding 99% of sum(sigma); LoP's figures call
  this "stable rank", which is *not* the classic stable rank below.
- :func:`stable_rank`: the classic ||A||_F^2 / ||A||_2^2 (Rudelson & Vershynin 2007).
- :func:`numerical_rank`: number of sigma above a tolerance (as
  ``torch.linalg.matrix_rank``).
"""

from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-8


def feature_matrix(features: torch.Tensor) -> torch.Tensor:
    """Return ``features`` as a floating (samples, rest) matrix.

    Args:
        features: (samples, units) or (samples, channels, ...) tensor.

    Returns:
        The (samples, rest) view, converted to float32 if it was not floating.

    Raises:
        ValueError: If ``features`` has fewer than 2 dimensions or no samples.
    """
    if features.dim() < 2 or features.shape[0] == 0:
        raise ValueError(
            "rank measures need a (samples, units) matrix with at least one sample, "
            f"got shape {tuple(features.shape)}; stack the features of several "
            "samples along dim 0"
        )
    matrix = features.reshape(features.shape[0], -1)
    return matrix if matrix.is_floating_point() else matrix.float()


def singular_values(features: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of the (samples, rest) feature matrix."""
    return torch.linalg.svdvals(feature_matrix(features))


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
    return effective_rank_from_singular_values(singular_values(features))


def effective_rank_from_singular_values(
    sigma: torch.Tensor | np.ndarray,
) -> torch.Tensor | np.ndarray:
    """:func:`effective_rank` from precomputed singular values.

    The one implementation of the formula (the fast path's batched ascent and the
    closed-form L2-ER gradient, :mod:`clenv.methods.effective_rank`, call it too).

    Args:
        sigma: (..., k) singular values of one matrix or of a batch of them: a tensor
            (differentiable) or a numpy array.

    Returns:
        The effective rank of each, shape ``sigma.shape[:-1]`` (0-dim for one
        matrix), of ``sigma``'s type.
    """
    log, exp = (torch.log, torch.exp) if torch.is_tensor(sigma) else (np.log, np.exp)
    p = sigma / sigma.sum(-1)[..., None].clip(min=_EPS)
    return exp(-(p * log(p + _EPS)).sum(-1))


def _fewest_reaching(values: torch.Tensor, fraction: float) -> int:
    """Smallest k such that the k largest ``values`` hold ``fraction`` of their sum."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = torch.sort(values.detach().double(), descending=True).values
    total = values.sum()
    if total <= 0:
        return 0
    shares = torch.cumsum(values, 0) / total
    # A relative slack of 1e-10 keeps k/n-type boundaries (identity matrices) exact.
    return min(int((shares < fraction - 1e-10).sum()) + 1, values.numel())


def approximate_rank(features: torch.Tensor, fraction: float = 0.99) -> int:
    """Fewest singular values whose squares hold ``fraction`` of sum(sigma^2).

    LoP's "approximate rank" (Dohare et al. 2024, Methods; ``compute_approximate_rank``
    in their code) with ``fraction=0.99``: the dimension of the smallest subspace
    that keeps 99% of the features' energy ||A||_F^2.

    Args:
        features: (samples, units) matrix (or (samples, channels, ...)).
        fraction: Share of sum(sigma^2) to reach, in (0, 1].

    Returns:
        An int in [0, min(samples, units)]; 0 for the zero matrix.

    Example:
        >>> approximate_rank(torch.diag(torch.tensor([10.0, 2.0, 0.1])))
        2
    """
    return _fewest_reaching(singular_values(features) ** 2, fraction)


def lop_stable_rank(features: torch.Tensor, fraction: float = 0.99) -> int:
    """Fewest singular values holding ``fraction`` of sum(sigma): LoP's "stable rank".

    The measure LoP plots as "stable rank" (Dohare et al. 2024, Fig. 1 and Methods;
    ``compute_abs_approximate_rank`` in their code): like :func:`approximate_rank`
    but on sigma instead of sigma^2, so small directions count more. Not the classic
    :func:`stable_rank`.

    Args:
        features: (samples, units) matrix (or (samples, channels, ...)).
        fraction: Share of sum(sigma) to reach, in (0, 1].

    Returns:
        An int in [0, min(samples, units)]; 0 for the zero matrix.

    Example:
        >>> lop_stable_rank(torch.diag(torch.tensor([10.0, 1.0, 0.2])))
        3
    """
    return _fewest_reaching(singular_values(features), fraction)


def stable_rank(features: torch.Tensor) -> float:
    """Classic stable rank ||A||_F^2 / ||A||_2^2 = sum(sigma^2) / sigma_max^2.

    Rudelson & Vershynin (2007); a continuous lower bound on the rank, dominated by
    the largest directions. 0 for the zero matrix.

    Example:
        >>> stable_rank(torch.diag(torch.tensor([2.0, 1.0])))
        1.25
    """
    return stable_rank_from_singular_values(singular_values(features))


def stable_rank_from_singular_values(sigma: torch.Tensor) -> float:
    """:func:`stable_rank` from precomputed singular values."""
    sigma = sigma.detach().double()
    top = sigma.max() if sigma.numel() else sigma.new_zeros(())
    return float((sigma**2).sum() / top**2) if top > 0 else 0.0


def numerical_rank(features: torch.Tensor, rtol: float | None = None) -> int:
    """Number of singular values above ``rtol * sigma_max``.

    The default ``rtol = max(samples, units) * machine epsilon of the dtype`` is the
    convention of ``torch.linalg.matrix_rank`` / LAPACK. LoP's "rank" counts nonzero
    singular values, i.e. ``rtol=0``.

    Example:
        >>> numerical_rank(torch.ones(4, 3))
        1
    """
    matrix = feature_matrix(features)
    return numerical_rank_from_singular_values(
        torch.linalg.svdvals(matrix), shape=tuple(matrix.shape), rtol=rtol
    )


def numerical_rank_from_singular_values(
    sigma: torch.Tensor, shape: tuple[int, int], rtol: float | None = None
) -> int:
    """:func:`numerical_rank` from precomputed singular values of a matrix of
    ``shape``."""
    if rtol is None:
        rtol = max(shape) * torch.finfo(sigma.dtype).eps
    if sigma.numel() == 0:
        return 0
    return int((sigma > rtol * sigma.max()).sum()) if sigma.max() > 0 else 0


def rank_metrics(features: torch.Tensor, fraction: float = 0.99) -> dict[str, float]:
    """All rank measures of ``features`` from one SVD.

    Returns:
        ``{"effective_rank", "approximate_rank", "lop_stable_rank", "stable_rank",
        "numerical_rank"}`` as Python floats.
    """
    matrix = feature_matrix(features.detach())
    sigma = torch.linalg.svdvals(matrix)
    return {
        "effective_rank": float(effective_rank_from_singular_values(sigma)),
        "approximate_rank": float(_fewest_reaching(sigma**2, fraction)),
        "lop_stable_rank": float(_fewest_reaching(sigma, fraction)),
        "stable_rank": stable_rank_from_singular_values(sigma),
        "numerical_rank": float(
            numerical_rank_from_singular_values(sigma, tuple(matrix.shape))
        ),
    }
