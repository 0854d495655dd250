"""The loss Hessian w.r.t. the parameters: operator, dense matrix, top eigenvalues,
trace.

:class:`HessianOperator` multiplies the Hessian of the dataset loss of any closure
``loss_fn(model, batch)`` onto flat vectors, batch by batch, on the model's device.
Two backends compute the products:

- ``"autograd"`` (default): double backward (Pearlmutter 1994),
  ``grad(grad(L) . v)``. Works for any twice-differentiable closure (``.item()``,
  Python control flow and in-place ops are fine). With ``reuse_graph=True`` the
  first-order graph of every batch is kept, so each product is one backward pass
  (faster, but holds a training step's activations for all of ``data``).
- ``"curvlinops"``: curvlinops' :class:`~curvlinops.HessianLinearOperator`
  (forward-over-reverse ``jvp(jacrev(L))`` under ``vmap``) with the closure
  wrapped as a model whose "prediction" is the batch loss. Needs a closure that
  ``torch.func`` can trace; its per-product overhead (~50 ms measured here) makes it
  far slower on small networks, so it is the alternative, and the tests' check.

All functions run in eval mode by default (dropout off, BatchNorm on running
statistics, so the operator is deterministic); the model's train/eval flags,
buffers, ``.grad`` and the global RNG are left as they were.
"""

from __future__ import annotations

import contextlib
from collections import UserDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from clenv.metrics.activations import (
    model_device,
    move_to_device,
    preserved_training_state,
)
from clenv.metrics.lanczos import lanczos, ritz_pairs
from clenv.metrics.losses import LossFn, batch_size

BatchSizeFn = Callable[[Any], int]
Backend = Literal["autograd", "curvlinops"]


class _LossAsModel(nn.Module):
    """``forward(X) = loss_fn(model, X["batch"])`` so curvlinops sees a model."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, wrapped: UserDict) -> torch.Tensor:
        return _scalar(self.loss_fn(self.model, wrapped["batch"])).reshape(1)


class _BatchMeanOfLoss(nn.Module):
    """Criterion returning the wrapped loss; ``reduction="mean"`` makes curvlinops
    weight each batch by its share of the samples."""

    reduction = "mean"

    def forward(self, loss: torch.Tensor, _unused: torch.Tensor) -> torch.Tensor:
        return loss.sum()


def _scalar(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
        raise ValueError(
            f"loss_fn must return a scalar tensor (the batch mean), got {shape}"
        )
    return loss


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` (weights and biases alike), in order: the
    Hessian's coordinates, and what L2 and ER act on (:mod:`clenv.methods`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return params


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters P (the Hessian's size)."""
    return sum(p.numel() for p in trainable_parameters(model))


