"""Cost of one Hessian spectral density: clenv.metrics next to a plain torch.func SLQ.

Run ``python -m clenv.bench.metrics`` (``--help`` for options; ``--device cuda`` on a
GPU).

Setting (SC's PMNIST diagnostic): the 784-1000-1000-1000-10 ReLU MLP (Kaiming-uniform,
zero bias; 2,797,010 parameters), cross-entropy on 2000 samples in one batch, one SLQ
probe of order 100 with full reorthogonalisation. The inputs are seeded uniform
pixels with random labels: the cost of a product does not depend on the values.

Rows, timed in one process and in rotating order (``--repeats`` rounds, medians):

* ``clenv`` - :func:`clenv.metrics.hessian_spectral_density` as the agents call it
  (autograd double-backward products, a forward and two backward passes each);
* ``clenv reuse_graph`` - the same with ``reuse_graph=True`` (one backward per
  product; keeps the gradient graph of the 2000 samples);
* ``plain torch.func`` - the reference written here in a few lines: ``jvp(grad(loss))``
  products (forward-over-reverse) and the same Lanczos loop;
* optionally (``--curvlinops``) the ``curvlinops`` backend.

The first rows' Ritz values are compared with the reference's (same start vector),
so the timing is of equal work. Then single Hessian-vector products of the two
implementations are timed alternately (``--hvps`` each) for a fine-grained ratio.

Last (``--plasticity-only`` for this part alone), the cost of the opt-in plasticity
metrics on the same network and samples (:func:`clenv.metrics.plasticity_report`
with and without active units and feature norms, gradient norms, the weight-change
and policy-churn trackers) and of one Hessian-vector product restricted to each
layer's block (:func:`clenv.metrics.partial_hessian_spectra` costs ``order`` of
them per layer) next to a full one. The Hessian variance needs no product.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tyro
from torch import nn
from torch.func import functional_call, grad, jvp

from clenv.metrics import (
    HessianOperator,
    PolicyChurnTracker,
    WeightChangeTracker,
    active_unit_fraction,
    capture_activations,
    cross_entropy_loss,
    feature_norm,
    gradient_norms,
    hessian_spectral_density,
    parameter_layers,
    plasticity_report,
)
from clenv.metrics.hessian import curvature_context, rademacher


def pmnist_mlp(width: int = 1000, depth: int = 3) -> nn.Sequential:
    """SC's Permuted-MNIST network: 784-width^depth-10, ReLU, Kaiming-uniform, zero bias."""
    layers: list[nn.Module] = []
    fan_in = 784
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, 10))
    for module in layers:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return nn.Sequential(*layers)


def plain_torch_func_hvp(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reference Hessian-vector product of the mean cross-entropy:
    ``jvp(grad(loss))`` (forward-over-reverse) on flat vectors."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    names = list(params)
    sizes = [params[n].numel() for n in names]

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (inputs,)), labels)

    gradient = grad(loss)

    def hvp(vector: torch.Tensor) -> torch.Tensor:
        tangent = {
            n: t.view_as(params[n])
            for n, t in zip(names, vector.split(sizes), strict=True)
        }
        product = jvp(gradient, (params,), (tangent,))[1]
        return torch.cat([product[n].reshape(-1) for n in names])

    return hvp


def plain_torch_func_slq(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    start: torch.Tensor,
    order: int,
) -> torch.Tensor:
    """Reference SLQ: torch.func HVPs and a minimal fully reorthogonalised Lanczos.

    Returns the Ritz values of the probe (ascending).
    """
    hvp = plain_torch_func_hvp(model, inputs, labels)
    basis = torch.empty(order, start.numel(), dtype=start.dtype, device=start.device)
    basis[0] = start / start.norm()
    alphas, betas = [], []
    for step in range(order):
        w = hvp(basis[step])
        alphas.append(torch.dot(w, basis[step]).item())
        for _ in range(2):
            w = w - basis[: step + 1].T @ (basis[: step + 1] @ w)
        if step + 1 < order:
            betas.append(w.norm().item())
            basis[step + 1] = w / betas[-1]
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas, dtype=torch.float64)
    tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(tridiagonal)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - start, result


@dataclass
class MetricsBenchArgs:
    """Arguments of ``python -m clenv.bench.metrics``."""

    device: str = "cpu"
    """where the model lives (default: cuda when available, else cpu)"""
    samples: int = 2000
    """SC: 2000"""
    order: int = 100
    """Lanczos steps (SC: 100)"""
    width: int = 1000
    """hidden width (SC: 1000)"""
    repeats: int = 1
    """rounds of full SLQ runs"""
    hvps: int = 10
    """single products per side"""
    threads: int | None = None
    """torch CPU threads"""
    curvlinops: bool = False
    """also time that backend"""
    products_only: bool = False
    """skip the full densities; only the alternating single products"""
    plasticity_only: bool = False
    """only the plasticity metrics and the per-layer block products"""


