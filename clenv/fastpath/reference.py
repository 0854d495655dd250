"""The fast path's math in plain torch ops: the fallback and the CUDA implementation.

Computes exactly what ``mlp_kernel.cpp`` computes (same order of updates, same CBP
bookkeeping), one example at a time, on any device. It is several times slower than
the native kernel on a CPU because every example costs some thirty torch calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clenv.fastpath.cbp import CBPState


@torch.no_grad()
def train_chunk_torch(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    losses: torch.Tensor,
    start: int,
    stop: int,
    lr: float,
    weight_decay: float,
    cbp: CBPState | None = None,
) -> int:
    """Sequential batch-1 SGD on examples ``start..stop-1`` of a ReLU MLP, in place.

    Each example is predicted (``predictions[k]``, argmax of the logits) and scored
    (``losses[k]``, cross-entropy) before the update on it. Returns the index after
    the last example processed: ``stop``, or earlier when CBP has a replacement due.
    """
    num_layers = len(weights)
    decay = 1.0 - lr * weight_decay
    for k in range(start, stop):
        x = inputs[k]
        y = labels[k]
        activations = [x]
        for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            z = torch.addmv(bias, weight, activations[-1])
            if index + 1 < num_layers:
                z.clamp_(min=0)
            activations.append(z)
        logits = activations[-1]
        predictions[k] = logits.argmax()
        grad = torch.softmax(logits, 0)
        losses[k] = -torch.log_softmax(logits, 0)[y]
        grad[y] -= 1
        out_abs: list[torch.Tensor] = [None] * num_layers  # type: ignore[list-item]
        in_abs: list[torch.Tensor] = [None] * num_layers  # type: ignore[list-item]
        for index in range(num_layers - 1, -1, -1):
            weight, bias, h = weights[index], biases[index], activations[index]
            back = weight.t().mv(grad) if index > 0 else None
            if weight_decay:
                weight.mul_(decay)
                bias.mul_(decay)
            weight.addr_(grad, h, alpha=-lr)
            bias.add_(grad, alpha=-lr)
            if cbp is not None:
                out_abs[index] = weight.abs().mean(0)
                in_abs[index] = weight.abs().mean(1)
            if back is not None:
                grad = back.mul_(h > 0)
        if cbp is not None:
            hidden = activations[1:-1]
            if cbp.update(hidden, out_abs[1:], in_abs[:-1]):
                return k + 1
    return stop
