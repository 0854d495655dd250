"""Spectral regularisation: keep each layer's largest singular value near a target.

SC's baseline (Prakash et al. 2026, code ``compute_spectral_regularization`` in
``permuted_mnist/train_permuted_mnist.py:197-220``, the same function in the
ImageNet, CIFAR and Slippery Ant trainers) and, with ``target=1``, the regulariser of
Lewandowski et al., *Learning Continually by Spectral Regularization* (ICLR 2025,
arXiv:2406.06811).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.base import PlasticityMethod, SeededGenerator, add_to_grad
from clenv.methods.layers import NORMS
from clenv.metrics.bounds import WEIGHT_LAYER_TYPES

# SC's power iteration divides by (norm + eps) (train_permuted_mnist.py:180).
POWER_ITERATION_EPS = 1e-6


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A weight as SC's power iteration sees it: (fan_in, units).

    SC's kernels are flax's (in, out) Dense and (h, w, in, out) Conv kernels, the
    latter reshaped to (h * w * in, out) (imagenet/train_imagenet.py:116-120). torch
    stores (out, in[, h, w]); the transpose of ``weight.reshape(out, -1)`` has the
    same singular values and the same shapes of SC's vectors (v: one entry per unit).
    """
    return weight.reshape(weight.shape[0], -1).T


