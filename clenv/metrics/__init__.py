"""Plasticity and curvature metrics for any PyTorch training loop."""

from __future__ import annotations

from clenv.metrics.rank import effective_rank

__all__ = [
    # representation
    "effective_rank",
]
