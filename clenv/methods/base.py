"""The hook interface every plasticity method implements, and :class:`Compose`.

A training loop drives a method with these calls, in this order::

    method.on_task_switch(task_id)                # head reset, full reset
    # for each epoch (PPO: each pass over the rollout; SC's supervised L2-ER: each
    # group of U minibatches):
    method.before_epoch(inputs)                   # ER ascent with timing="before"
    #   for each minibatch of the epoch:
    method.after_loss({"policy": pg_loss.item()}) # C-CHAIN's adaptive coefficient
    loss.backward();  method.after_backward()     # L2 adds lambda * theta to .grad
    optimizer.step(); method.after_step(inputs)   # S&P noise, CBP, ReDo, ER buffer
    method.after_epoch(inputs)                    # ER ascent with timing="after"
    method.state_dict() / method.load_state_dict(state)

``after_loss`` gets the minibatch's loss terms as floats (a PPO loop: ``"policy"``,
``"value"``, ``"entropy"``), before the backward pass; a method that weighs its own
term against the task's loss reads them there.
``before_epoch`` gets the inputs the epoch is about to train on (PPO: the rollout's
observations; SC's ImageNet and CIFAR: the next U minibatches' inputs, concatenated),
``after_epoch`` those it has just trained on. A supervised loop asks
``method.ascent_group_size`` how many minibatches make such a group: U where a method
ascends in ``before_epoch`` on the next U minibatches, ``None`` where the loop's own
epochs will do.

Every hook is a no-op here, so a method overrides only what it needs, and plain
backprop ("bp") is a :class:`Compose` of nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class PlasticityMethod:
    """Base class: a method bound to a model and an optimizer, driven by hooks.

    Subclasses set ``name`` (their ``--reg`` name) and ``order`` (their place when
    :func:`clenv.methods.make_method` composes several; lower runs first).
    """

    name = "bp"
    order = 0

    @property
    def ascent_group_size(self) -> int | None:
        """U, when ``before_epoch`` wants the inputs of the next U minibatches.

        A supervised loop then steps through U minibatches (answered with the current
        weights), calls ``before_epoch`` on their inputs, concatenated, and trains on
        them (SC's grouped ascent on ImageNet and CIFAR: ER with ``timing="before"``).
        ``None`` (here, and for every method but that ER) where ``before_epoch`` takes
        the loop's own epochs; a PPO loop passes its rollout and needs no answer.
        """
        return None

    def before_epoch(self, inputs: Any = None) -> None:
        """Called before an epoch's first minibatch with the inputs it will train on
        (a group of :attr:`ascent_group_size` minibatches where that is not None)."""

    def after_loss(self, losses: dict[str, float]) -> None:
        """Called after a minibatch's loss terms are computed, before ``backward()``.

        Args:
            losses: the loss terms by name, as floats (a PPO loop: ``"policy"``,
                ``"value"``, ``"entropy"``; a supervised loop: ``"task"``).
        """

    def after_backward(self) -> None:
        """Called after ``loss.backward()``, before ``optimizer.step()``."""

    def after_step(self, inputs: Any = None) -> None:
        """Called after ``optimizer.step()`` with the minibatch's inputs."""

    def after_epoch(self, inputs: Any = None) -> None:
        """Called after each pass over a batch of data (PPO: each epoch on a rollout)."""

    def on_task_switch(self, task_id: int) -> None:
        """Called when the task changes, before the first update on the new task."""

    def hyperparameters(self) -> dict[str, Any]:
        """The method's hyperparameters (readable attributes), e.g. for a log table."""
        return {}

    def remove(self) -> None:
        """Remove the hooks the method put on the model (when it is discarded)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, buffers, utilities, RNG state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({params})"


class Compose(PlasticityMethod):
    """Several methods as one: each hook calls the methods in list order.

    The order is the list's; :func:`clenv.methods.make_method` sorts by each method's
    ``order`` (full reset, head reset, L2, S&P, CBP, ReDo, ER), so ``"cbp+l2"`` and
    ``"l2+cbp"`` build the same method. See docs/methods.md.

    Args:
        methods: the methods to run, in the order their hooks are called.
    """

    def __init__(self, methods: Iterable[PlasticityMethod]):
        self.methods = list(methods)
        self.name = "+".join(m.name for m in self.methods) or "bp"

    @property
    def ascent_group_size(self) -> int | None:
        """The one group size the components ask for (None when none asks)."""
        sizes = {m.ascent_group_size for m in self.methods} - {None}
        if len(sizes) > 1:
            raise ValueError(
                f"{self.name}: components ask for different ascent groups "
                f"{sorted(sizes)}; give them the same interval"
            )
        return sizes.pop() if sizes else None

    def before_epoch(self, inputs: Any = None) -> None:
        for method in self.methods:
            method.before_epoch(inputs)

    def after_loss(self, losses: dict[str, float]) -> None:
        for method in self.methods:
            method.after_loss(losses)

    def after_backward(self) -> None:
        for method in self.methods:
            method.after_backward()

    def after_step(self, inputs: Any = None) -> None:
        for method in self.methods:
            method.after_step(inputs)

    def after_epoch(self, inputs: Any = None) -> None:
        for method in self.methods:
            method.after_epoch(inputs)

    def on_task_switch(self, task_id: int) -> None:
        for method in self.methods:
            method.on_task_switch(task_id)

    def remove(self) -> None:
        for method in self.methods:
            method.remove()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            f"{m.name}.{key}": value
            for m in self.methods
            for key, value in m.hyperparameters().items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": [m.name for m in self.methods],
            "methods": [m.state_dict() for m in self.methods],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [m.name for m in self.methods]
        if state.get("names") != names:
            raise ValueError(
                f"method state is for {state.get('names')}, this method is {names}; "
                "build the same --reg before loading"
            )
        for method, sub_state in zip(self.methods, state["methods"], strict=True):
            method.load_state_dict(sub_state)

    def __getitem__(self, name: str) -> PlasticityMethod:
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(f"no method {name!r} in {self.name!r}")

    def __repr__(self) -> str:
        return f"Compose({self.methods!r})"


class SeededGenerator:
    """A ``torch.Generator`` on the model's device whose state travels in state_dict.

    Args:
        device: where random tensors are drawn.
        seed: the generator's seed (methods take it as their ``seed`` argument).
    """

    def __init__(self, device: torch.device, seed: int):
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def state(self) -> torch.Tensor:
        """The generator state (a CPU byte tensor)."""
        return self.generator.get_state()

    def load(self, state: torch.Tensor) -> None:
        """Restore a state from :meth:`state`."""
        self.generator.set_state(state.cpu())


def add_to_grad(
    param: torch.Tensor, grad: torch.Tensor, alpha: float = 1.0, copy: bool = False
) -> None:
    """Add ``alpha * grad`` to ``param.grad``, or set it where there is none: how a
    method's own gradient term joins the loss's before the optimizer step.

    ``copy``: ``grad`` is a view of a buffer the method reuses, which the parameter must
    not take as its ``.grad`` (with ``alpha`` other than 1 a new tensor is made anyway).
    """
    if param.grad is not None:
        param.grad.add_(grad, alpha=alpha)
    elif alpha != 1:
        param.grad = grad.mul(alpha)
    else:
        param.grad = grad.clone() if copy else grad


def reset_optimizer_slices(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    index: torch.Tensor,
    dim: int,
) -> None:
    """Zero the optimizer state of ``param`` at ``index`` along ``dim``.

    Every state tensor with the parameter's shape is reset there: SGD's
    ``momentum_buffer``, Adam's ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``, and
    a per-element ``step`` where an optimizer keeps one (LoP's AdamGnT). torch's Adam
    keeps one scalar ``step`` per tensor, which is left as it is: a fresh unit's
    moments restart from zero under the tensor's bias correction (see
    docs/methods.md).
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.index_fill_(dim, index, 0)
