"""Effective-rank ascent: the ER half of L2-ER (Prakash, He, Guo et al., "Spectral
Collapse Drives Loss of Plasticity in Deep Continual Learning", ICML 2026; "SC").

SC's L2-ER interleaves two updates instead of summing two losses:

1. every minibatch, the ordinary optimizer step on the task loss plus coupled L2
   (:class:`clenv.methods.L2`);
2. every ``interval`` (U) minibatches, ONE plain gradient-ascent step
   ``theta <- theta + ascent_lr * grad_theta mean_l erank(H_l)``, applied directly to
   the parameters: no optimizer, no momentum, no weight decay, ``.grad`` untouched.
   ``H_l`` is the (samples x units) post-activation matrix of hidden layer ``l`` on the
   buffer of the last U minibatches' inputs, recomputed with the current weights and
   not centred; ``erank`` is :func:`clenv.metrics.effective_rank`.

"ER only" is this class alone (lambda = 0).

When the ascent runs: ``schedule="step"`` buffers each ``after_step(inputs)`` and
ascends after every U-th step on the buffer (SC's Permuted MNIST,
permuted_mnist/train_permuted_mnist.py:323-337: the U minibatches, then the ascent).
``schedule="epoch"`` ascends once per epoch on the inputs the loop hands over: with
``timing="before"`` in ``before_epoch(inputs)`` on the inputs about to be trained on
(SC's Slippery Ant, rlopt/ppo_nonstationary.py:513-520: the ascent, then the epoch's
minibatches; SC's ImageNet, imagenet/train_imagenet.py:281-284, and CIFAR,
incremental_cifar/train_incremental_cifar.py:294-302: the ascent on the next U
minibatches, then training on them), with ``timing="after"`` in ``after_epoch(inputs)``.

What is ascended: ``layer_groups="all"`` takes the mean effective rank over every ranked
layer; ``layer_groups="by_network"`` sums, over the model's top-level submodules (a PPO
agent's ``actor_mean`` and ``critic``), the mean effective rank of each one's ranked
layers: SC's RL objective mean(actor layers) + mean(critic layers)
(rlopt/ppo_nonstationary.py:87-93).

How the gradient is computed (``gradient="closed_form"``, the default): no autograd
graph through the SVD. :func:`effective_rank_gradient` gives d erank / d H in closed form
from an eigendecomposition of H's Gram matrix in float64 (an SVD where that is not
accurate enough), and the ascent then

* for a ReLU MLP (every ranked layer the output of an ``nn.ReLU`` in a chain
  ``Linear -> ReLU -> Linear -> ReLU ...`` of an ``nn.Sequential`` whose first
  ``Linear`` reads the ascent's inputs: :class:`clenv.models.PermutedMNISTMLP`, the
  fast path's models, a PPO agent's ReLU actor and critic) runs the forward without a
  graph and backpropagates the feature gradients of all ranked layers by hand, in one
  backward sweep per chain that updates each ``Linear`` in place
  (:func:`ascend_relu_chain`); a caller that knows the model is its one chain (the
  batch-1 fast path) passes ``runs_as_chain=True`` to :meth:`EffectiveRankAscent.ascend`
  and the ascent computes that forward itself instead of checking it through hooks;
* for any other model (ConvNet, ResNet, a Tanh critic) runs the forward with a graph and
  calls ``torch.autograd.grad(features, params, grad_outputs=feature_gradients)``: the
  network's backward by autograd, the SVD's by the closed form.

Both give the gradient of the same objective as autograd through
``torch.linalg.svdvals`` (``gradient="autograd"``, the previous implementation, kept
for comparison): equal to 1e-10 in float64 (tests/test_methods_er.py), and in float32
as accurate as the float32 SVD it replaces (relative error against the exact gradient
~1e-7 kappa for both, kappa the features' condition number).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from clenv.methods.base import PlasticityMethod
from clenv.methods.layers import (
    HiddenLayer,
    capture_features,
    find_hidden_layers,
    recording_paused,
)
from clenv.metrics import effective_rank
from clenv.metrics.activations import (
    ForwardFn,
    default_forward,
    preserved_training_state,
    resolve_layers,
)
from clenv.metrics.hessian import trainable_parameters
from clenv.metrics.rank import (  # its epsilon: p = sigma / max(sum sigma, eps)
    _EPS,
    effective_rank_from_singular_values,
)

SCHEDULES = ("step", "epoch")
TIMINGS = ("after", "before")
LAYER_GROUPS = ("all", "by_network")
GRADIENTS = ("closed_form", "autograd")
ROUTES = ("gram", "svd")

# The Gram route is used where lambda_min >= ratio * lambda_max (lambda: eigenvalues of
# the Gram matrix, sigma^2). In float64 its relative error against the SVD route grows
# as about 1e-17 kappa^2 (kappa = sigma_max / sigma_min; measured 9e-12 at kappa 1e3,
# 6e-10 at 1e4, 5e-8 at 1e5, 3e-6 at 1e6): float64 features need kappa <= ~3e3 for
# 1e-10. Float32 features tolerate kappa <= 1e6, where that error stays below their own
# float32 rounding (~1e-7 kappa: measured 1.5e-5 at 1e3, 1.7e-2 at 1e6 for both this
# route and the float32 SVD autograd used).
_GRAM_MIN_RATIO = {torch.float64: 1e-7}
_GRAM_MIN_RATIO_DEFAULT = 1e-12


def _effective_rank_and_sigma_gradient(
    sigma: np.ndarray, counted: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``erank`` of singular values ``sigma`` (..., k) and d erank / d sigma.

    Exactly :func:`clenv.metrics.effective_rank` with its epsilon: with
    ``S = max(sum sigma, eps)``, ``p = sigma / S`` and ``g_i = d erank / d p_i =
    -erank (log(p_i + eps) + p_i / (p_i + eps))``, ``d erank / d sigma_i = (g_i -
    [sum sigma >= eps] sum_j g_j p_j) / S`` (the clamp passes no gradient below eps).
    No division by sigma_i - sigma_j, so equal and zero singular values are harmless.

    ``counted`` (bool, like ``sigma``): only those values are singular values (the
    others, placeholders, count as zeros); the derivative formula is still evaluated
    at every entry, so a placeholder gets the value a singular value equal to it
    would (see :func:`_gram_route`).

    In numpy, on the host, in ``sigma``'s dtype: a few dozen operations on (..., k)
    values, each several times cheaper in numpy than as a torch call.
    """
    counted_sigma = sigma if counted is None else sigma * counted
    rank = effective_rank_from_singular_values(counted_sigma)[..., None]
    total = counted_sigma.sum(-1, keepdims=True)
    scale = np.maximum(total, _EPS)
    p = counted_sigma / scale
    g = -rank * (np.log(p + _EPS) + p / (p + _EPS))
    through_sum = (g * p).sum(-1, keepdims=True) * (total >= _EPS)
    if counted is not None:
        p = sigma / scale
        g = -rank * (np.log(p + _EPS) + p / (p + _EPS))
    return rank[..., 0], (g - through_sum) / scale


