"""Spectral regularisation: keep each layer's largest singular value near a target.

SC's baseline (Prakash et al. 2026, code ``compute_spectral_regularization`` in
``permuted_mnist/train_permuted_mnist.py:197-220``, the same function in the
ImageNet, CIFAR and Slippery Ant trainers) and, with ``target=1``, the regulariser of
Lewandowski et al., *Learning Continually by Spectral Regularization* (ICLR 2025,
arXiv:2406.06811).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod, SeededGenerator
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
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if power_iterations < 1:
            raise ValueError(f"power_iterations must be >= 1, got {power_iterations}")
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

    def after_backward(self) -> None:
        if self.strength == 0:
            return
        with torch.enable_grad():
            grads = torch.autograd.grad(self.penalty(), self.params, allow_unused=True)
        with torch.no_grad():
            for param, grad in zip(self.params, grads, strict=True):
                if grad is None:
                    continue
                if param.grad is None:
                    param.grad = grad.detach().clone()
                else:
                    param.grad.add_(grad)

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
