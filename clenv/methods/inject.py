"""Plasticity injection (Nikishin, Oh, Ostrovski, Lyle, Pascanu, Dabney and Barreto,
*Deep Reinforcement Learning with Plasticity Injection*, NeurIPS 2023).

At an injection the current head ``h_theta`` is frozen, and two copies of freshly
initialised parameters ``theta'`` are made, one trained and one frozen; from then on
the network outputs (the paper's Expression 1)::

    h_theta(phi(x)) + h_theta'(phi(x)) - h_theta'_frozen(phi(x))

which equals the old output exactly at the moment of injection (the last two terms
are equal), keeps the number of trainable parameters, and lets the encoder ``phi``
keep learning: gradients flow into it through all three heads (the paper's Figure 2
and Expression (1), as its Figure 2 caption describes them: freeze the head's
theta, make two copies of randomly initialised theta', one frozen and one not, pass
phi(x) to all three heads and combine them by Expression (1)). The injected part
here is the network's output layer (``model.head``, or every output layer of a
multi-head model such as a PPO agent's actor and critic). The new parameters join
the optimizer in a parameter group of their own; the rest of the optimizer state is
kept.

Checked for issue 14 against the paper's abstract and its Figure 2 caption only
(arXiv:2305.15555; no official code was released). NOT verified against the
paper's text: how much of the network its "head" is in its Atari (Double DQN)
agents (the last linear layer here; it may be more than one layer), when it
injects and how often (once, at a chosen time, as read; this module's defaults
differ, see below), the fresh head's initialisation, and whether it keeps or
resets the optimizer state (kept here; an earlier docstring's appendix citation
for this could not be confirmed and was removed).

The paper injects once, at a chosen time. Here an injection happens at every task
switch (``on_task_switch``, from the second task on; the default) or every
``interval`` optimizer steps, at most ``max_injections`` times. At the second and
later injections the trained pair is folded into the frozen head first
(``W <- W + W' - W'_frozen``, the same for the bias, which is exact for a linear
head up to float rounding), so a forward always costs three head evaluations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.base import PlasticityMethod, SeededGenerator
from clenv.methods.layers import HiddenLayerSpec, find_hidden_layers, find_output_layers
from clenv.methods.resets import reinitialize_layer
from clenv.metrics.activations import resolve_layers


class PlasticityInjection(PlasticityMethod):
    """Freeze the head, add a trained head and its frozen twin; output unchanged.

    Works through a forward hook on each injected ``nn.Linear``: its output gets
    ``h_new(x) - h_new_frozen(x)`` added once injected (nothing before).

    Args:
        model: the network.
        optimizer: gets the new heads' parameters as one extra parameter group at
            construction (they have no gradient, so no update, before the first
            injection); their optimizer state is cleared at each injection.
        head: module names of the layers to inject into (``nn.Linear``); default
            ``model.head`` when the model has one (every clenv.models network), else
            every output layer found from the hidden layers (PPO: actor and critic).
        interval: inject every ``interval`` optimizer steps (``after_step``) instead
            of at task switches.
        max_injections: stop after this many injections (``None``: no limit; the
            paper injects once).
        init_gain: gain of the fresh weights, ``U(-g sqrt(3 / fan_in), +...)`` and
            zero bias (LoP's output-layer init, as :class:`HeadReset`'s fallback).
        init_fn: ``init_fn(linear)`` to draw the fresh head instead.
        hidden_layers: explicit hidden-layer spec, to find the output layers.
        seed: seed of the generator for the fresh weights.
    """

    name = "inject"
    order = 15

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        head: Sequence[str] | str | None = None,
        interval: int | None = None,
        max_injections: int | None = None,
        init_gain: float = 1.0,
        init_fn: Callable[[nn.Module], None] | None = None,
        hidden_layers: HiddenLayerSpec = None,
        seed: int = 0,
    ):
        if interval is not None and interval < 1:
            raise ValueError(f"interval must be a positive step count, got {interval}")
        if max_injections is not None:
            check_range("max_injections", max_injections, 1)
        self.model = model
        self.optimizer = optimizer
        self.interval = interval
        self.max_injections = max_injections
        self.init_gain = float(init_gain)
        self.init_fn = init_fn
        if head is not None:
            names = [head] if isinstance(head, str) else list(head)
            self.heads = list(resolve_layers(model, names).values())
        elif isinstance(getattr(model, "head", None), nn.Module):
            self.heads = [model.head]
        else:
            self.heads = find_output_layers(
                model, find_hidden_layers(model, hidden_layers)
            )
        for module in self.heads:
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"inject acts on nn.Linear heads, got {type(module).__name__}; "
                    "pass head=<name of a Linear output layer>"
                )
        self.trained = [_bare_copy(m) for m in self.heads]
        self.frozen = [_bare_copy(m).requires_grad_(False) for m in self.heads]
        if optimizer is not None:
            optimizer.add_param_group(
                {"params": [p for m in self.trained for p in m.parameters()]}
            )
        self.rng = SeededGenerator(self.heads[0].weight.device, seed)
        self._handles = [
            module.register_forward_hook(self._hook(index))
            for index, module in enumerate(self.heads)
        ]
        # to be filled in runtime
        self.task_id = 0
        self.steps = 0
        self.num_injections = 0

    def _hook(self, index: int):
        def hook(module, args, output):
            if not self.num_injections:
                return None
            x = args[0]
            return output + (self.trained[index](x) - self.frozen[index](x))

        return hook

    @property
    def active(self) -> bool:
        """Whether another injection may happen."""
        return self.max_injections is None or self.num_injections < self.max_injections

    @torch.no_grad()
    def inject(self) -> None:
        """Inject now: freeze the current head (folding a previous injection into
        it), draw a fresh trained head and copy it into its frozen twin."""
        for head, trained, frozen in zip(
            self.heads, self.trained, self.frozen, strict=True
        ):
            if self.num_injections:
                head.weight.add_(trained.weight - frozen.weight)
                head.bias.add_(trained.bias - frozen.bias)
            head.requires_grad_(False)
            for param in head.parameters():
                param.grad = None
            if self.init_fn is not None:
                self.init_fn(trained)
            else:
                reinitialize_layer(trained, self.init_gain, self.rng.generator)
            frozen.load_state_dict(trained.state_dict())
            if self.optimizer is not None:
                for param in trained.parameters():
                    self.optimizer.state.pop(param, None)
        self.num_injections += 1

    def on_task_switch(self, task_id: int) -> None:
        if task_id == self.task_id:
            return
        self.task_id = task_id
        if self.interval is None and self.active:
            self.inject()

    def after_step(self, inputs: Any = None) -> None:
        self.steps += 1
        if self.interval is not None and self.steps % self.interval == 0:
            if self.active:
                self.inject()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "max_injections": self.max_injections,
            "init_gain": self.init_gain,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "steps": self.steps,
            "num_injections": self.num_injections,
            "trained": [m.state_dict() for m in self.trained],
            "frozen": [m.state_dict() for m in self.frozen],
            "rng": self.rng.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["trained"]) != len(self.heads):
            raise ValueError(
                f"inject state is for {len(state['trained'])} heads, this model has "
                f"{len(self.heads)}; build the same model and --reg before loading"
            )
        self.task_id = int(state["task_id"])
        self.steps = int(state["steps"])
        self.num_injections = int(state["num_injections"])
        for module, saved in zip(self.trained, state["trained"], strict=True):
            module.load_state_dict(saved)
        for module, saved in zip(self.frozen, state["frozen"], strict=True):
            module.load_state_dict(saved)
        for head in self.heads:
            head.requires_grad_(self.num_injections == 0)
        self.rng.load(state["rng"])


def _bare_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` without the hooks other methods put on it."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    return clone