class HessianOperator:
    """Hessian of the dataset loss as a linear operator on flat vectors.

    The dataset loss is ``sum_b n_b * loss_fn(model, b) / sum_b n_b`` over the
    batches ``b`` of ``data`` (each closure returns its batch mean). The batches are
    moved to the model's device once, here, and kept in order (so a shuffling
    ``DataLoader`` gives a fixed operator). One product costs about two backward
    passes over all of ``data`` (one with ``reuse_graph``); a larger batch is faster
    per sample and costs memory linearly (:func:`~clenv.metrics.split_batch`).

    Use it inside :func:`curvature_context` unless the model has no dropout or
    BatchNorm (the functions of this package do).

    Args:
        model: The network; its trainable parameters are the coordinates unless
            ``params`` is given.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch.
        data: Batches (a list, or an iterable that is materialised here).
        params: Subset of parameters (default: every trainable parameter).
        batch_size_fn: Samples in a batch (default: leading dim of its first tensor).
        backend: ``"autograd"`` or ``"curvlinops"`` (see the module docstring).
        reuse_graph: Autograd backend: keep each batch's gradient graph between
            products.

    Example:
        >>> net = nn.Linear(3, 1, bias=False).double()
        >>> x = torch.randn(8, 3, dtype=torch.float64)
        >>> mse = lambda model, batch: (model(batch) ** 2).mean()
        >>> op = HessianOperator(net, mse, [x])
        >>> torch.allclose(op @ torch.eye(3, dtype=torch.float64), 2 * x.T @ x / 8)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Iterable[Any],
        params: Sequence[nn.Parameter] | None = None,
        batch_size_fn: BatchSizeFn | None = None,
        backend: Backend = "autograd",
        reuse_graph: bool = False,
    ):
        if backend not in ("autograd", "curvlinops"):
            raise ValueError(
                f"backend must be 'autograd' or 'curvlinops', got {backend!r}"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.params = list(trainable_parameters(model) if params is None else params)
        self.device = model_device(model)
        self.dtype = self.params[0].dtype
        self.batches = [move_to_device(batch, self.device) for batch in data]
        if not self.batches:
            raise ValueError("data holds no batch; pass a list of batches")
        size_of = batch_size if batch_size_fn is None else batch_size_fn
        sizes = [size_of(batch) for batch in self.batches]
        self.num_samples = sum(sizes)
        self.batch_weights = [size / self.num_samples for size in sizes]
        self.dim = sum(p.numel() for p in self.params)
        self.shape = (self.dim, self.dim)
        self.backend = backend
        self.reuse_graph = reuse_graph
        self._graphs: list[list[tuple[int, torch.Tensor]]] | None = None
        self._curvlinops = (
            self._curvlinops_operator(sizes, size_of)
            if backend == "curvlinops"
            else None
        )

    def _curvlinops_operator(self, sizes: list[int], size_of: BatchSizeFn) -> Any:
        # imported here: curvlinops (and backpack) load slowly and warn on import
        from curvlinops import HessianLinearOperator

        wrapped = [
            (UserDict(batch=batch), torch.zeros(size, device=self.device))
            for batch, size in zip(self.batches, sizes, strict=True)
        ]
        return HessianLinearOperator(
            _LossAsModel(self.model, self.loss_fn),
            _BatchMeanOfLoss(),
            self.params,
            wrapped,
            check_deterministic=False,
            num_data=self.num_samples,
            batch_size_fn=lambda wrapped_batch: size_of(wrapped_batch["batch"]),
        )

    def _gradient_graph(
        self, batch: Any, weight: float
    ) -> list[tuple[int, torch.Tensor]]:
        """(parameter index, gradient with graph) of the weighted batch loss."""
        with torch.enable_grad():
            loss = _scalar(self.loss_fn(self.model, batch)) * weight
            grads = torch.autograd.grad(
                loss, self.params, create_graph=True, allow_unused=True
            )
        # gradients that do not depend on the parameters have zero Hessian rows
        return [
            (i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad
        ]

    def _graphs_per_batch(self) -> Iterator[list[tuple[int, torch.Tensor]]]:
        if self.reuse_graph and self._graphs is None:
            self._graphs = [
                self._gradient_graph(b, w)
                for b, w in zip(self.batches, self.batch_weights, strict=True)
            ]
        if self._graphs is not None:
            yield from self._graphs
            return
        for batch, weight in zip(self.batches, self.batch_weights, strict=True):
            yield self._gradient_graph(batch, weight)

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector of length P."""
        if vector.shape != (self.dim,):
            raise ValueError(
                f"expected a vector of shape ({self.dim},), got {tuple(vector.shape)}"
            )
        if self._curvlinops is not None:
            return self._curvlinops @ vector
        pieces = [
            chunk.view_as(p)
            for chunk, p in zip(
                vector.split([p.numel() for p in self.params]), self.params, strict=True
            )
        ]
        result = [torch.zeros_like(p) for p in self.params]
        for graph in self._graphs_per_batch():
            if not graph:
                continue
            with torch.enable_grad():
                products = torch.autograd.grad(
                    [g for _, g in graph],
                    self.params,
                    [pieces[i] for i, _ in graph],
                    retain_graph=self.reuse_graph,
                    allow_unused=True,
                )
            for total, product in zip(result, products, strict=True):
                if product is not None:
                    total.add_(product)
        return torch.cat([r.reshape(-1) for r in result])

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        """``H @ v`` (vector) or ``H @ M`` (matrix, column by column)."""
        if other.dim() == 1:
            return self.matvec(other)
        return torch.stack([self.matvec(column) for column in other.T], dim=1)


@contextlib.contextmanager
def curvature_context(
    model: nn.Module, seed: int | None = 0, train_mode: bool = False
) -> Iterator[torch.Generator]:
    """Eval mode (unless ``train_mode``), state restored on exit, forked global RNG
    seeded with ``seed`` (random losses such as
    :func:`~clenv.metrics.sampled_cross_entropy_loss` draw from it), and a generator
    on the model's device for probe vectors."""
    device = model_device(model)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    with preserved_training_state(model, train_mode):
        if seed is not None:
            # only the generators that preserved_training_state forked (CPU and the
            # model's GPU): torch.manual_seed would also reseed every other GPU
            torch.default_generator.manual_seed(seed)
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
        yield generator


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Random +-1 tensor of ``dtype`` on the generator's device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2 * bits - 1).to(dtype)


def hessian_matrix(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    max_parameters: int = 20_000,
    train_mode: bool = False,
    backend: Backend = "autograd",
) -> torch.Tensor:
    """Dense (P, P) Hessian of the dataset loss, for small models.

    Built column by column from P Hessian-vector products (the graph of each batch
    is reused between them) and symmetrised.

    Raises:
        ValueError: If P exceeds ``max_parameters`` (raise it knowingly: memory is
            P^2 entries).
    """
    num_params = parameter_count(model)
    if num_params > max_parameters:
        raise ValueError(
            f"the dense Hessian of {num_params} parameters needs {num_params}^2 "
            f"entries; use hessian_spectral_density/top_eigenvalues, or pass "
            f"max_parameters>={num_params} if you really want it"
        )
    with curvature_context(model, train_mode=train_mode):
        operator = HessianOperator(
            model, loss_fn, data, backend=backend, reuse_graph=True
        )
        dense = operator @ torch.eye(
            num_params, dtype=operator.dtype, device=operator.device
        )
    return (dense + dense.T) / 2


