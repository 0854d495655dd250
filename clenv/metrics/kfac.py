"""Rank of the KFAC (Kronecker-factored) curvature approximation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clenv.metrics.activations import model_device, move_to_device
from clenv.metrics.hessian import curvature_context
from clenv.metrics.losses import LossFn, batch_size

KFAC_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _input_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Rows a of the input factor A = E[a a^T]: one per sample (Linear) or per sample
    and output location (Conv2d, Grosse & Martens 2016 KFC), with a ones column for
    the bias."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            padding = module._reversed_padding_repeated_twice  # noqa: SLF001
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            inputs = F.pad(inputs, padding, mode=mode)
            pad = 0
        else:
            pad = module.padding
        patches = F.unfold(
            inputs, module.kernel_size, module.dilation, pad, module.stride
        )  # (N, C*kh*kw, L)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = inputs.reshape(-1, inputs.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, torch.ones_like(rows[:, :1])], dim=1)
    return rows


def _output_rows(module: nn.Module, grad_output: torch.Tensor) -> torch.Tensor:
    """Rows g of the output-gradient factor G = E[g g^T] (per location for conv)."""
    if isinstance(module, nn.Conv2d):
        return grad_output.transpose(1, -1).reshape(-1, grad_output.shape[1])
    return grad_output.reshape(-1, grad_output.shape[-1])


def _update_triangular(factor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """R of the QR of all rows seen so far (TSQR): same singular values as the
    stacked row matrix, in (cols, cols) memory, without squaring them as a Gram
    matrix would (which would lose half the digits of the small ones)."""
    stacked = rows if factor is None else torch.cat([factor, rows])
    return torch.linalg.qr(stacked, mode="r")[1][: stacked.shape[1]]


class _FactorRows:
    """Accumulates the row matrices of A and G of every layer (as TSQR factors)."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.input_factors: dict[str, torch.Tensor] = {}
        self.output_factors: dict[str, torch.Tensor] = {}
        self.input_rows: dict[str, int] = dict.fromkeys(layers, 0)
        self.output_rows: dict[str, int] = dict.fromkeys(layers, 0)
        self.eps: dict[str, float] = {}
        self.calls: list[tuple[str, torch.Tensor]] = []

    def hook(self, name: str):
        def record(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            rows = _input_rows(module, args[0].detach()).double()
            self.input_factors[name] = _update_triangular(
                self.input_factors.get(name), rows
            )
            self.input_rows[name] += rows.shape[0]
            self.eps[name] = torch.finfo(args[0].dtype).eps
            self.calls.append((name, output))
            # Later in-place ops (ReLU(inplace=True)) act on a copy, so the recorded
            # output stays the layer's output for autograd.grad.
            return output.clone()

        return record

    def add_output_gradients(self, loss: torch.Tensor, scale: float) -> None:
        """Per-sample output gradients of a batch-mean ``loss`` (times ``scale``)."""
        grads = torch.autograd.grad(
            loss, [output for _, output in self.calls], allow_unused=True
        )
        for (name, _), grad in zip(self.calls, grads, strict=True):
            if grad is None:
                continue
            rows = _output_rows(self.layers[name], grad.detach()).double() * scale
            self.output_factors[name] = _update_triangular(
                self.output_factors.get(name), rows
            )
            self.output_rows[name] += rows.shape[0]


def _rank(factor: torch.Tensor, rows: int, rtol: float | None, eps: float) -> int:
    """Numerical rank of the row matrix whose TSQR factor is ``factor``."""
    sigma = torch.linalg.svdvals(factor)
    if sigma.numel() == 0 or sigma.max() <= 0:
        return 0
    tolerance = max(rows, factor.shape[1]) * eps if rtol is None else rtol
    return int((sigma > tolerance * sigma.max()).sum())


def kfac_rank(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    rtol: float | None = None,
    seed: int | None = 0,
    train_mode: bool = False,
) -> dict[str, float]:
    """Rank of the KFAC approximation, sum over layers of rank(A_l) * rank(G_l).

    KFAC (Martens & Grosse 2015) approximates a linear layer's curvature block by
    A (x) G: A = E[a a^T] over the layer's inputs a (with a 1 appended for the bias),
    G = E[g g^T] over the gradients g of the per-sample loss w.r.t. the layer's
    outputs (pre-activations); rank(A (x) G) = rank(A) rank(G). SC (Prakash et al.
    2026, Sec. 5) use it to tie the Hessian rank to the rank of each layer's input
    features. Conv2d layers use KFC's patches x locations (Grosse & Martens 2016).

    **How G is sampled**: from the gradients of ``loss_fn`` itself. With
    :func:`~clenv.metrics.cross_entropy_loss` (true labels) G is the *empirical*
    Fisher factor; with :func:`~clenv.metrics.sampled_cross_entropy_loss` (labels
    drawn from the model, one draw per sample, seeded) it is the *model-sampled*
    (MC) Fisher factor, the one KFAC uses for the GGN. For a PPO loss it is the
    gradient covariance of that loss. Ranks are invariant to the batch-mean scaling.

    Args:
        model: Network with ``nn.Linear`` / ``nn.Conv2d`` layers (other layers are
            ignored; a layer called several times pools all calls).
        loss_fn: ``loss_fn(model, batch) -> scalar`` batch-mean loss.
        data: List of batches.
        rtol: Singular values of the row matrices below ``rtol * sigma_max`` count
            as zero; default ``max(rows, cols) * machine eps`` of the activations'
            dtype (``torch.linalg.matrix_rank``'s rule). The rows are accumulated
            in float64 as a TSQR factor, so this equals the rank of the stacked
            rows.
        seed: Seed for random losses (sampled labels); the global RNG is untouched.
        train_mode: Evaluate in train mode.

    Returns:
        ``"kfac_rank"`` (the sum), ``"kfac_rank_max"`` (sum of (I_l + 1) O_l, the
        full-rank value), and per layer ``"<layer>/input_rank"``,
        ``"<layer>/output_grad_rank"``, ``"<layer>/kfac_rank"``.
    """
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, KFAC_LAYER_TYPES) and module.weight.requires_grad
    }
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no trainable nn.Linear or nn.Conv2d layer"
        )
    factors = _FactorRows(layers)
    device = model_device(model)
    with curvature_context(model, seed, train_mode), torch.enable_grad():
        handles = [
            module.register_forward_hook(factors.hook(name))
            for name, module in layers.items()
        ]
        try:
            for batch in data:
                batch = move_to_device(batch, device)
                factors.calls.clear()
                loss = loss_fn(model, batch)
                factors.add_output_gradients(loss, scale=batch_size(batch))
        finally:
            for handle in handles:
                handle.remove()
    metrics: dict[str, float] = {}
    total = maximum = 0
    for name in layers:
        if name not in factors.output_factors:
            continue
        eps = factors.eps[name]
        input_factor = factors.input_factors[name]
        output_factor = factors.output_factors[name]
        input_rank = _rank(input_factor, factors.input_rows[name], rtol, eps)
        grad_rank = _rank(output_factor, factors.output_rows[name], rtol, eps)
        metrics[f"{name}/input_rank"] = float(input_rank)
        metrics[f"{name}/output_grad_rank"] = float(grad_rank)
        metrics[f"{name}/kfac_rank"] = float(input_rank * grad_rank)
        total += input_rank * grad_rank
        maximum += input_factor.shape[1] * output_factor.shape[1]
    metrics["kfac_rank"] = float(total)
    metrics["kfac_rank_max"] = float(maximum)
    return metrics
