"""Which layers of a network hold the hidden units a method acts on.

A *hidden layer* is the triple ``layer -> activation -> next_layer``: ``layer`` (a
``Linear`` or ``Conv``) computes the units' pre-activations, ``activation`` outputs the
features (what ER ranks, what CBP and ReDo score), and ``next_layer`` reads them (its
weights are the units' outgoing weights). A unit is an output feature of a ``Linear`` or
an output channel of a ``Conv``.

:func:`find_hidden_layers` discovers the triples in every ``nn.Sequential`` of a model
(nested ``Sequential`` are flattened; normalisation layers may sit between ``layer`` and
``activation``; pooling, dropout and ``Flatten`` between ``activation`` and
``next_layer``). It walks each top-level ``Sequential`` separately, so a PPO agent with
``critic`` and ``actor_mean`` MLPs gives the hidden layers of both. Any other
architecture (a ResNet, a model whose ``forward`` reuses one ``ReLU`` module) passes an
explicit spec: :class:`HiddenLayer` objects or ``(layer, activation, next_layer)``
tuples of module names.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clenv.metrics.activations import ACTIVATION_TYPES
from clenv.metrics.bounds import WEIGHT_LAYER_TYPES, ZERO_PRESERVING

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
# Among the modules that may sit between an activation and the next weight layer
# (ZERO_PRESERVING: a unit/channel stays a unit/channel), the pooling layers.
POOLS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


@dataclass(frozen=True)
class HiddenLayer:
    """One hidden layer: ``layer -> [norm] -> activation -> next_layer``.

    Attributes:
        name: the activation module's name in ``model.named_modules()``.
        layer: the ``Linear``/``Conv`` whose outputs are the units.
        activation: the module whose output are the features.
        next_layer: the ``Linear``/``Conv`` that reads the features.
        norm: an optional normalisation layer between ``layer`` and ``activation``.
        pool: the last pooling layer between ``activation`` and ``next_layer``, if
            any (its output is what ``next_layer`` reads, e.g. LoP's ConvNet).
    """

    name: str
    layer: nn.Module
    activation: nn.Module
    next_layer: nn.Module
    norm: nn.Module | None = None
    pool: nn.Module | None = None

    @property
    def num_units(self) -> int:
        """Output features of a ``Linear``, output channels of a ``Conv``."""
        return self.layer.weight.shape[0]

    def outgoing_columns(self) -> int:
        """How many input columns of ``next_layer`` each unit feeds.

        1 when both are Linear or both Conv; H*W when a Conv's channels are flattened
        into a Linear (channel-major, as ``nn.Flatten`` does).
        """
        fan = self.next_layer.weight.shape[1]
        if fan % self.num_units:
            raise ValueError(
                f"hidden layer {self.name!r}: next layer has {fan} inputs, not a "
                f"multiple of the layer's {self.num_units} units; pass an explicit "
                "spec if the layers are not connected unit to unit"
            )
        return fan // self.num_units if isinstance(self.next_layer, nn.Linear) else 1


# What ``hidden_layers=`` takes: None (discover), or HiddenLayer objects / module names.
HiddenLayerSpec = Sequence[HiddenLayer | Sequence[str]] | None


def _flatten_sequential(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    leaves = []
    for child_name, child in seq.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        if isinstance(child, nn.Sequential):
            leaves.extend(_flatten_sequential(child, name))
        else:
            leaves.append((name, child))
    return leaves


def _top_level_sequentials(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    if isinstance(model, nn.Sequential):
        return [("", model)]
    found = []
    for name, child in model.named_children():
        found.extend(
            (f"{name}.{sub}" if sub else name, seq)
            for sub, seq in _top_level_sequentials(child)
        )
    return found


def _scan_chain(leaves: list[tuple[str, nn.Module]]) -> list[HiddenLayer]:
    hidden = []
    for i, (_, layer) in enumerate(leaves):
        if not isinstance(layer, WEIGHT_LAYER_TYPES):
            continue
        j, norm = i + 1, None
        while j < len(leaves) and isinstance(leaves[j][1], NORMS):
            norm = leaves[j][1] if norm is None else norm
            j += 1
        if j >= len(leaves) or not isinstance(leaves[j][1], ACTIVATION_TYPES):
            continue
        act_name, activation = leaves[j]
        k, pool = j + 1, None
        while k < len(leaves) and isinstance(leaves[k][1], ZERO_PRESERVING):
            if isinstance(leaves[k][1], POOLS):
                pool = leaves[k][1]
            k += 1
        if k < len(leaves) and isinstance(leaves[k][1], WEIGHT_LAYER_TYPES):
            hidden.append(
                HiddenLayer(act_name, layer, activation, leaves[k][1], norm, pool)
            )
    return hidden


def find_hidden_layers(
    model: nn.Module,
    spec: Sequence[HiddenLayer | Sequence[str]] | None = None,
) -> list[HiddenLayer]:
    """The hidden layers of ``model``, discovered or from an explicit spec.

    Args:
        model: any ``nn.Module``.
        spec: ``None`` to discover ``Linear/Conv -> activation -> Linear/Conv`` in every
            top-level ``nn.Sequential``; else a list of :class:`HiddenLayer` or of
            ``(layer, activation, next_layer)`` module names (as in
            ``model.named_modules()``), or ``(layer, norm, activation, next_layer)``
            when a BatchNorm/LayerNorm sits between (CBP and ReDo then reset its
            entries of a replaced unit too).

    Returns:
        The hidden layers in forward order (per ``Sequential``, in registration order).

    Raises:
        ValueError: when nothing is found, or a name in ``spec`` does not exist.
    """
    if spec is not None:
        return [_resolve(model, entry) for entry in spec]
    hidden = []
    for _, seq in _top_level_sequentials(model):
        hidden.extend(_scan_chain(_flatten_sequential(seq, "")))
    if not hidden:
        raise ValueError(
            f"found no hidden layer (Linear/Conv -> activation -> Linear/Conv inside an "
            f"nn.Sequential) in {type(model).__name__}; pass hidden_layers=[(layer, "
            "activation, next_layer), ...] with module names from model.named_modules()"
        )
    names = {id(module): name for name, module in model.named_modules()}
    return [
        HiddenLayer(
            names[id(h.activation)], h.layer, h.activation, h.next_layer, h.norm, h.pool
        )
        for h in hidden
    ]


def _resolve(model: nn.Module, entry: HiddenLayer | Sequence[str]) -> HiddenLayer:
    if isinstance(entry, HiddenLayer):
        return entry
    if len(entry) not in (3, 4):
        raise ValueError(
            "a hidden-layer spec is (layer, activation, next_layer) or (layer, norm, "
            f"activation, next_layer) module names, got {entry!r}"
        )
    modules = []
    for name in entry:
        try:
            modules.append(model.get_submodule(name))
        except AttributeError as error:
            raise ValueError(
                f"hidden-layer spec {entry!r}: {type(model).__name__} has no module "
                f"{name!r}; names come from model.named_modules()"
            ) from error
    layer, *norm, activation, next_layer = modules
    for role, module in (("layer", layer), ("next_layer", next_layer)):
        if not isinstance(module, WEIGHT_LAYER_TYPES):
            raise ValueError(
                f"hidden-layer spec {entry!r}: {role} must be Linear or Conv, got "
                f"{type(module).__name__}"
            )
    if norm and not isinstance(norm[0], NORMS):
        raise ValueError(
            f"hidden-layer spec {entry!r}: the second of four names must be a "
            f"normalisation layer ({', '.join(t.__name__ for t in NORMS)}), got "
            f"{type(norm[0]).__name__}"
        )
    pool = _pool_between(model, activation, next_layer)
    return HiddenLayer(
        entry[-2], layer, activation, next_layer, norm[0] if norm else None, pool
    )


def _pool_between(
    model: nn.Module, activation: nn.Module, next_layer: nn.Module
) -> nn.Module | None:
    """The last pooling layer between ``activation`` and ``next_layer`` when both sit,
    in that order, in one ``nn.Sequential`` chain with only pass-through layers
    between (else None)."""
    for _, seq in _top_level_sequentials(model):
        leaves = [module for _, module in _flatten_sequential(seq, "")]
        starts = [i for i, m in enumerate(leaves) if m is activation]
        if not starts:
            continue
        pool = None
        for module in leaves[starts[0] + 1 :]:
            if module is next_layer:
                return pool
            if not isinstance(module, ZERO_PRESERVING):
                return None
            if isinstance(module, POOLS):
                pool = module
    return None


def find_output_layers(
    model: nn.Module, hidden: Sequence[HiddenLayer]
) -> list[nn.Module]:
    """The output layers: each ``next_layer`` that is no hidden layer's ``layer``."""
    inner = {id(h.layer) for h in hidden}
    outputs, seen = [], set()
    for h in hidden:
        if id(h.next_layer) not in inner and id(h.next_layer) not in seen:
            outputs.append(h.next_layer)
            seen.add(id(h.next_layer))
    if not outputs:
        raise ValueError(
            f"found no output layer in {type(model).__name__}; pass head=<module>"
        )
    return outputs


class _Recording:
    """Forward hooks that keep the output of chosen modules on every forward.

    The methods that score units (CBP, ReDo) read the features of the *training*
    forward, so by default only forwards with grad enabled are recorded: an evaluation
    under ``torch.no_grad()`` (e.g. ``clenv.metrics.capture_activations``) does not
    overwrite them, and nothing records while :func:`recording_paused` is active (the
    ER ascent's own forward).
    """

    paused = 0


@contextlib.contextmanager
def recording_paused() -> Iterator[None]:
    """Pause every method's feature recording (used by forwards a method makes)."""
    _Recording.paused += 1
    try:
        yield
    finally:
        _Recording.paused -= 1


class FeatureRecorder:
    """Keeps the latest training-forward output of each module, detached.

    Args:
        modules: the modules whose outputs to keep.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        self.features: list[torch.Tensor | None] = [None] * len(modules)
        self._handles = [
            module.register_forward_hook(self._hook(i))
            for i, module in enumerate(modules)
        ]

    def _hook(self, index: int):
        def hook(module, args, output):
            if torch.is_grad_enabled() and not _Recording.paused:
                self.features[index] = output.detach()

        return hook

    def complete(self) -> bool:
        """Whether every module has produced an output since the last :meth:`clear`."""
        return all(f is not None for f in self.features)

    def clear(self) -> None:
        """Forget the kept outputs."""
        self.features = [None] * len(self.features)

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def capture_features(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs (with their graph) of ``modules`` during the block.

    Raises:
        ValueError: if a module ran more than once (a shared activation module).
    """
    outputs: list[list[torch.Tensor]] = [[] for _ in modules]

    def make_hook(index):
        def hook(module, args, output):
            outputs[index].append(output)

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    result: list[torch.Tensor] = []
    try:
        with recording_paused():
            yield result
    finally:
        for handle in handles:
            handle.remove()
    for index, seen in enumerate(outputs):
        if len(seen) != 1:
            raise ValueError(
                f"feature module {modules[index]!r} ran {len(seen)} times in one "
                "forward (expected once); give each layer its own activation module "
                "or pass explicit layers"
            )
        result.append(seen[0])


def activation_gain(activation: nn.Module) -> float:
    """``nn.init.calculate_gain`` for an activation module (1 for unknown ones)."""
    table = {
        nn.ReLU: "relu",
        nn.ReLU6: "relu",
        nn.ELU: "relu",
        nn.GELU: "relu",
        nn.SiLU: "relu",
        nn.Mish: "relu",
        nn.Tanh: "tanh",
        nn.Sigmoid: "sigmoid",
        nn.SELU: "selu",
    }
    if isinstance(activation, nn.LeakyReLU):
        return nn.init.calculate_gain("leaky_relu", activation.negative_slope)
    for kind, name in table.items():
        if isinstance(activation, kind):
            return nn.init.calculate_gain(name)
    return 1.0


def fan_in(layer: nn.Module) -> int:
    """Inputs per unit of a ``Linear`` (in_features) or ``Conv`` (in_channels * kernel)."""
    return math.prod(layer.weight.shape[1:])


def uniform_bound(layer: nn.Module, gain: float) -> float:
    """LoP's Kaiming-uniform bound ``gain * sqrt(3 / fan_in)``."""
    return gain * math.sqrt(3.0 / fan_in(layer))
