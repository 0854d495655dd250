"""Weight magnitude and per-parameter norms."""

from __future__ import annotations

import torch
from torch import nn


def weight_metrics(model: nn.Module) -> dict[str, float]:
    """Magnitude of the parameters, overall and per parameter tensor.

    LoP (Dohare et al. 2024) tracks the "average weight magnitude" because growing
    weights accompany loss of plasticity; L2 and L2-ER bound it.

    Args:
        model: Any ``nn.Module``; all trainable parameters (weights and biases) count.

    Returns:
        ``"weight_magnitude"``: mean |theta| over all trainable parameters;
        ``"parameter_norm"``: L2 norm of all of them;
        ``"<param name>/l2_norm"`` and ``"<param name>/mean_abs"`` per tensor
        (e.g. ``"0.weight/l2_norm"``).

    Example:
        >>> weight_metrics(nn.Linear(2, 1, bias=False).requires_grad_(False))
        {}
    """
    metrics: dict[str, float] = {}
    total_abs = 0.0
    total_sq = 0.0
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            values = param.detach().double()
            abs_sum = float(values.abs().sum())
            sq_sum = float((values**2).sum())
            metrics[f"{name}/l2_norm"] = sq_sum**0.5
            metrics[f"{name}/mean_abs"] = abs_sum / max(values.numel(), 1)
            total_abs += abs_sum
            total_sq += sq_sum
            count += values.numel()
    if count:
        metrics["weight_magnitude"] = total_abs / count
        metrics["parameter_norm"] = total_sq**0.5
    return metrics
