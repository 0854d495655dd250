"""The fast path's math in plain torch ops: the fallback and the CUDA implementation.

Computes exactly what ``mlp_kernel.cpp`` computes (same order of updates, same CBP
bookkeeping), one example at a time, on any device. It is several times slower than
the native kernel on a CPU because every example costs some thirty torch calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clenv.methods import ContinualBackprop


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
    cbp: ContinualBackprop | None = None,
    loss: str = "cross_entropy",
    norms: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], float] | None = None,
    anchors: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], float] | None = None,
    projection: tuple[Sequence[float], Sequence[float]] | None = None,
    crelu: bool = False,
) -> int:
    """Sequential batch-1 SGD on examples ``start..stop-1`` of a ReLU MLP, in place.

    Each example is predicted (``predictions[k]``, argmax of the logits) and scored
    (``losses[k]``: cross-entropy, or with ``loss="mse"`` the mean over the classes of
    the squared error to the one-hot label, as :func:`clenv.losses.one_hot_mse`)
    before the update on it. With ``cbp``, its
    :meth:`~clenv.methods.ContinualBackprop.update` runs after each update on the
    example's hidden features, as in the autograd loop. With ``norms``
    ``(scales, shifts, eps)``, each hidden layer is Linear -> LayerNorm -> ReLU and the
    norms' scales and shifts take the same SGD (+ L2) step. With ``anchors``
    ``(initial_weights, initial_biases, c)`` (L2 Init), each update adds
    ``c (theta - theta_0)`` to the gradient. With ``projection`` ``(weight_norms,
    norm_norms)`` (NaP), each weight with a target > 0 is rescaled to that norm after
    its update, and each LayerNorm's scale and shift jointly. With ``crelu`` the hidden
    activation is clenv.models.layers.CReLU (features 2o, 2o + 1 of unit o: relu(z),
    relu(-z)). Returns ``stop``.
    """
    num_layers = len(weights)
    decay = 1.0 - lr * weight_decay
    for k in range(start, stop):
        x = inputs[k]
        y = labels[k]
        activations, normalised = [x], []
        for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            z = torch.addmv(bias, weight, activations[-1])
            if index + 1 < num_layers:
                if norms is not None:
                    scales, shifts, eps = norms
                    centred = z - z.mean()
                    inv_std = (centred.square().mean() + eps).rsqrt()
                    normalised.append((centred * inv_std, inv_std))
                    z = torch.addcmul(shifts[index], scales[index], normalised[-1][0])
                if crelu:
                    z = torch.stack(
                        [z.clamp(min=0), z.neg().clamp_(min=0)], 1
                    ).flatten()
                else:
                    z.clamp_(min=0)
            activations.append(z)
        logits = activations[-1]
        predictions[k] = logits.argmax()
        if loss == "mse":
            grad = logits.clone()
            grad[y] -= 1
            losses[k] = grad.square().mean()
            grad.mul_(2 / grad.numel())
        else:
            grad = torch.softmax(logits, 0)
            losses[k] = -torch.log_softmax(logits, 0)[y]
            grad[y] -= 1
        for index in range(num_layers - 1, -1, -1):
            weight, bias, h = weights[index], biases[index], activations[index]
            back = weight.t().mv(grad) if index > 0 else None
            if anchors is not None:  # pulls from the old values, as the decay
                initial_weights, initial_biases, coefficient = anchors
                pulls = (weight - initial_weights[index], bias - initial_biases[index])
            if weight_decay:
                weight.mul_(decay)
                bias.mul_(decay)
            if anchors is not None:
                weight.add_(pulls[0], alpha=-lr * coefficient)
                bias.add_(pulls[1], alpha=-lr * coefficient)
            weight.addr_(grad, h, alpha=-lr)
            bias.add_(grad, alpha=-lr)
            if back is not None and crelu:  # both features' gradients, to the unit
                pairs, active = back.view(-1, 2), (h > 0).view(-1, 2)
                grad = pairs[:, 0] * active[:, 0] - pairs[:, 1] * active[:, 1]
            elif back is not None:
                grad = back.mul_(h > 0)
                if norms is not None:
                    grad = _layer_norm_backward_step(
                        grad, norms[0][index - 1], norms[1][index - 1],
                        *normalised[index - 1], lr, decay,
                    )  # fmt: skip
        if projection is not None:
            _project(weights, norms, *projection)
        if cbp is not None:
            cbp.update([h.unsqueeze(0) for h in activations[1:-1]])
    return stop


def _project(weights, norms, weight_targets, norm_targets):
    """NaP's projection: each tensor (group) with a target > 0 to that norm."""
    groups = [([w], t) for w, t in zip(weights, weight_targets, strict=True)]
    if norms is not None:
        groups += [
            ([scale, shift], t)
            for scale, shift, t in zip(norms[0], norms[1], norm_targets, strict=True)
        ]
    for group, target in groups:
        if target > 0:
            norm = torch.cat([t.reshape(-1) for t in group]).norm()
            for tensor in group:
                tensor.mul_(target / norm)


def _layer_norm_backward_step(grad, scale, shift, normalised, inv_std, lr, decay):
    """The gradient before a LayerNorm from the one after it (with the old scale),
    then the scale's and shift's SGD (+ coupled L2, ``decay = 1 - lr wd``) step."""
    scaled = grad * scale
    back = inv_std * (
        scaled - scaled.mean() - normalised * (scaled * normalised).mean()
    )
    scale.mul_(decay).add_(grad * normalised, alpha=-lr)
    shift.mul_(decay).add_(grad, alpha=-lr)
    return back
