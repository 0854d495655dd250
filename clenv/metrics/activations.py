"""Capture hidden activations of any ``nn.Module`` without touching training state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

# clenv.models imports nothing from clenv.metrics or clenv.methods: no cycle.
from clenv.models.layers import CReLU, FourierFeatures

# Nonlinearities hooked by default ("ReLU-like" hidden activations). CReLU and
# FourierFeatures give two features per unit (unit i: features 2i and 2i + 1); the
# metrics read their features (see clenv.metrics.units).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Tanh,
    nn.Sigmoid,
    CReLU,
    FourierFeatures,
)

ForwardFn = Callable[[nn.Module, Any], Any]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a stateless one."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested tuple/list/dict) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: the forward used when no ``forward_fn`` is given."""
    return model(inputs)


@contextlib.contextmanager
def preserved_training_state(
    model: nn.Module, train_mode: bool | None, *, fork_rng: bool = True
) -> Iterator[None]:
    """Run a forward pass in train or eval mode and leave no trace of it.

    Every module's ``training`` flag, every buffer (BatchNorm running statistics and
    ``num_batches_tracked``, and any other buffer a forward updates) and, with
    ``fork_rng``, the torch RNG streams (dropout) of the CPU and the model's CUDA
    device are restored on exit.

    Args:
        model: the model.
        train_mode: the mode to run in; ``None`` keeps each module's own mode.
        fork_rng: restore the RNG streams too (a plasticity method's forward, part
            of training, passes ``False`` and consumes them as training does).
    """
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    device = model_device(model)
    rng_devices = [device] if device.type == "cuda" else []
    rng = (
        torch.random.fork_rng(devices=rng_devices)
        if fork_rng
        else contextlib.nullcontext()
    )
    try:
        with rng:
            if train_mode is not None:
                model.train(train_mode)
            yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def resolve_layers(
    model: nn.Module, layers: Sequence[str | nn.Module] | None = None
) -> dict[str, nn.Module]:
    """Map names to the modules to hook: ``layers`` (names or modules) or, by
    default, every activation module of :data:`ACTIVATION_TYPES`."""
    named = dict(model.named_modules())
    if layers is None:
        chosen = {
            name: module
            for name, module in named.items()
            if isinstance(module, ACTIVATION_TYPES)
        }
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no activation modules "
                f"({', '.join(t.__name__ for t in ACTIVATION_TYPES[:4])}, ...) to hook; "
                "activations applied as functions (F.relu) are invisible to hooks, so "
                "pass layers=[names of the modules whose outputs you want]"
            )
        return chosen
    names_by_module = {id(module): name for name, module in named.items()}
    chosen = {}
    for layer in layers:
        if isinstance(layer, nn.Module):
            if id(layer) not in names_by_module:
                raise ValueError(
                    f"module {layer!r} is not a submodule of {type(model).__name__}"
                )
            chosen[names_by_module[id(layer)]] = layer
        elif layer in named:
            chosen[layer] = named[layer]
        else:
            raise ValueError(
                f"no submodule named {layer!r} in {type(model).__name__}; "
                f"available: {sorted(n for n in named if n)}"
            )
    return chosen


def capture_activations(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[str | nn.Module] | None = None,
    forward_fn: ForwardFn | None = None,
    *,
    train_mode: bool = False,
) -> dict[str, torch.Tensor]:
    """Outputs of chosen layers on one forward pass, leaving the model as it was.

    Runs without autograd, in eval mode by default (dropout off, BatchNorm on its
    running statistics), and restores every module's train/eval flag, every buffer
    (BatchNorm running mean/var/count) and the RNG streams afterwards, so a training
    run is unaffected bit for bit.

    Args:
        model: Any ``nn.Module``; it keeps its device (``inputs`` tensors are moved to
            it when ``forward_fn`` is None).
        inputs: Batch given to the forward pass.
        layers: Module names (as in ``model.named_modules()``) or modules to hook.
            Default: every element-wise activation module (ReLU, LeakyReLU, GELU,
            ELU, SiLU, Tanh, ...; see :data:`ACTIVATION_TYPES`).
        forward_fn: ``forward_fn(model, inputs)`` for models without a plain forward,
            e.g. ``lambda agent, obs: (agent.actor_mean(obs), agent.critic(obs))``.
        train_mode: Run the forward in train mode (batch statistics, dropout on);
            state is restored either way.

    Returns:
        ``{name: activation}`` (detached copies) in call order. A module called more
        than once is stored as ``name``, ``name:1``, ``name:2``, ...

    Raises:
        ValueError: If a layer name is unknown, or no chosen layer ran.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> acts = capture_activations(net, torch.randn(5, 3))
        >>> list(acts), tuple(acts["1"].shape)
        (['1'], (5, 4))
    """
    modules = resolve_layers(model, layers)
    captured: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise ValueError(
                    f"layer {name!r} returned {type(output).__name__}, not a tensor; "
                    "hook a module whose output is the activation tensor"
                )
            count = calls.get(name, 0)
            calls[name] = count + 1
            # Clone: a later in-place op (e.g. a residual ``out += x``) must not
            # change what was captured.
            captured[name if count == 0 else f"{name}:{count}"] = (
                output.detach().clone()
            )

        return hook

    if forward_fn is None:
        inputs = move_to_device(inputs, model_device(model))
        forward_fn = default_forward
    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        with torch.no_grad(), preserved_training_state(model, train_mode):
            forward_fn(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not captured:
        raise ValueError(
            f"none of the layers {list(modules)} ran during the forward pass; check "
            "`layers` and `forward_fn`"
        )
    return captured