def plasticity_costs(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    rounds: int,
) -> dict[str, float]:
    """Median seconds of the plasticity metrics and of one product per layer block.

    The rows run in rotating order, ``rounds`` times each.
    """
    model.zero_grad()
    F.cross_entropy(model(inputs), labels).backward()  # .grad for gradient_norms
    weights = WeightChangeTracker({"": model})
    weights.on_task_start()
    captured = capture_activations(model, inputs)  # what the opt-ins read
    std = torch.ones(1, 10, device=device)
    churn = PolicyChurnTracker(inputs[:256], lambda obs: (model(obs), std))
    churn.update()
    rows: dict[str, Callable[[], object]] = {
        "plasticity_report (default)": lambda: plasticity_report({"": model}, inputs),
        "active units + feature norms alone": lambda: [
            (active_unit_fraction(a), feature_norm(a)) for a in captured.values()
        ],
        "gradient_norms": lambda: gradient_norms(model),
        "WeightChangeTracker.on_task_start": weights.on_task_start,
        "WeightChangeTracker.metrics": weights.metrics,
        "PolicyChurnTracker.update (256)": churn.update,
    }
    data = [(inputs, labels)]
    with curvature_context(model, seed=0) as generator:
        operators = {"HVP full": HessianOperator(model, cross_entropy_loss, data)}
        for layer, params in parameter_layers(model).items():
            operators[f"HVP block {layer}"] = HessianOperator(
                model, cross_entropy_loss, data, params=[p for _, p in params]
            )
        for name, operator in operators.items():
            vector = rademacher((operator.dim,), generator, torch.float32)
            rows[name] = lambda op=operator, v=vector: op.matvec(v)
        names = list(rows)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for name in names:  # warm-up
            rows[name]()
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                seconds[name].append(_timed(rows[name], device)[0])
    model.zero_grad()
    print(f"\nplasticity metrics and per-layer Hessian blocks ({rounds} each, median):")
    figures = {}
    for name in names:
        median = statistics.median(seconds[name])
        figures[f"{name.strip()} ms"] = median * 1000
        print(f"  {name:<36} {median * 1000:10.2f} ms")
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; return its figures (seconds and ratios vs plain torch.func)."""
    args = tyro.cli(
        MetricsBenchArgs,
        args=argv,
        prog="python -m clenv.bench.metrics",
        description=__doc__.split("\n\n")[0],
        default=MetricsBenchArgs(device="cuda" if torch.cuda.is_available() else "cpu"),
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = pmnist_mlp(args.width).to(device)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(args.samples, 784, generator=generator).to(device)
    labels = torch.randint(0, 10, (args.samples,), generator=generator).to(device)
    data = [(inputs, labels)]
    num_params = sum(p.numel() for p in model.parameters())
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"device {device} ({where}), "
        f"MLP 784-{args.width}x3-10 with {num_params:,} parameters, {args.samples} "
        f"samples, order {args.order}, 1 probe, float32"
    )
    if args.plasticity_only:
        return plasticity_costs(model, inputs, labels, device, max(args.hvps, 1))
    with curvature_context(model, seed=0) as probe_generator:
        start = rademacher((num_params,), probe_generator, torch.float32)

    def clenv_row(**options: object) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            return hessian_spectral_density(
                model, cross_entropy_loss, data, order=args.order, seed=0, **options
            ).ritz_values

        return run

    rows: dict[str, Callable[[], torch.Tensor]] = {
        "clenv": clenv_row(),
        "clenv reuse_graph": clenv_row(reuse_graph=True),
        "plain torch.func": lambda: plain_torch_func_slq(
            model, inputs, labels, start, args.order
        ),
    }
    if args.curvlinops:
        rows["clenv curvlinops backend"] = clenv_row(backend="curvlinops")
    names = list(rows)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ritz: dict[str, torch.Tensor] = {}
    # warm-up (allocator, kernels, CUDA context), not timed: a few products each
    with curvature_context(model, seed=0):
        operator = HessianOperator(model, cross_entropy_loss, data)
        for _ in range(2):
            operator.matvec(start)
    plain_torch_func_slq(model, inputs, labels, start, 2)
    for round_index in range(0 if args.products_only else args.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, values = _timed(rows[name], device)
            seconds[name].append(elapsed)
            ritz[name] = values.cpu()
            print(f"  round {round_index}: {name:<26} {elapsed:8.2f} s", flush=True)

    figures: dict[str, float] = {}
    if not args.products_only:
        reference = ritz["plain torch.func"]
        top = reference.abs().max()
        print("\nfull spectral density (median over rounds):")
        baseline = statistics.median(seconds["plain torch.func"])
        for name in names:
            median = statistics.median(seconds[name])
            figures[f"{name} density s"] = median
            figures[f"{name} density ratio"] = median / baseline
            drift = (ritz[name] - reference).abs().max() / top
            print(
                f"  {name:<26} {median:8.2f} s   {median / args.order * 1000:8.1f} ms/HVP   "
                f"ratio vs plain {median / baseline:5.2f}   "
                f"max |ritz - plain| / max|ritz| {drift:.1e}"
            )

    with curvature_context(model, seed=0):
        operator = HessianOperator(model, cross_entropy_loss, data)
        cached = HessianOperator(model, cross_entropy_loss, data, reuse_graph=True)
        cached.matvec(start)  # builds and keeps the gradient graph
        products = {
            "clenv HVP": operator.matvec,
            "clenv HVP reuse_graph": cached.matvec,
            "plain torch.func HVP": plain_torch_func_hvp(model, inputs, labels),
        }
        single: dict[str, list[float]] = {name: [] for name in products}
        for index in range(args.hvps):
            shift = index % len(products)
            for name in list(products)[shift:] + list(products)[:shift]:
                single[name].append(
                    _timed(lambda f=products[name]: f(start), device)[0]
                )
    print(f"\nsingle Hessian-vector products, alternating ({args.hvps} each, median):")
    base = statistics.median(single["plain torch.func HVP"])
    for name, times in single.items():
        median = statistics.median(times)
        figures[f"{name} ms"] = median * 1000
        figures[f"{name} ratio"] = median / base
        print(
            f"  {name:<26} {median * 1000:8.1f} ms   ratio vs plain {median / base:5.2f}"
        )
    figures |= plasticity_costs(model, inputs, labels, device, max(args.hvps, 1))
    return figures


if __name__ == "__main__":
    main()
