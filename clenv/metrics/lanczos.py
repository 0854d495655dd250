"""Lanczos tridiagonalisation with full reorthogonalisation, on any device."""

from __future__ import annotations

from collections.abc import Callable

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


def lanczos(
    matvec: MatVec,
    start: torch.Tensor,
    order: int,
    stop: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
    check_every: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``order`` Lanczos steps on a symmetric operator from ``start``.

    Full reorthogonalisation against every previous Lanczos vector (classical
    Gram-Schmidt applied twice, "twice is enough"), as SC and Ghorbani et al. (2019,
    Sec. 2.2) require: without it, round-off makes copies of converged Ritz values
    ("ghosts") that distort the density. Memory: ``order`` vectors of the operator's
    size on its device.

    Stops early at an invariant subspace, e.g. once the order exceeds the number of
    distinct eigenvalues the start vector sees (beta below ``eps ** 0.75`` times the
    largest coefficient: well above round-off, far below any coupling that moves a
    Ritz value; at that point the Ritz values are exact eigenvalues and the weights
    exact projections), or when ``stop(alpha, beta)`` returns True (checked every
    ``check_every`` steps).

    Args:
        matvec: v -> A v for flat vectors on ``start``'s device and dtype.
        start: Nonzero start vector (normalised here).
        order: Maximum number of steps m.
        stop: Optional convergence test on the current coefficients.
        check_every: Steps between calls of ``stop``.

    Returns:
        ``(alpha, beta)``: float64 CPU tensors of the tridiagonal T_m's diagonal
        (length m) and off-diagonal (length m - 1).
    """
    if order < 1:
        raise ValueError(f"Lanczos order must be >= 1, got {order}")
    dim = start.numel()
    order = min(order, dim)
    basis = torch.empty(order, dim, dtype=start.dtype, device=start.device)
    basis[0] = start / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    breakdown = torch.finfo(start.dtype).eps ** 0.75
    scale = 0.0
    for step in range(order):
        vector = basis[step]
        w = matvec(vector)
        alpha = torch.dot(w, vector)
        alphas.append(float(alpha))
        previous = basis[: step + 1]
        for _ in range(2):
            w = w - previous.T @ (previous @ w)
        beta = float(w.norm())
        scale = max(scale, abs(alphas[-1]), beta)
        last = step + 1 == order
        if last or beta <= breakdown * max(scale, 1e-30):
            break
        if stop is not None and (step + 1) % check_every == 0:
            if stop(_as_double(alphas), _as_double(betas + [beta])):
                break
        betas.append(beta)
        basis[step + 1] = w / beta
    return _as_double(alphas), _as_double(betas[: len(alphas) - 1])


def ritz_pairs(
    alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the tridiagonal T: Ritz values and eigenvectors.

    Returns:
        ``(values, vectors)`` with ascending ``values`` (m,) and ``vectors`` (m, m)
        (column j belongs to value j). The Gauss quadrature weight of node j is
        ``vectors[0, j] ** 2`` (Golub & Meurant; Ghorbani et al. 2019, Eq. 7).
    """
    tridiagonal = torch.diag(alpha)
    if beta.numel():
        tridiagonal += torch.diag(beta, 1) + torch.diag(beta, -1)
    return torch.linalg.eigh(tridiagonal)


def _as_double(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)
