"""SC's dead-unit upper bound on the rank of the loss Hessian."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from clenv.metrics.activations import (
    ForwardFn,
    model_device,
    move_to_device,
    preserved_training_state,
)

WEIGHT_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# A zero output of these activations implies a zero derivative (ReLU'(x<=0) = 0), the
# premise of the bound; for GELU, Tanh, LeakyReLU, ... a zero output does not.
DEAD_CAPABLE_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
# Per-channel layers allowed between the weight layer and the activation.
PER_CHANNEL_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Layers allowed between the activation and the next weight layer: they keep a
# channel a channel and map an all-zero channel to an all-zero channel.
ZERO_PRESERVING = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


@dataclass(frozen=True)
class DeadUnitBound:
    """SC's dead-unit bound on rank(H) for one batch.

    Attributes:
        bound: P minus the number of parameters with identically zero first and
            second derivatives because of dead units (the union, so parameters
            shared by two dead units, e.g. the weight between dead units of
            consecutive layers, count once). rank(H) <= bound holds exactly.
        sc_bound: SC's formula P - sum_l k_l (I_l + O_l + 1) (I_l fan-in, O_l
            outgoing weights per unit, 1 for the bias). It double-counts shared
            weights, so it can fall below ``bound`` (and below the true rank).
        num_parameters: P, the trainable parameters.
        dead_units: Total dead units over the layers analysed.
        dead_units_per_layer: ``{activation name: dead units}``.
        skipped_layers: Activations not analysed, with the reason.
    """

    bound: int
    sc_bound: int
    num_parameters: int
    dead_units: int
    dead_units_per_layer: dict[str, int] = field(default_factory=dict)
    skipped_layers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: Any
    input_version: int
    output: Any = None
    output_version: int = 0


def _trace_leaf_calls(
    model: nn.Module, inputs: Any, forward_fn: ForwardFn | None
) -> list[_Call]:
    """Every leaf-module call in order, with its input/output tensors and their
    version counters (to prove data flow: an input *is* the previous output, and no
    in-place op touched it in between)."""
    calls: list[_Call] = []
    counts: dict[str, int] = {}
    handles = []

    def pre_hook(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            first = args[0] if args else None
            version = first._version if isinstance(first, torch.Tensor) else -1
            count = counts.get(name, 0)
            counts[name] = count + 1
            label = name if count == 0 else f"{name}:{count}"
            calls.append(_Call(label, module, first, version))

        return hook

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        call = next(c for c in reversed(calls) if c.module is module)
        call.output = output
        call.output_version = (
            output._version if isinstance(output, torch.Tensor) else -1
        )

    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook))
    if forward_fn is None:
        inputs = move_to_device(inputs, model_device(model))
    try:
        with torch.no_grad(), preserved_training_state(model, train_mode=False):
            (forward_fn or (lambda m, x: m(x)))(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _flows(source: _Call, target: _Call) -> bool:
    """True when ``target``'s input is exactly ``source``'s output, unmodified."""
    return (
        isinstance(target.input, torch.Tensor)
        and target.input is source.output
        and target.input_version == source.output_version
    )


def dead_unit_rank_bound(
    model: nn.Module, inputs: Any, forward_fn: ForwardFn | None = None
) -> DeadUnitBound:
    """Upper bound on rank(H) from ReLU units that are dead on ``inputs``.

    SC (Prakash et al. 2026, Sec. 4): a unit that outputs zero on every sample has
    zero first and second derivatives for its incoming weights, its bias and its
    outgoing weights, so those rows of the Hessian (of any loss on this batch) are
    zero and rank(H) <= P - sum_l k_l (I_l + O_l + 1).

    Analysed: chains ``Linear/Conv -> [BatchNorm] -> ReLU/ReLU6 -> [Dropout, pooling,
    Flatten] -> Linear/Conv`` of modules (MLPs, LoP's ConvNet, PPO actor/critic).
    For a conv layer a unit is a channel, dead when zero at every position of every
    sample; its incoming weights are the filter ``weight[j]`` (C_in k_h k_w numbers),
    its outgoing weights ``next.weight[:, j]`` (conv) or the ``in_features / C``
    columns it feeds after a Flatten. BatchNorm's (gamma_j, beta_j) of a dead unit
    are counted too. The chain is checked by data flow (each module's input *is* the
    previous module's output, untouched by in-place ops), so an activation reached
    through a functional op (F.relu, a residual ``+``) is skipped and listed in
    ``skipped_layers``, never guessed; skipping only loosens the bound. Caveat: a
    weight layer whose output also feeds a *functional* branch cannot be detected.

    Args:
        model: The network (evaluated in eval mode; state untouched).
        inputs: The batch the Hessian is taken on (SC: 2000 samples).
        forward_fn: ``forward_fn(model, inputs)`` for models without a plain forward
            (e.g. a PPO agent: run the actor and the critic).

    Returns:
        A :class:`DeadUnitBound`.
    """
    calls = _trace_leaf_calls(model, inputs, forward_fn)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    masks = {
        id(p): torch.zeros_like(p, dtype=torch.bool)
        for p in model.parameters()
        if p.requires_grad
    }
    num_parameters = sum(mask.numel() for mask in masks.values())
    per_layer: dict[str, int] = {}
    skipped: dict[str, str] = {}
    sc_total = 0

    def mark(param: torch.Tensor | None, index: Any) -> int:
        if param is None or id(param) not in trainable:
            return 0
        masks[id(param)][index] = True
        return param[index].numel()

    for position, call in enumerate(calls):
        if not isinstance(call.module, DEAD_CAPABLE_ACTIVATIONS):
            continue
        activation = call.output
        if not isinstance(activation, torch.Tensor) or activation.dim() < 2:
            skipped[call.name] = "output is not a (samples, units, ...) tensor"
            continue
        # producer: [norm] then weight layer, each feeding the next directly
        chain_back = position - 1
        norm = None
        if chain_back >= 0 and isinstance(calls[chain_back].module, PER_CHANNEL_NORMS):
            if not _flows(calls[chain_back], call):
                chain_back = -1
            else:
                norm, chain_back = calls[chain_back], chain_back - 1
        target = norm or call
        producer = calls[chain_back] if chain_back >= 0 else None
        if (
            producer is None
            or not isinstance(producer.module, WEIGHT_LAYER_TYPES)
            or not _flows(producer, target)
        ):
            skipped[call.name] = "input is not directly a Linear/Conv output"
            continue
        units = activation.shape[1]
        weight_layer = producer.module
        produced = getattr(weight_layer, "out_features", None) or getattr(
            weight_layer, "out_channels", None
        )
        if produced != units:
            skipped[call.name] = f"{units} units but producer has {produced} outputs"
            continue
        dead = (activation.detach().transpose(0, 1).reshape(units, -1) == 0).all(dim=1)
        dead_indices = dead.nonzero().flatten().tolist()
        per_layer[call.name] = len(dead_indices)
        consumer, columns_per_unit = _find_consumer(calls, position, units)
        for unit in dead_indices:
            fan_in = mark(weight_layer.weight, unit)
            bias = mark(weight_layer.bias, unit)
            if norm is not None:
                mark(getattr(norm.module, "weight", None), unit)
                mark(getattr(norm.module, "bias", None), unit)
            fan_out = 0
            if consumer is not None:
                columns = slice(unit * columns_per_unit, (unit + 1) * columns_per_unit)
                fan_out = mark(consumer.weight, (slice(None), columns))
            sc_total += fan_in + fan_out + bias
        if consumer is None and dead_indices:
            skipped[f"{call.name}->next"] = (
                "no Linear/Conv reads these units directly; outgoing weights not counted"
            )
    zero_rows = sum(int(mask.sum()) for mask in masks.values())
    return DeadUnitBound(
        bound=num_parameters - zero_rows,
        sc_bound=num_parameters - sc_total,
        num_parameters=num_parameters,
        dead_units=sum(per_layer.values()),
        dead_units_per_layer=per_layer,
        skipped_layers=skipped,
    )


def _find_consumer(
    calls: list[_Call], position: int, units: int
) -> tuple[nn.Module | None, int]:
    """Next weight layer fed by the activation at ``position`` through
    zero-preserving layers, and how many of its input columns each unit feeds."""
    previous = calls[position]
    for call in calls[position + 1 :]:
        if not _flows(previous, call):
            return None, 0
        module = call.module
        if isinstance(module, WEIGHT_LAYER_TYPES):
            received = call.input
            if (
                isinstance(module, nn.Linear)
                and received.dim() == 2
                and module.in_features % units == 0
            ):  # a (flattened, channel-major) feature vector
                return module, module.in_features // units
            if (
                not isinstance(module, nn.Linear)
                and module.groups == 1
                and module.in_channels == units
            ):
                return module, 1
            return None, 0
        if not isinstance(module, ZERO_PRESERVING):
            return None, 0
        previous = call
    return None, 0