def hessian_eigenvalues(
    model: nn.Module, loss_fn: LossFn, data: Iterable[Any], **kwargs: Any
) -> torch.Tensor:
    """All eigenvalues (ascending, float64, CPU) of the dense Hessian; small models.

    Keyword arguments go to :func:`hessian_matrix`.
    """
    dense = hessian_matrix(model, loss_fn, data, **kwargs)
    return torch.linalg.eigvalsh(dense.double()).cpu()


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    k: int = 1,
    which: Literal["largest", "smallest"] = "largest",
    max_iterations: int = 100,
    tol: float = 1e-3,
    seed: int | None = 0,
    train_mode: bool = False,
    backend: Backend = "autograd",
    reuse_graph: bool = False,
) -> torch.Tensor:
    """The k algebraically largest (or smallest) Hessian eigenvalues by Lanczos.

    Lanczos with full reorthogonalisation from a Rademacher start; stops when each
    wanted Ritz value's residual bound ``|beta_m s_mj|`` (Parlett 1998, Sec. 13.2) is
    below ``tol * |theta_j|``, or after ``max_iterations`` Hessian-vector products.
    Extreme eigenvalues converge first, typically in a few dozen products.

    Returns:
        (k,) float64 CPU tensor, largest first (smallest first for
        ``which="smallest"``).
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sign = 1.0 if which == "largest" else -1.0

    def converged(alpha: torch.Tensor, beta: torch.Tensor) -> bool:
        values, vectors = ritz_pairs(alpha, beta[:-1])
        order = torch.argsort(sign * values, descending=True)[:k]
        residual = beta[-1] * vectors[-1, order].abs()
        return bool((residual <= tol * values[order].abs().clamp_min(1e-12)).all())

    with curvature_context(model, seed, train_mode) as generator:
        operator = HessianOperator(
            model, loss_fn, data, backend=backend, reuse_graph=reuse_graph
        )
        if k > operator.dim:
            raise ValueError(f"k={k} exceeds the {operator.dim} parameters")
        start = rademacher((operator.dim,), generator, operator.dtype)
        alpha, beta = lanczos(
            operator.matvec,
            start,
            max(max_iterations, k),
            stop=converged,
            check_every=max(1, min(10, k)),
        )
    values = ritz_pairs(alpha, beta)[0]
    return (sign * torch.sort(sign * values, descending=True).values)[:k]


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    num_matvecs: int = 30,
    method: Literal["hutch++", "hutchinson"] = "hutch++",
    seed: int | None = 0,
    train_mode: bool = False,
    backend: Backend = "autograd",
    reuse_graph: bool = False,
) -> float:
    """Stochastic estimate of tr(H) from ``num_matvecs`` Hessian-vector products.

    - ``"hutchinson"``: mean of v^T H v over Rademacher v (Hutchinson 1989); variance
      2 ||H||_F^2 / m for m probes (off-diagonal part).
    - ``"hutch++"``: Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Alg. 1): m/3
      products sketch the top eigenspace Q, whose trace is taken exactly, and
      Hutchinson handles the deflated rest with m/3 probes; error O(1/m) instead of
      O(1/sqrt(m)) when the spectrum decays, as Hessian spectra do.

    Same algorithms as curvlinops' ``hutchinson_trace``/``hutchpp_trace``, written
    here to draw from a private seeded generator on the model's device (the
    training run's RNG is untouched) and to apply one product at a time (memory).
    """
    if method not in ("hutch++", "hutchinson"):
        raise ValueError(f"method must be 'hutch++' or 'hutchinson', got {method!r}")
    minimum = 3 if method == "hutch++" else 1
    if num_matvecs < minimum:
        raise ValueError(f"{method} needs num_matvecs >= {minimum}, got {num_matvecs}")
    with curvature_context(model, seed, train_mode) as generator:
        operator = HessianOperator(
            model, loss_fn, data, backend=backend, reuse_graph=reuse_graph
        )
        dim, dtype = operator.dim, operator.dtype
        if method == "hutchinson":
            probes = rademacher((dim, num_matvecs), generator, dtype)
            return float((probes * (operator @ probes)).sum() / num_matvecs)
        sketch_size = num_matvecs // 3
        hutchinson_size = num_matvecs - 2 * sketch_size
        sketch = operator @ rademacher((dim, sketch_size), generator, dtype)
        basis, _ = torch.linalg.qr(sketch)
        exact = torch.trace(basis.T @ (operator @ basis))
        probes = rademacher((dim, hutchinson_size), generator, dtype)
        probes = probes - basis @ (basis.T @ probes)
        rest = (probes * (operator @ probes)).sum() / hutchinson_size
        return float(exact + rest)