def _svd_route(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """erank and its gradient ``U diag(d erank / d sigma) V^T`` from the SVD, in the
    matrix's dtype: the factorisation autograd's ``svdvals`` backward uses."""
    wide = matrix.shape[-2] < matrix.shape[-1]
    tall = matrix.mT if wide else matrix
    left, sigma, right_t = torch.linalg.svd(tall, full_matrices=False)
    rank, sigma_gradient = _effective_rank_and_sigma_gradient(sigma.cpu().numpy())
    sigma_gradient = torch.from_numpy(sigma_gradient).to(matrix.device)
    gradient = (left * sigma_gradient.unsqueeze(-2)) @ right_t
    rank = torch.from_numpy(np.asarray(rank)).to(matrix.device)
    return rank, gradient.mT if wide else gradient


def _gram_route(
    matrix: torch.Tensor,
    min_ratio: float,
    relu_features: bool,
    gradient_scale: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """erank and its gradient from the float64 Gram matrix's eigendecomposition.

    With ``K = H^T H = V diag(lambda) V^T`` (or ``H H^T`` when H is wide: the smaller
    side), ``sigma = sqrt(lambda)`` and ``U = H V diag(1 / sigma)``, so the gradient
    ``U diag(c) V^T = H V diag(c / sigma) V^T``: a function of K, which clustered or
    equal eigenvalues leave well defined (their eigenvectors are not, their span is).
    Dividing by sigma is accurate only where sigma_min is not too small: the third
    return value says, per matrix, whether the smallest eigenvalue is at least
    ``min_ratio`` times the largest (where not, the caller takes the SVD route).

    Zero lines of ReLU features (a unit inactive on every sample, or a sample that
    activates no unit, on K's side) give K a zero row and column j, hence a zero
    singular value whose gradient is masked by the ReLU. The diagonal entry is set to
    the mean of the others, which makes e_j an exact eigenvector of eigenvalue d (K is
    block diagonal) without touching the rest of the spectrum; the k eigenvalues
    closest to d are then counted as zeros in erank. Their gradient term
    ``(c / sigma) H e_j e_j^T`` is 0 since ``H e_j = 0``; where the solver mixes e_j
    with a genuine eigenvector of the same eigenvalue, both get the same weight, so
    the mixture is exact too.

    The spectrum's arithmetic ((..., k) values) runs in numpy on the host, where
    ``gradient_scale`` ((...) factors, or None) multiplies each matrix's weights.
    """
    wide = matrix.shape[-2] < matrix.shape[-1]
    h = matrix.to(torch.float64)
    gram = h @ h.mT if wide else h.mT @ h
    has_dead = False
    if relu_features:  # the zero lines' test on the host (a few numpy calls)
        diagonal = gram.diagonal(dim1=-2, dim2=-1)
        host_diagonal = diagonal.cpu().numpy()
        dead = host_diagonal == 0
        has_dead = bool(dead.any())
    if has_dead:
        num_dead = dead.sum(-1, keepdims=True)
        live = np.maximum(dead.shape[-1] - num_dead, 1)
        placeholder = diagonal.sum(-1, keepdim=True).cpu().numpy() / live
        diagonal.add_(torch.from_numpy(dead * placeholder).to(diagonal.device))
    eigenvalues, vectors = torch.linalg.eigh(gram)
    eigenvalues = eigenvalues.cpu().numpy()
    counted = None
    if has_dead:
        distance = np.abs(eigenvalues - placeholder)
        closeness = distance.argsort(-1, kind="stable").argsort(-1, kind="stable")
        counted = closeness >= num_dead
    if counted is None:
        smallest, largest = eigenvalues[..., 0], eigenvalues[..., -1]
    else:
        smallest = np.where(counted, eigenvalues, np.inf).min(-1)
        largest = np.where(counted, eigenvalues, -np.inf).max(-1)
    accurate = (smallest >= min_ratio * largest) & (largest > 0)
    sigma = np.sqrt(np.maximum(eigenvalues, 0))
    rank, sigma_gradient = _effective_rank_and_sigma_gradient(sigma, counted)
    weights = np.divide(
        sigma_gradient,
        sigma,
        out=np.zeros_like(sigma_gradient),
        where=np.broadcast_to(accurate[..., None], sigma.shape),
    )
    if gradient_scale is not None:
        weights *= gradient_scale[..., None]
    weights = torch.from_numpy(weights).to(vectors.device)
    # f(K) = V diag(c / sigma) V^T in float64 (small: the Gram's side); the product
    # with H in H's dtype (float32: the gradient then carries float32 rounding, ~1e-7
    # kappa relative, as the features' own rounding does).
    function = ((vectors * weights.unsqueeze(-2)) @ vectors.mT).to(matrix.dtype)
    gradient = function @ matrix if wide else matrix @ function
    rank = torch.from_numpy(np.asarray(rank)).to(matrix.device, matrix.dtype)
    return rank, gradient, np.asarray(accurate)


def effective_rank_gradient(
    features: torch.Tensor,
    route: Literal["gram", "svd"] = "gram",
    relu_features: bool = False,
    gradient_scale: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective rank of feature matrices and its gradient, in closed form.

    The gradient autograd gives through :func:`clenv.metrics.effective_rank`
    (``torch.linalg.svdvals``), without a graph: d erank / d H = U diag(d erank / d
    sigma) V^T with d erank / d sigma in closed form (see
    :func:`_effective_rank_and_sigma_gradient`; it never divides by sigma_i -
    sigma_j).

    Routes:

    * ``"svd"``: U, sigma, V from ``torch.linalg.svd`` of the (tall) matrix in its own
      dtype, the factorisation autograd's backward uses: equal to autograd to
      round-off in every case, zero and repeated singular values included (where U is
      not unique, e.g. zero singular values, both make LAPACK's same choice).
    * ``"gram"`` (faster: an eigendecomposition of the smaller Gram matrix ``H^T H``
      or ``H H^T`` instead of an SVD with vectors): in float64, U obtained as ``H V /
      sigma``, i.e. the gradient ``H V diag(c / sigma) V^T``; used for a matrix only
      where its smallest eigenvalue is at least 1e-7 (float64 features) or 1e-12
      (other dtypes) times its largest. There it matches the SVD route to 1e-10 in
      float64 (measured relative error ~1e-17 kappa^2, kappa the condition number);
      float32 features get the spectrum and eigenvectors in float64 and the
      products with H in float32, as accurate as the float32 SVD (both ~1e-7 kappa
      from the exact gradient). Other matrices take the ``"svd"`` route. Zero
      singular values have no unique gradient (it depends on LAPACK's choice of
      U), so they always do, except with ``relu_features``: zero lines of ReLU
      features (a unit inactive on every sample, a sample activating no unit) hold
      zero singular values whose gradient the ReLU's backward multiplies by 0, and
      the Gram route returns 0 there (see :func:`_gram_route`).

    Args:
        features: (..., samples, units): one feature matrix or a batch of independent
            ones (flatten (samples, channels, ...) maps to (samples, rest) first).
        route: ``"gram"`` or ``"svd"`` (see above).
        relu_features: the features are ReLU outputs, whose gradient on a zero entry
            is masked by the ReLU's backward (lets zero lines take the Gram route).
        gradient_scale: optional factors, one per matrix (``features.shape[:-2]``),
            that multiply each gradient (a weighted objective's), folded into the
            Gram route's spectrum instead of a pass over the gradients.

    Returns:
        ``(erank, gradient)``: erank of shape ``features.shape[:-2]`` and the gradient
        of each matrix's erank, both in the features' dtype.

    Example:
        >>> h = torch.tensor([[3.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
        >>> rank, gradient = effective_rank_gradient(h)
        >>> h = h.requires_grad_()
        >>> expected = torch.autograd.grad(effective_rank(h), h)[0]
        >>> bool(torch.allclose(gradient, expected, rtol=1e-12, atol=0))
        True
    """
    if features.dim() < 2 or features.shape[-2] == 0 or features.shape[-1] == 0:
        raise ValueError(
            "effective_rank_gradient needs (..., samples, units) matrices with at least "
            f"one sample and one unit, got shape {tuple(features.shape)}"
        )
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    features = features.detach()
    scale = None
    if gradient_scale is not None:
        scale = np.asarray(gradient_scale, dtype=np.float64)
        if scale.shape != features.shape[:-2]:
            raise ValueError(
                f"gradient_scale needs one factor per matrix, shape "
                f"{tuple(features.shape[:-2])}, got shape {scale.shape}"
            )
    if route == "svd":
        rank, gradient = _svd_route(features)
        if scale is not None:
            gradient.mul_(torch.from_numpy(scale[..., None, None]).to(gradient))
        return rank, gradient
    min_ratio = _GRAM_MIN_RATIO.get(features.dtype, _GRAM_MIN_RATIO_DEFAULT)
    rank, gradient, accurate = _gram_route(features, min_ratio, relu_features, scale)
    if accurate.all():
        return rank, gradient
    matrices = features.reshape(-1, *features.shape[-2:])
    flat_rank, flat_gradient = rank.reshape(-1), gradient.reshape(matrices.shape)
    flat_scale = None if scale is None else scale.reshape(-1)
    for index in np.flatnonzero(~accurate).tolist():
        flat_rank[index], flat_gradient[index] = _svd_route(matrices[index])
        if flat_scale is not None:
            flat_gradient[index].mul_(float(flat_scale[index]))
    return rank, gradient


# aten's ReLU backward: ``gradient`` where ``output > 0``, else 0 (one call instead of
# a comparison and a product).
_relu_backward = torch.ops.aten.threshold_backward.default


@torch.no_grad()
def ascend_relu_chain(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    layer_inputs: Sequence[torch.Tensor],
    features: Sequence[torch.Tensor],
    feature_gradients: Sequence[torch.Tensor | None],
    ascent_lr: float,
) -> None:
    """One ascent step on a ReLU chain from the gradients of its features, in place.

    The chain is ``h_l = relu(x_l W_l^T + b_l)``, ``x_{l+1} = h_l``; the objective J
    depends on the parameters only through the features h_l, whose gradients dJ/dh_l
    are given (None: J does not read h_l directly). One backward sweep from the last
    layer computes ``delta_l = (dJ/dh_l + delta_{l+1} W_{l+1}) * [h_l > 0]`` and
    applies ``W_l += ascent_lr * delta_l^T x_l``, ``b_l += ascent_lr * sum delta_l``
    (after ``W_l`` has served ``delta_{l-1}``: the step uses the gradient at the
    weights before it, as autograd would). Leading batch dimensions (one chain per
    seed, stacked) broadcast.

    Args:
        weights: (..., out, in) weight of each Linear, first to last.
        biases: (..., out) bias of each Linear, or None.
        layer_inputs: (..., samples, in) what each Linear read (``x_l``).
        features: (..., samples, out) each ReLU's output (``h_l``).
        feature_gradients: dJ/dh_l for each layer, or None.
        ascent_lr: the step size.
    """
    # dJ/dh_l: its direct part plus, through the layers above, delta_{l+1} W_{l+1}
    # (one addmm/baddbmm when both are there).
    gradient = None
    for index in range(len(weights) - 1, -1, -1):
        if gradient is None:
            gradient = feature_gradients[index]
            if gradient is None:
                continue
        # The ReLU's backward, gradient * [h > 0], in one call.
        delta = _relu_backward(gradient, features[index], 0)
        # The layer below needs W_l before this step.
        weight = weights[index]
        if index > 0:
            below = feature_gradients[index - 1]
            if below is None:
                gradient = delta @ weight
            elif weight.dim() == 2:
                gradient = torch.addmm(below, delta, weight)
            else:
                gradient = torch.baddbmm(below, delta, weight)
        if weight.dim() == 2:
            weight.addmm_(delta.mT, layer_inputs[index], alpha=ascent_lr)
        else:
            weight.baddbmm_(delta.mT, layer_inputs[index], alpha=ascent_lr)
        if biases[index] is not None:
            biases[index].add_(delta.sum(-2), alpha=ascent_lr)


class EffectiveRankAscent(PlasticityMethod):
    """One gradient-ascent step on the effective rank of hidden features.

    Args:
        model: the network.
        optimizer: unused (the ascent bypasses it); kept for a uniform signature.
        ascent_lr: eta_ER, the ascent step size (SC PMNIST: 1e-2 with L2, 1e-4 alone).
        interval: U, minibatches between ascents, and the buffer length
            (``schedule="step"``).
        schedule: ``"step"``: buffer each ``after_step(inputs)`` and ascend every
            ``interval`` steps on the buffer; ``"epoch"``: ascend once per epoch on
            the inputs given to the epoch hook that ``timing`` names (PPO's rollout;
            SC's supervised loops: the U minibatches of a group).
        timing: with ``schedule="epoch"``: ``"after"`` ascends in
            ``after_epoch(inputs)``, ``"before"`` in ``before_epoch(inputs)`` (SC's
            RL, ImageNet and CIFAR code). ``schedule="step"`` takes only ``"after"``.
        layer_groups: ``"all"``: the objective is the mean effective rank over every
            ranked layer; ``"by_network"``: the sum over the model's top-level
            submodules of the mean over each one's ranked layers (SC's RL objective,
            mean over actor layers + mean over critic layers). A ranked layer that is
            itself a direct child of the model counts to the model's own group.
        layers: names (``model.named_modules()``) of the modules whose outputs are
            ranked; default: the activation of every hidden layer found by
            :func:`clenv.methods.find_hidden_layers`.
        last_layers: keep only the last k of those (SC ImageNet: the last 2 FC).
        hidden_layers: explicit hidden-layer spec, for models that are not
            ``nn.Sequential`` (see :func:`clenv.methods.find_hidden_layers`).
        forward_fn: ``forward_fn(model, inputs)`` that runs every ranked layer (PPO's
            agent: actor and critic); default ``model(inputs)``.
        gradient: ``"closed_form"``: the objective's gradient without an autograd
            graph through the SVD, and for ReLU MLPs without any graph (see the
            module docstring); ``"autograd"``: autograd through
            ``torch.linalg.svdvals`` (the reference; slower). Same step up to
            rounding.
    """

    name = "er"
    order = 60

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        ascent_lr: float = 1e-4,
        interval: int = 100,
        schedule: Literal["step", "epoch"] = "step",
        timing: Literal["after", "before"] = "after",
        layer_groups: Literal["all", "by_network"] = "all",
        layers: Sequence[str] | None = None,
        last_layers: int | None = None,
        hidden_layers: Sequence[HiddenLayer | tuple[str, str, str]] | None = None,
        forward_fn: ForwardFn | None = None,
        gradient: Literal["closed_form", "autograd"] = "closed_form",
    ):
        if ascent_lr < 0:
            raise ValueError(f"ascent_lr must be >= 0, got {ascent_lr}")
        if interval < 1:
            raise ValueError(
                f"interval must be a positive number of steps, got {interval}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        if timing == "before" and schedule != "epoch":
            raise ValueError(
                "timing='before' ascends in before_epoch(inputs), which only "
                "schedule='epoch' uses; pass schedule='epoch' (or timing='after')"
            )
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if layer_groups not in LAYER_GROUPS:
            raise ValueError(
                f"layer_groups must be one of {LAYER_GROUPS}, got {layer_groups!r}"
            )
        self.model = model
        self.ascent_lr = float(ascent_lr)
        self.interval = int(interval)
        self.schedule = schedule
        self.timing = timing
        self.last_layers = last_layers
        self.layer_groups = layer_groups
        self.forward_fn = forward_fn or default_forward
        self.gradient = gradient
        if layers is None:
            found = find_hidden_layers(model, hidden_layers)
            self.layer_names = [h.name for h in found]
            self.feature_modules = [h.activation for h in found]
        else:
            self.layer_names = list(layers)
            self.feature_modules = list(
                resolve_layers(model, self.layer_names).values()
            )
        if last_layers is not None:
            if not 1 <= last_layers <= len(self.feature_modules):
                raise ValueError(
                    f"last_layers must be in 1..{len(self.feature_modules)} (the "
                    f"layers found: {self.layer_names}), got {last_layers}"
                )
            self.layer_names = self.layer_names[-last_layers:]
            self.feature_modules = self.feature_modules[-last_layers:]
        # The group of each ranked layer: the top-level submodule that holds it.
        self.groups = [
            name.split(".", 1)[0] if "." in name else "" for name in self.layer_names
        ]
        self.params = trainable_parameters(model)
        # d objective / d erank of each ranked layer: 1 / (layers in its group).
        sizes = {g: self.groups.count(g) for g in self.groups}
        self.layer_weights = [
            1.0 / (sizes[g] if layer_groups == "by_network" else len(self.groups))
            for g in self.groups
        ]
        # The Linear-ReLU chains that hold the ranked layers, where the manual
        # backward applies (None: the features route).
        self.relu_chains = _find_relu_chains(self.feature_modules, model, self.params)
        self.model_has_buffers = any(True for _ in model.buffers())
        # to be filled in runtime
        self.num_steps = 0
        self.num_ascents = 0
        self.buffer: list[torch.Tensor] = []

    def record(self, inputs: torch.Tensor, steps: int = 1, copy: bool = True) -> bool:
        """Buffer the inputs of ``steps`` training steps (``schedule="step"``).

        Args:
            inputs: the steps' inputs, concatenated along the batch dim.
            steps: how many optimizer steps they stand for (a fast path that runs
                several batch-1 steps at once passes their count).
            copy: buffer a copy (default); False buffers ``inputs`` itself, for a
                caller that leaves them unchanged until the buffer is emptied (the
                fast path, when the ascent follows in the same call).

        Returns:
            Whether an ascent is due now (every ``interval`` steps): then call
            :meth:`ascend_on_buffer`.
        """
        if not torch.is_tensor(inputs):
            raise ValueError(
                "ER needs the minibatch inputs: call method.after_step(inputs) with "
                f"the tensor the model was trained on (got {type(inputs).__name__})"
            )
        if steps > self.steps_until_ascent():
            raise ValueError(
                f"record(steps={steps}) runs past the next ascent, due in "
                f"{self.steps_until_ascent()} steps; record at most that many at once"
            )
        self.buffer.append(inputs.detach().clone() if copy else inputs.detach())
        self.num_steps += steps
        return self.num_steps % self.interval == 0

    def steps_until_ascent(self) -> int:
        """Steps left until the next ascent (``schedule="step"``): 1..interval."""
        return self.interval - self.num_steps % self.interval

    def ascend_on_buffer(self, runs_as_chain: bool = False) -> torch.Tensor:
        """Ascend on the buffered inputs and empty the buffer.

        Args:
            runs_as_chain: see :meth:`ascend`.
        """
        buffer = self.buffer
        inputs = buffer[0] if len(buffer) == 1 else torch.cat(buffer)
        if runs_as_chain:
            objective = self.ascend(inputs, runs_as_chain=True)
        else:  # the one-argument call that wrappers of ascend() expect
            objective = self.ascend(inputs)
        buffer.clear()
        return objective

    def after_step(self, inputs: Any = None) -> None:
        if self.schedule == "step" and self.record(inputs):
            self.ascend_on_buffer()

    @property
    def ascent_group_size(self) -> int | None:
        """U (``interval``) with ``schedule="epoch"`` and ``timing="before"``: the
        ascent on the next U minibatches, then training on them (SC's ImageNet and
        CIFAR); else None."""
        if self.schedule == "epoch" and self.timing == "before":
            return self.interval
        return None

    def before_epoch(self, inputs: Any = None) -> None:
        if self.schedule == "epoch" and self.timing == "before":
            self.ascend(self._epoch_inputs(inputs, "before_epoch"))

    def after_epoch(self, inputs: Any = None) -> None:
        if self.schedule == "epoch" and self.timing == "after":
            self.ascend(self._epoch_inputs(inputs, "after_epoch"))

    @staticmethod
    def _epoch_inputs(inputs: Any, hook: str) -> torch.Tensor:
        if not torch.is_tensor(inputs):
            raise ValueError(
                f"ER with schedule='epoch' needs method.{hook}(inputs) with the "
                "epoch's inputs (PPO: the rollout's observations; supervised: the "
                f"group's minibatch inputs), got {type(inputs).__name__}"
            )
        return inputs

    def features(self, inputs: Any) -> list[torch.Tensor]:
        """The ranked layers' features on ``inputs``, with their graph."""
        with capture_features(self.feature_modules) as features:
            self.forward_fn(self.model, inputs)
        return features

    def objective(self, inputs: Any) -> torch.Tensor:
        """The ascended objective on ``inputs`` (differentiable): mean_l erank(H_l),
        or with ``layer_groups="by_network"`` the sum over groups of that mean."""
        ranks = []
        for feature in self.features(inputs):
            matrix = feature.reshape(feature.shape[0], -1)
            # H and H^T have the same singular values; LAPACK is ~3x faster on the
            # tall one (the buffer usually holds fewer samples than units).
            tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.mT
            ranks.append(effective_rank(tall))
        if self.layer_groups == "all":
            return torch.stack(ranks).mean()
        by_group: dict[str, list[torch.Tensor]] = {}
        for group, rank in zip(self.groups, ranks, strict=True):
            by_group.setdefault(group, []).append(rank)
        return torch.stack([torch.stack(g).mean() for g in by_group.values()]).sum()

    def ascend(self, inputs: Any, runs_as_chain: bool = False) -> torch.Tensor:
        """One ascent step ``theta += ascent_lr * grad objective(inputs)``.

        Args:
            inputs: what ``forward_fn(model, inputs)`` reads.
            runs_as_chain: the caller guarantees that ``forward_fn(model, inputs)``
                is the model's one ReLU chain applied to ``inputs`` (flattened per
                sample) and nothing else: the fast path, whose kernel trains the
                model as that chain. With the closed-form gradient the ascent then
                computes that forward itself instead of running ``forward_fn``
                under hooks that check it (the same numbers, less overhead).

        Returns:
            The objective before the step (detached), e.g. for logging.
        """
        # Buffers (BatchNorm running statistics) are restored after the backward
        # (which may still need them), so the ascent's forward leaves no trace but
        # the step; the modes stay the model's own.
        objective = None
        if self.gradient == "autograd":
            objective = self._ascend_by_autograd(inputs)
        if objective is None and self.relu_chains is not None:
            direct = runs_as_chain and len(self.relu_chains) == 1
            if direct and torch.is_tensor(inputs):
                objective = self._ascend_one_chain(inputs)
            else:
                objective = self._ascend_relu_chains(inputs)
        if objective is None:
            objective = self._ascend_through_features(inputs)
        self.num_ascents += 1
        return objective

    def objective_and_feature_gradients(
        self, features: Sequence[torch.Tensor], relu_features: Sequence[bool]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The objective on the ranked layers' ``features`` and its gradient with
        respect to each, in closed form (:func:`effective_rank_gradient`).

        Args:
            features: each ranked layer's output, (samples, ...), in order.
            relu_features: whether each is an ``nn.ReLU``'s output.

        Returns:
            ``(objective, gradients)``: the objective (0-dim, detached) and
            d objective / d features[l] for each layer (its shape and dtype).
        """
        ranks: list[torch.Tensor] = [torch.empty(0)] * len(features)
        gradients: list[torch.Tensor] = [torch.empty(0)] * len(features)
        # Layers of one shape share a batched eigendecomposition.
        batches: dict[tuple, list[int]] = {}
        for index, (feature, relu) in enumerate(
            zip(features, relu_features, strict=True)
        ):
            matrix_shape = (feature.shape[0], feature[0].numel())
            key = (matrix_shape, feature.dtype, feature.device, relu)
            batches.setdefault(key, []).append(index)
        for (matrix_shape, *_, relu), indices in batches.items():
            matrices = torch.stack(
                [features[i].detach().reshape(matrix_shape) for i in indices]
            )
            batch_ranks, batch_gradients = effective_rank_gradient(
                matrices, relu_features=relu
            )
            for k, index in enumerate(indices):
                ranks[index] = batch_ranks[k]
                gradients[index] = (
                    batch_gradients[k]
                    .mul_(self.layer_weights[index])
                    .reshape(features[index].shape)
                )
        objective = sum(
            weight * rank
            for weight, rank in zip(self.layer_weights, ranks, strict=True)
        )
        return objective, gradients

    def _ascend_by_autograd(self, inputs: Any) -> torch.Tensor:
        """Autograd through the objective (``gradient="autograd"``)."""
        with (
            torch.enable_grad(),
            preserved_training_state(self.model, None, fork_rng=False),
        ):
            objective = self.objective(inputs)
            grads = torch.autograd.grad(objective, self.params, allow_unused=True)
        self._step(grads)
        return objective.detach()

    def _ascend_through_features(self, inputs: Any) -> torch.Tensor:
        """The closed-form feature gradients, backpropagated by autograd."""
        with (
            torch.enable_grad(),
            preserved_training_state(self.model, None, fork_rng=False),
        ):
            features = self.features(inputs)
            relu = [type(m) is nn.ReLU for m in self.feature_modules]
            objective, feature_grads = self.objective_and_feature_gradients(
                features, relu
            )
            pairs = [
                (f, g)
                for f, g in zip(features, feature_grads, strict=True)
                if f.requires_grad
            ]
            if not pairs:
                raise RuntimeError(
                    "ER: no ranked layer's features depend on a trainable parameter"
                )
            grads = torch.autograd.grad(
                [f for f, _ in pairs],
                self.params,
                grad_outputs=[g for _, g in pairs],
                allow_unused=True,
            )
        self._step(grads)
        return objective

    def _step(self, grads: Sequence[torch.Tensor | None]) -> None:
        used = [
            (p, g) for p, g in zip(self.params, grads, strict=True) if g is not None
        ]
        if used and self.ascent_lr > 0:
            with torch.no_grad():
                torch._foreach_add_(
                    [p for p, _ in used], [g for _, g in used], alpha=self.ascent_lr
                )

    def _forward_state(self) -> contextlib.AbstractContextManager:
        """What the graph-free forward runs in: the model's buffers restored after
        it (BatchNorm statistics); nothing to restore in a model without buffers (a
        forward changes no module's mode)."""
        if self.model_has_buffers:
            return preserved_training_state(self.model, None, fork_rng=False)
        return contextlib.nullcontext()

    def _ascend_relu_chains(self, inputs: Any) -> torch.Tensor | None:
        """The manual route: a forward without graph, one backward sweep per chain.

        Returns None (and stops trying it) when the forward does not run the chains
        as expected: each Linear and ReLU once, the first Linear on ``inputs``
        themselves, each next one on the previous ReLU's output.
        """
        chains = self.relu_chains
        with (
            torch.no_grad(),
            self._forward_state(),
        ):
            calls = _run_recording_calls(
                [m for chain in chains for pair in chain for m in pair],
                lambda: self.forward_fn(self.model, inputs),
            )
        layer_inputs = _chain_data_flow(chains, calls, inputs)
        if layer_inputs is None:
            self.relu_chains = None
            return None
        outputs = {id(m): calls[id(m)][0][1] for chain in chains for _, m in chain}
        features = [outputs[id(m)] for m in self.feature_modules]
        objective, feature_grads = self.objective_and_feature_gradients(
            features, [True] * len(features)
        )
        if self.ascent_lr > 0:
            by_module = {
                id(m): g
                for m, g in zip(self.feature_modules, feature_grads, strict=True)
            }
            for chain, chain_inputs in zip(chains, layer_inputs, strict=True):
                ascend_relu_chain(
                    [linear.weight.data for linear, _ in chain],
                    [
                        None if linear.bias is None else linear.bias.data
                        for linear, _ in chain
                    ],
                    chain_inputs,
                    [outputs[id(relu)] for _, relu in chain],
                    [by_module.get(id(relu)) for _, relu in chain],
                    self.ascent_lr,
                )
        return objective

    @torch.no_grad()
    def _ascend_one_chain(self, inputs: torch.Tensor) -> torch.Tensor:
        """:meth:`_ascend_relu_chains` for a model known to be its one ReLU chain
        (``runs_as_chain``): the forward computed here, layer by layer, the outputs
        of equal-width layers written into one stacked tensor that the batched
        eigendecomposition reads as it is."""
        chain = self.relu_chains[0]
        weights = [linear.weight.data for linear, _ in chain]
        biases = [None if linear.bias is None else linear.bias.data
                  for linear, _ in chain]  # fmt: skip
        x = inputs.reshape(inputs.shape[0], -1)
        widths = {w.shape[0] for w in weights}
        stacked = None
        if len(widths) == 1:
            stacked = x.new_empty(len(chain), x.shape[0], widths.pop())
        layer_inputs, features = [], []
        h = x
        for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            layer_inputs.append(h)
            out = None if stacked is None else stacked[index]
            if bias is None:
                h = torch.mm(h, weight.T, out=out)
            else:
                h = torch.addmm(bias, h, weight.T, out=out)
            h = h.clamp_(min=0)
            features.append(h)
        position = {id(relu): index for index, (_, relu) in enumerate(chain)}
        ranked = [position[id(m)] for m in self.feature_modules]
        if stacked is not None and ranked == list(range(len(chain))):
            # The layer weights folded into the spectrum's weights.
            ranks, gradients = effective_rank_gradient(
                stacked, relu_features=True, gradient_scale=self.layer_weights
            )
            objective = ranks @ ranks.new_tensor(self.layer_weights)
            feature_gradients: list[torch.Tensor | None] = list(gradients)
        else:
            objective, ranked_gradients = self.objective_and_feature_gradients(
                [features[i] for i in ranked], [True] * len(ranked)
            )
            feature_gradients = [None] * len(chain)
            for index, gradient in zip(ranked, ranked_gradients, strict=True):
                feature_gradients[index] = gradient
        if self.ascent_lr > 0:
            ascend_relu_chain(weights, biases, layer_inputs, features,
                              feature_gradients, self.ascent_lr)  # fmt: skip
        return objective

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "ascent_lr": self.ascent_lr,
            "interval": self.interval,
            "schedule": self.schedule,
            "timing": self.timing,
            "layer_groups": self.layer_groups,
            "layers": list(self.layer_names),
            "gradient": self.gradient,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "num_ascents": self.num_ascents,
            "buffer": [x.clone() for x in self.buffer],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        self.num_ascents = int(state["num_ascents"])
        device = self.params[0].device
        self.buffer = [x.to(device) for x in state["buffer"]]


def _outermost_sequentials(module: nn.Module) -> list[nn.Sequential]:
    if isinstance(module, nn.Sequential):
        return [module]
    return [s for child in module.children() for s in _outermost_sequentials(child)]


def _sequential_leaves(sequential: nn.Sequential) -> list[nn.Module]:
    leaves = []
    for child in sequential.children():
        if isinstance(child, nn.Sequential):
            leaves.extend(_sequential_leaves(child))
        elif not isinstance(child, nn.Flatten | nn.Identity):
            leaves.append(child)
    return leaves


def _find_relu_chains(
    feature_modules: Sequence[nn.Module],
    model: nn.Module,
    params: Sequence[torch.Tensor],
) -> list[list[tuple[nn.Linear, nn.ReLU]]] | None:
    """The leading ``Linear, ReLU`` pairs of each ``nn.Sequential`` of ``model`` up to
    its deepest ranked ReLU, if every ranked module is one of those ReLUs and every
    Linear's parameters are trainable; else None."""
    ranked = {id(m) for m in feature_modules}
    chains = []
    for sequential in _outermost_sequentials(model):
        leaves = _sequential_leaves(sequential)
        chain = []
        for linear, relu in zip(leaves[::2], leaves[1::2], strict=False):
            if type(linear) is not nn.Linear or type(relu) is not nn.ReLU:
                break
            chain.append((linear, relu))
        depth = max(
            (i + 1 for i, (_, relu) in enumerate(chain) if id(relu) in ranked),
            default=0,
        )
        if depth:
            chains.append(chain[:depth])
            ranked -= {id(relu) for _, relu in chain[:depth]}
    modules = [m for chain in chains for pair in chain for m in pair]
    trainable = {id(p) for p in params}
    linears_trainable = all(
        isinstance(linear.weight, nn.Parameter)  # not parametrized
        and all(id(p) in trainable for p in linear.parameters())
        for chain in chains
        for linear, _ in chain
    )
    if ranked or len({id(m) for m in modules}) != len(modules) or not linears_trainable:
        return None
    return chains


def _run_recording_calls(
    modules: Sequence[nn.Module], forward: Any
) -> dict[int, list[tuple[Any, torch.Tensor]]]:
    """Run ``forward()``; each module's calls as (first positional input, output)."""
    calls: dict[int, list[tuple[Any, torch.Tensor]]] = {id(m): [] for m in modules}

    def hook(module, args, output):
        calls[id(module)].append((args[0] if args else None, output))

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with recording_paused():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _chain_data_flow(
    chains: Sequence[Sequence[tuple[nn.Linear, nn.ReLU]]],
    calls: dict[int, list[tuple[Any, torch.Tensor]]],
    inputs: Any,
) -> list[list[torch.Tensor]] | None:
    """Each chain's Linear inputs if the forward ran it as a chain on ``inputs``
    (every module once, the first Linear on a view of ``inputs``, each ReLU on its
    Linear's output, each next Linear on that ReLU's output); else None."""
    if not torch.is_tensor(inputs):
        return None
    layer_inputs = []
    for chain in chains:
        previous, chain_inputs = None, []
        for linear, relu in chain:
            if len(calls[id(linear)]) != 1 or len(calls[id(relu)]) != 1:
                return None
            (x, z), (relu_input, h) = calls[id(linear)][0], calls[id(relu)][0]
            if relu_input is not z or not torch.is_tensor(x):
                return None
            if previous is None:
                reads_inputs = (
                    x.data_ptr() == inputs.data_ptr()
                    and x.numel() == inputs.numel()
                    and x.dtype == inputs.dtype
                    and x.shape[0] == inputs.shape[0]
                )
                if not reads_inputs:
                    return None
            elif x is not previous:
                return None
            chain_inputs.append(x)
            previous = h
        layer_inputs.append(chain_inputs)
    return layer_inputs