def power_iteration(
    matrix: torch.Tensor, start: torch.Tensor, num_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SC's power iteration for the largest singular value of ``matrix`` (A).

    ``v <- A^T A v / (||A^T A v|| + eps)`` ``num_iter`` times from ``start``, then
    ``sigma = ||A v||`` (``permuted_mnist/train_permuted_mnist.py:178-195``). Runs
    under the caller's grad mode: with grad enabled, autograd differentiates through
    every iteration, as ``jax.grad`` does through SC's loop.

    Returns:
        ``(sigma, v)``.
    """
    v = start
    for _ in range(num_iter):
        v = matrix.T @ (matrix @ v)
        v = v / (torch.linalg.vector_norm(v) + POWER_ITERATION_EPS)
    return torch.linalg.vector_norm(matrix @ v), v


def power_iteration_gradients(
    weights: torch.Tensor,
    start: torch.Tensor,
    num_iter: int,
    sigma_gradient: Callable[[torch.Tensor], torch.Tensor],
    unroll: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`power_iteration` for a stack of layers, with a hand-written backward.

    The gradient of ``L(sigma)`` with respect to every layer's weight, taken through
    the ``num_iter`` unrolled iterations as autograd would (``unroll``) or at the
    final vector only, without building an autograd graph: one batched
    matrix-vector product per iteration and direction for the whole stack, and the
    weight gradient summed in one batched matrix product at the end.

    Each layer is ``W = A^T`` (torch's ``(units, fan_in)`` layout). Forward, per
    iteration i: ``w_i = A v_{i-1}``, ``y_i = A^T w_i``, ``r_i = ||y_i||``,
    ``v_i = y_i / (r_i + eps)``; then ``z = A v_T``, ``sigma = ||z||``. Backward
    from ``dz = L'(sigma) z / sigma``: ``dA += dz v_T^T``, ``dv_T = A^T dz``; per
    iteration, from the last, ``dy_i = dv_i / (r_i + eps) - (y_i . dv_i) y_i /
    ((r_i + eps)^2 r_i)``, ``dw_i = A dy_i``, ``dA += w_i dy_i^T + dw_i
    v_{i-1}^T``, ``dv_{i-1} = A^T dw_i``. Norms that are zero contribute no
    gradient, as in torch's ``vector_norm`` backward.

    Layers of different shapes share a stack zero-padded to the largest one: with
    the start vector zero on a layer's padded units, every vector above stays zero
    on the padding and the norms (so the ``eps`` terms) are those of the live
    entries, so each layer's result is its own.

    Args:
        weights: ``(layers, units, fan_in)``, zero-padded.
        start: ``(layers, units)`` start vectors, zero on padded units.
        num_iter: iterations.
        sigma_gradient: ``L'(sigma)`` for the ``(layers, 1)`` tensor of sigmas.
        unroll: differentiate through the iterations; ``False``: through
            ``sigma = ||A v_T||`` only, with ``v_T`` a constant.

    Returns:
        ``(gradient, v, sigma)``: ``dL/dW`` ``(layers, units, fan_in)``, the final
        vectors ``(layers, units)`` and the sigmas ``(layers,)``.
    """
    transposed = weights.transpose(1, 2)
    v = start.unsqueeze(1)  # row vectors: (layers, 1, units)
    vectors, images, iterates, norms = [v], [], [], []
    for _ in range(num_iter):
        image = torch.bmm(v, weights)  # (A v)^T, (layers, 1, fan_in)
        iterate = torch.bmm(image, transposed)  # (A^T A v)^T
        norm = torch.linalg.vector_norm(iterate, dim=2, keepdim=True)
        v = iterate / (norm + POWER_ITERATION_EPS)
        vectors.append(v)
        images.append(image)
        iterates.append(iterate)
        norms.append(norm)
    final_image = torch.bmm(v, weights)
    sigma = torch.linalg.vector_norm(final_image, dim=2, keepdim=True)
    outer = sigma_gradient(sigma.flatten(1)).unsqueeze(2)
    outer = torch.where(sigma > 0, outer / sigma, torch.zeros_like(sigma))
    d_image = final_image * outer
    lefts, rights = [d_image], [v]  # dA = sum left right^T
    if unroll and num_iter:
        norm_stack = torch.stack(norms)
        shifted = norm_stack + POWER_ITERATION_EPS
        inverse = shifted.reciprocal().unbind(0)
        projection = torch.where(
            norm_stack > 0,
            (shifted.square() * norm_stack).reciprocal(),
            torch.zeros_like(norm_stack),
        ).unbind(0)
        d_vector = torch.bmm(d_image, transposed)
        for i in reversed(range(num_iter)):
            iterate = iterates[i]
            dot = torch.bmm(d_vector, iterate.transpose(1, 2))
            d_iterate = torch.addcmul(
                d_vector * inverse[i], iterate, dot * projection[i], value=-1
            )
            d_image = torch.bmm(d_iterate, weights)
            lefts += [images[i], d_image]
            rights += [d_iterate, vectors[i]]
            if i:
                d_vector = torch.bmm(d_image, transposed)
    gradient = torch.bmm(
        torch.cat(rights, dim=1).transpose(1, 2), torch.cat(lefts, dim=1)
    )
    return gradient, v.squeeze(1), sigma.flatten()


# What one more stack costs per batched operation, in multiply-adds: the fixed cost
# of a torch call (a few microseconds on a CPU core) over the rate of a
# matrix-vector product (measured: ~11 us for a 100x784 one, ~3 us for 100x100).
STACK_OVERHEAD = 25_000


def _stack_layers(weights: list[torch.Tensor]) -> list[list[int]]:
    """Which weights share a padded stack (lists of indices).

    Only weights of one dtype and device share one. Starting from one stack per
    weight, merge the two stacks whose merging saves the most work, counting a
    stack's work per iteration as its padded size (``layers * units * fan_in``)
    plus :data:`STACK_OVERHEAD`, until no merge saves any: equal shapes share a
    stack, a large layer does not pad small ones up to its size.
    """

    def cost(group: list[int]) -> int:
        units = max(weights[i].shape[0] for i in group)
        fan_in = max(weights[i][0].numel() for i in group)
        return len(group) * units * fan_in + STACK_OVERHEAD

    groups = [[i] for i in range(len(weights))]
    while True:
        best, pair = 0, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                first, second = weights[groups[a][0]], weights[groups[b][0]]
                if (first.dtype, first.device) != (second.dtype, second.device):
                    continue
                saving = cost(groups[a]) + cost(groups[b]) - cost(groups[a] + groups[b])
                if saving > best:
                    best, pair = saving, (a, b)
        if pair is None:
            return groups
        a, b = pair
        groups[a] = sorted(groups[a] + groups.pop(b))


class _Stack:
    """Weights of one dtype and device, zero-padded into one ``(layers, units,
    fan_in)`` tensor (its buffers allocated once)."""

    def __init__(self, weights: list[nn.Parameter], indices: list[int]):
        self.indices = indices
        self.shapes = [(w.shape[0], w[0].numel()) for w in weights]
        units = max(n for n, _ in self.shapes)
        fan_in = max(m for _, m in self.shapes)
        self.stack = weights[0].new_zeros(len(weights), units, fan_in)
        self.start = weights[0].new_zeros(len(weights), units)
        self.stack_views = [
            self.stack[i, :n, :m] for i, (n, m) in enumerate(self.shapes)
        ]
        self.start_views = [self.start[i, :n] for i, (n, _) in enumerate(self.shapes)]


class SpectralRegularization(PlasticityMethod):
    """``strength * [sum_W (sigma_max(W)^k - target)^2 + sum_b ||b||^2
    + sum_gamma ||gamma - 1||^2]`` added to the loss's gradient.

    The term is SC's (``permuted_mnist/train_permuted_mnist.py:197-220``): every
    Linear/Conv weight contributes ``(sigma^k - target)^2`` with sigma from
    ``power_iterations`` steps of power iteration (Conv kernels flattened to
    (fan_in, out_channels)), every bias (of weight and normalisation layers)
    ``||b||^2``, every normalisation layer's gain ``||gamma - 1||^2``; other
    parameters (PPO's ``actor_logstd``) none. SC adds it to the training loss, so its
    gradient goes through the optimizer (Adam normalises it); here
    ``after_backward`` adds the gradient of the term to ``.grad``, which is the same.
    That gradient is computed by :func:`power_iteration_gradients`, a hand-written
    backward through the same iterations (no autograd graph; layers batched into
    zero-padded stacks); :meth:`penalty` is the term for autograd, and the two
    gradients agree to float round-off.

    The power iteration starts every step from the same fixed random vector per
    layer (SC: ``jax.random.PRNGKey(layer_index)`` each call, so no vector persists
    between steps) and the gradient is taken *through* the iterations
    (``unroll=True``, SC's ``jax.grad`` of the whole function). Options that are not
    SC's: ``persistent=True`` warm-starts each step from the last step's vector
    (as spectral normalisation does); ``unroll=False`` treats the final vector as a
    constant, so the gradient of sigma is ``u v^T``, the exact gradient once the
    iteration has converged, and its backward is one matrix-vector product.

    Which setting gives which paper:

    * SC's spectral baseline: the defaults (k 2, target 2.0, 10 iterations; strength
      0.1 in SC's configs, 1e-3 on Permuted MNIST and 1e-2 on ImageNet and CIFAR in
      the runs SC plots, ``preset=`` gives those).
    * Lewandowski et al. 2024: ``target=1.0`` keeps the largest singular value of
      every weight near one and pulls biases toward zero. Issue 14's check could
      read only summaries of the paper (arXiv:2406.06811 abstract: "the regularizer
      keeps the maximum singular value of each layer close to one"; a review of
      it: the spectral norm of multiplicative weights toward one, bias terms toward
      zero). NOT verified against the paper's text: the exponent (k = 2 here), the
      gains-toward-one term, whether the bias enters as its own ``||b||^2`` (here,
      as in SC) or as an extra column of W (one secondary summary says so), and
      its strength. SC's code does not cite Lewandowski et al., so SC's term is
      not evidence for theirs. No official code of theirs was found.

    Args:
        model: the network.
        optimizer: unused (the term goes through whatever optimizer steps).
        strength: the coefficient (SC: ``spectral_reg_strength``, config default
            0.1, ``permuted_mnist/config.py:40``).
        k: the exponent of sigma (SC 2, ``permuted_mnist/config.py:41``).
        target: the value sigma^k is pulled toward (SC 2.0,
            ``permuted_mnist/config.py:42``; Lewandowski et al. 1.0).
        power_iterations: iterations per step (SC 10, ``permuted_mnist/config.py:43``).
        persistent: start each step's iteration from the last step's vector instead
            of the fixed start vector (not SC's).
        unroll: differentiate through the iterations (SC) or take sigma's gradient at
            the final vector.
        seed: seed of the start vectors.
    """

    name = "spectral"
    order = 22

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        strength: float = 0.1,
        k: float = 2,
        target: float = 2.0,
        power_iterations: int = 10,
        persistent: bool = False,
        unroll: bool = True,
        seed: int = 0,
    ):
        check_range("strength", strength, 0)
        check_range("power_iterations", power_iterations, 1)
        self.strength = float(strength)
        self.k = k
        self.target = float(target)
        self.power_iterations = int(power_iterations)
        self.persistent = bool(persistent)
        self.unroll = bool(unroll)
        self.weights: list[nn.Parameter] = []
        self.biases: list[nn.Parameter] = []
        self.gains: list[nn.Parameter] = []
        for module in model.modules():
            weight = getattr(module, "weight", None)
            bias = getattr(module, "bias", None)
            if isinstance(module, WEIGHT_LAYER_TYPES):
                self.weights.append(module.weight)
            elif isinstance(module, NORMS) and isinstance(weight, nn.Parameter):
                self.gains.append(weight)
            else:
                continue
            if isinstance(bias, nn.Parameter):
                self.biases.append(bias)
        if not self.weights:
            raise ValueError(
                f"spectral: {type(model).__name__} has no Linear or Conv layer to "
                "regularise"
            )
        self.params = [
            p for p in (*self.weights, *self.biases, *self.gains) if p.requires_grad
        ]
        rng = SeededGenerator(self.weights[0].device, seed)
        self.vectors = [
            torch.randn(
                w.shape[0], generator=rng.generator, device=w.device, dtype=w.dtype
            )
            for w in self.weights
        ]
        self.stacks = [
            _Stack([self.weights[i] for i in indices], indices)
            for indices in _stack_layers(self.weights)
        ]

    def penalty(self) -> torch.Tensor:
        """The term at the current weights (differentiable; advances the persistent
        vectors when ``persistent``)."""
        total = torch.zeros(
            (), dtype=self.weights[0].dtype, device=self.vectors[0].device
        )
        for index, weight in enumerate(self.weights):
            matrix = _as_matrix(weight)
            if self.unroll:
                sigma, v = power_iteration(
                    matrix, self.vectors[index], self.power_iterations
                )
            else:
                with torch.no_grad():
                    _, v = power_iteration(
                        matrix, self.vectors[index], self.power_iterations
                    )
                sigma = torch.linalg.vector_norm(matrix @ v)
            if self.persistent:
                self.vectors[index] = v.detach().clone()
            total = total + (sigma**self.k - self.target) ** 2
        for bias in self.biases:
            total = total + bias.square().sum()
        for gain in self.gains:
            total = total + (gain - 1).square().sum()
        return self.strength * total

    @torch.no_grad()
    def after_backward(self) -> None:
        """Add the term's gradient to ``.grad``: the gradient of :meth:`penalty`
        (to float round-off), computed by :func:`power_iteration_gradients`."""
        if self.strength == 0:
            return
        for stack in self.stacks:
            weights = [self.weights[i] for i in stack.indices]
            torch._foreach_copy_(
                stack.stack_views,
                [
                    w.reshape(n, m)
                    for w, (n, m) in zip(weights, stack.shapes, strict=True)
                ],
            )
            torch._foreach_copy_(
                stack.start_views, [self.vectors[i] for i in stack.indices]
            )
            gradient, v, _ = power_iteration_gradients(
                stack.stack,
                stack.start,
                self.power_iterations,
                self._sigma_gradient,
                self.unroll,
            )
            if self.persistent:
                for row, i in enumerate(stack.indices):
                    self.vectors[i] = v[row, : stack.shapes[row][0]].clone()
            for row, weight in enumerate(weights):
                if weight.requires_grad:
                    n, m = stack.shapes[row]
                    view = gradient[row, :n, :m].reshape(weight.shape)
                    add_to_grad(weight, view, copy=True)  # a view of the stack's buffer
        doubled = 2 * self.strength
        for bias in self.biases:
            if bias.requires_grad:
                add_to_grad(bias, bias * doubled)
        for gain in self.gains:
            if gain.requires_grad:
                add_to_grad(gain, (gain - 1) * doubled)

    def _sigma_gradient(self, sigma: torch.Tensor) -> torch.Tensor:
        """d/dsigma of ``strength * (sigma^k - target)^2``."""
        return (2 * self.strength * self.k * (sigma**self.k - self.target)) * sigma ** (
            self.k - 1
        )

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "strength": self.strength,
            "k": self.k,
            "target": self.target,
            "power_iterations": self.power_iterations,
            "persistent": self.persistent,
            "unroll": self.unroll,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": [v.clone() for v in self.vectors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for vector, saved in zip(self.vectors, state["vectors"], strict=True):
            vector.copy_(saved)
