"""Fast online batch-1 training of ReLU MLPs (Permuted MNIST), without autograd.

See :class:`FastMLPTrainer` and docs/agents/supervised.md (fast path design and its
equivalence guarantee).
"""

from __future__ import annotations

from clenv.fastpath.batched import LOCKSTEP_COMPONENTS, BatchedMLPTrainer, SeedTrainer
from clenv.fastpath.native import build_kernel, load_kernel
from clenv.fastpath.reference import train_chunk_torch
from clenv.fastpath.trainer import (
    SUPPORTED_COMPONENTS,
    FastMLPTrainer,
    FastPathSupport,
    fast_path_supports,
    mlp_linear_layers,
)

__all__ = [
    "FastMLPTrainer",
    "BatchedMLPTrainer",
    "SeedTrainer",
    "fast_path_supports",
    "FastPathSupport",
    "mlp_linear_layers",
    "SUPPORTED_COMPONENTS",
    "LOCKSTEP_COMPONENTS",
    # building blocks
    "build_kernel",
    "load_kernel",
    "train_chunk_torch",
]
