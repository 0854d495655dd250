"""Resets at a task switch: the output layer (head reset), chosen layers (layer
reset) or the whole network.

All act in ``on_task_switch(task_id)`` when the task id differs from the last one
seen (the first task keeps its initial weights, so the protocol's ``task_switch`` at
the first reset changes nothing). A full reset re-runs the model's own initialisation,
``model.reset_parameters()``, and a head reset ``model.reset_head_parameters()``, when
the model defines them (every clenv.models network does); otherwise each layer gets fresh weights U(-b, b), b = gain * sqrt(3 / fan_in),
biases 0 (LoP's init): gain 1 for output layers, the activation's gain (ReLU: sqrt 2)
for hidden layers. Pass ``init_fn`` to use another initialisation (e.g. PPO's
orthogonal ``layer_init``).

``reset_optimizer_state`` says whether the optimizer state (momentum, Adam moments) of
what is reset is cleared (SC: its CIFAR reset builds a new optimizer state,
incremental_cifar/train_incremental_cifar.py:364-378) or kept (LoP: its CIFAR reset
and ImageNet head reset leave the SGD momentum as it is,
lop/incremental_cifar/incremental_cifar_experiment.py:466-469,
lop/imagenet/single_expr.py:141-143).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod, SeededGenerator
from clenv.methods.layers import (
    HiddenLayerSpec,
    activation_gain,
    find_hidden_layers,
    find_output_layers,
    uniform_bound,
)
from clenv.metrics.activations import resolve_layers
from clenv.metrics.bounds import WEIGHT_LAYER_TYPES

HEAD_MODES = ("reinit", "zero")


@torch.no_grad()
def reinitialize_layer(
    layer: nn.Module, gain: float, generator: torch.Generator
) -> None:
    """Weight ~ U(-gain * sqrt(3 / fan_in), +...), bias 0."""
    bound = uniform_bound(layer, gain)
    layer.weight.uniform_(-bound, bound, generator=generator)
    if layer.bias is not None:
        layer.bias.zero_()


def _init_gains(hidden, heads) -> dict[int, float]:
    """Each weight layer's initialisation gain by ``id``: its activation's for a
    hidden layer, 1 (linear) for an output layer; other layers take the default."""
    gains = {id(h.layer): activation_gain(h.activation) for h in hidden}
    gains.update({id(m): 1.0 for m in heads})
    return gains


class _TaskSwitchReset(PlasticityMethod):
    """Resets something when the task id changes; keeps the last id and the RNG."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        reset_optimizer_state: bool,
        seed: int,
    ):
        self.model = model
        self.optimizer = optimizer
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self.rng = SeededGenerator(next(model.parameters()).device, seed)
        # to be filled in runtime
        self.task_id = 0
        self.num_resets = 0

    def on_task_switch(self, task_id: int) -> None:
        if task_id == self.task_id:
            return
        self.task_id = task_id
        self.reset()
        self.num_resets += 1

    def reset(self) -> None:
        """Reset now, whatever the task."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "num_resets": self.num_resets,
            "rng": self.rng.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task_id = int(state["task_id"])
        self.num_resets = int(state["num_resets"])
        self.rng.load(state["rng"])


class HeadReset(_TaskSwitchReset):
    """Reinitialise (or zero, as LoP's ImageNet runs) the output layer at each task.

    Args:
        model: the network.
        optimizer: whose state of the head's parameters is cleared.
        mode: ``"reinit"`` or ``"zero"``. ``"reinit"`` re-runs the model's own
            head init, ``model.reset_head_parameters()``, when the model defines it
            (every clenv.models network; LoP's CIFAR head reset re-runs its ResNet
            init on ``fc``, lop/incremental_cifar/incremental_cifar_experiment.py:
            466-467) and ``head`` is not given; otherwise fresh weights with gain
            ``init_gain``.
        head: module names of the output layers; default: the layers the last hidden
            layers feed (every head of a multi-head model such as a PPO agent).
        init_gain: gain of the fresh weights' bound (LoP: 1 for the output layer).
        init_fn: ``init_fn(module)`` to reinitialise a head instead.
        reset_optimizer_state: clear the optimizer state of the head's parameters
            (``False``: keep it, as LoP's code does).
        hidden_layers: explicit hidden-layer spec, to find the head.
        seed: seed of the generator for fresh weights.
    """

    name = "head_reset"
    order = 10

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        mode: Literal["reinit", "zero"] = "reinit",
        head: Sequence[str] | None = None,
        init_gain: float = 1.0,
        init_fn: Callable[[nn.Module], None] | None = None,
        reset_optimizer_state: bool = True,
        hidden_layers: HiddenLayerSpec = None,
        seed: int = 0,
    ):
        if mode not in HEAD_MODES:
            raise ValueError(f"mode must be one of {HEAD_MODES}, got {mode!r}")
        super().__init__(model, optimizer, reset_optimizer_state, seed)
        self.mode = mode
        self.init_gain = float(init_gain)
        self.init_fn = init_fn
        self.explicit_head = head is not None
        if head is None:
            self.heads = find_output_layers(
                model, find_hidden_layers(model, hidden_layers)
            )
        else:
            names = [head] if isinstance(head, str) else head
            self.heads = list(resolve_layers(model, names).values())

    @torch.no_grad()
    def reset(self) -> None:
        own_init = (
            self.mode == "reinit"
            and self.init_fn is None
            and not self.explicit_head
            and callable(getattr(self.model, "reset_head_parameters", None))
        )
        if own_init:
            self.model.reset_head_parameters()
        for head in self.heads:
            if self.mode == "zero":
                for param in head.parameters():
                    param.zero_()
            elif self.init_fn is not None:
                self.init_fn(head)
            elif not own_init:
                reinitialize_layer(head, self.init_gain, self.rng.generator)
            if self.optimizer is not None and self.reset_optimizer_state:
                for param in head.parameters():
                    self.optimizer.state.pop(param, None)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "init_gain": self.init_gain,
            "reset_optimizer_state": self.reset_optimizer_state,
        }


class FullReset(_TaskSwitchReset):
    """Reinitialise the whole network at each task.

    A model that defines ``reset_parameters()`` (every clenv.models network: it
    re-runs the model's own init) is reset by it. Otherwise weight layers get fresh
    weights (hidden layers: their activation's gain; output layers: 1; layers not in a
    discoverable hidden layer: ``default_gain``); normalisation layers their
    ``reset_parameters()`` and running statistics; any other parameter (e.g. PPO's
    ``actor_logstd``) goes back to its value when the method was built.

    Args:
        model: the network.
        optimizer: whose whole state is cleared (Adam restarts at step 0) when
            ``reset_optimizer_state``.
        init_fn: ``init_fn(model)`` to reinitialise instead.
        reset_optimizer_state: clear the optimizer state (SC) or keep it (LoP).
        default_gain: gain for weight layers outside the discovered hidden layers
            (sqrt 2: Kaiming for ReLU nets).
        hidden_layers: explicit hidden-layer spec, for the gains.
        seed: seed of the generator for fresh weights.
    """

    name = "reset"
    order = 5

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        init_fn: Callable[[nn.Module], None] | None = None,
        default_gain: float = math.sqrt(2.0),
        reset_optimizer_state: bool = True,
        hidden_layers: HiddenLayerSpec = None,
        seed: int = 0,
    ):
        super().__init__(model, optimizer, reset_optimizer_state, seed)
        self.init_fn = init_fn
        self.default_gain = float(default_gain)
        try:
            hidden = find_hidden_layers(model, hidden_layers)
        except ValueError:
            hidden = []
        heads = find_output_layers(model, hidden) if hidden else []
        self.gains = _init_gains(hidden, heads)
        covered = {
            id(p)
            for m in model.modules()
            if isinstance(m, WEIGHT_LAYER_TYPES) or hasattr(m, "reset_parameters")
            for p in m.parameters(recurse=False)
        }
        self.initial_values = [
            (p, p.detach().clone()) for p in model.parameters() if id(p) not in covered
        ]

    @torch.no_grad()
    def reset(self) -> None:
        if self.init_fn is not None:
            self.init_fn(self.model)
        elif callable(getattr(self.model, "reset_parameters", None)):
            self.model.reset_parameters()
        else:
            for module in self.model.modules():
                if isinstance(module, WEIGHT_LAYER_TYPES):
                    gain = self.gains.get(id(module), self.default_gain)
                    reinitialize_layer(module, gain, self.rng.generator)
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                    if hasattr(module, "reset_running_stats"):
                        module.reset_running_stats()
            for param, value in self.initial_values:
                param.copy_(value)
        if self.optimizer is not None and self.reset_optimizer_state:
            self.optimizer.state.clear()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "default_gain": self.default_gain,
            "reset_optimizer_state": self.reset_optimizer_state,
        }


class LayerReset(_TaskSwitchReset):
    """Reinitialise chosen layers at each task: head reset for any set of layers.

    Each chosen module (a name from ``model.named_modules()``) is reset with
    everything inside it: a Linear/Conv gets fresh weights U(-b, b),
    b = gain * sqrt(3 / fan_in), bias 0 (gain: 1 for an output layer, the
    activation's gain for a hidden layer, ``default_gain`` for a layer outside the
    discovered hidden layers), any other module with parameters (a LayerNorm) its
    own ``reset_parameters()``. With the default ``layers=None`` the chosen layers
    are the output layers and, when the model defines ``reset_head_parameters()``
    (every clenv.models network), its own head init is used: ``layer_reset`` then
    does what ``head_reset`` does. The optimizer state of the reset parameters is
    dropped (``reset_optimizer_state=True``, as head reset does) or kept.

    Args:
        model: the network.
        optimizer: whose state of the reset parameters is cleared.
        layers: module names to reset (one name or several); default the head.
        init_fn: ``init_fn(module)`` to reinitialise each chosen module instead.
        default_gain: gain for weight layers that are neither hidden nor output
            layers of the discovered hidden layers (sqrt 2: Kaiming for ReLU).
        reset_optimizer_state: clear the optimizer state of what is reset.
        hidden_layers: explicit hidden-layer spec, for the head and the gains.
        seed: seed of the generator for fresh weights.
    """

    name = "layer_reset"
    order = 12

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        layers: Sequence[str] | str | None = None,
        init_fn: Callable[[nn.Module], None] | None = None,
        default_gain: float = math.sqrt(2.0),
        reset_optimizer_state: bool = True,
        hidden_layers: HiddenLayerSpec = None,
        seed: int = 0,
    ):
        super().__init__(model, optimizer, reset_optimizer_state, seed)
        self.init_fn = init_fn
        self.default_gain = float(default_gain)
        try:
            hidden = find_hidden_layers(model, hidden_layers)
        except ValueError:
            if layers is None:
                raise
            hidden = []
        heads = find_output_layers(model, hidden) if hidden else []
        self.gains = _init_gains(hidden, heads)
        self.default_head = layers is None
        if layers is None:
            names = {id(m): n for n, m in model.named_modules()}
            self.layer_names = [names[id(m)] for m in heads]
            self.modules = heads
        else:
            self.layer_names = [layers] if isinstance(layers, str) else list(layers)
            named = dict(model.named_modules())
            missing = [n for n in self.layer_names if n not in named]
            if missing:
                raise ValueError(
                    f"layer_reset: {type(model).__name__} has no module {missing}; "
                    f"names come from model.named_modules(), e.g. "
                    f"{[n for n in named if n][:6]}"
                )
            self.modules = [named[n] for n in self.layer_names]

    @torch.no_grad()
    def reset(self) -> None:
        own_head_init = (
            self.default_head
            and self.init_fn is None
            and callable(getattr(self.model, "reset_head_parameters", None))
        )
        if own_head_init:
            self.model.reset_head_parameters()
        for module in self.modules:
            if self.init_fn is not None:
                self.init_fn(module)
            elif not own_head_init:
                for sub in module.modules():
                    if isinstance(sub, WEIGHT_LAYER_TYPES):
                        gain = self.gains.get(id(sub), self.default_gain)
                        reinitialize_layer(sub, gain, self.rng.generator)
                    elif list(sub.parameters(recurse=False)) and hasattr(
                        sub, "reset_parameters"
                    ):
                        sub.reset_parameters()
            if self.optimizer is not None and self.reset_optimizer_state:
                for param in module.parameters():
                    self.optimizer.state.pop(param, None)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "layers": self.layer_names,
            "default_gain": self.default_gain,
            "reset_optimizer_state": self.reset_optimizer_state,
        }
