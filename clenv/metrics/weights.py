"""Weight magnitude, per-parameter norms, gradient norms and weight change per layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def weight_metrics(model: nn.Module) -> dict[str, float]:
    """Magnitude of the parameters, overall and per parameter tensor.

    LoP (Dohare et al. 2024) tracks the "average weight magnitude" because growing
    weights accompany loss of plasticity; L2 and L2-ER bound it.

    Args:
        model: Any ``nn.Module``; all trainable parameters (weights and biases) count.

    Returns:
        ``"weight_magnitude"``: mean |theta| over all trainable parameters;
        ``"parameter_norm"``: L2 norm of all of them;
        ``"<param name>/l2_norm"`` and ``"<param name>/mean_abs"`` per tensor
        (e.g. ``"0.weight/l2_norm"``).

    Example:
        >>> weight_metrics(nn.Linear(2, 1, bias=False).requires_grad_(False))
        {}
    """
    metrics: dict[str, float] = {}
    total_abs = 0.0
    total_sq = 0.0
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            values = param.detach().double()
            abs_sum = float(values.abs().sum())
            sq_sum = float((values**2).sum())
            metrics[f"{name}/l2_norm"] = sq_sum**0.5
            metrics[f"{name}/mean_abs"] = abs_sum / max(values.numel(), 1)
            total_abs += abs_sum
            total_sq += sq_sum
            count += values.numel()
    if count:
        metrics["weight_magnitude"] = total_abs / count
        metrics["parameter_norm"] = total_sq**0.5
    return metrics


def parameter_layers(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parameters of ``model`` grouped by layer, in registration order.

    A *layer* is the module that owns a parameter directly (a ``Linear`` or
    ``Conv2d`` with its weight and bias, a ``LayerNorm``), named as in
    ``model.named_modules()``: ``"0"``, ``"fc1"``, ``"encoder.2"``, i.e. the
    parameter names of :func:`weight_metrics` without ``.weight``/``.bias``. A
    parameter registered on ``model`` itself (a PPO agent's ``actor_logstd``) is its
    own layer, named after the parameter.

    Returns:
        ``{layer: [(parameter name, parameter), ...]}``.
    """
    layers: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            layer = name.rsplit(".", 1)[0] if "." in name else name
            layers.setdefault(layer, []).append((name, param))
    return layers


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradients in ``.grad`` (the last backward pass), per layer and
    in total.

    Call it after ``loss.backward()`` and before the next ``optimizer.zero_grad()``;
    after ``optimizer.step()`` the gradients are still those of the step. A parameter
    without a gradient (``.grad is None``: unused by the loss, or zeroed with
    ``set_to_none``) counts as zero.

    Args:
        model: Any ``nn.Module``; layers as in :func:`parameter_layers`.

    Returns:
        ``"<layer>/grad_norm"`` per layer and ``"grad_norm"``, the norm of the whole
        gradient (the quantity gradient clipping bounds).

    Raises:
        ValueError: If no trainable parameter has a gradient.
    """
    layers = parameter_layers(model)
    if all(param.grad is None for params in layers.values() for _, param in params):
        raise ValueError(
            f"no parameter of {type(model).__name__} has a gradient (.grad is None); "
            "compute gradient norms after loss.backward() and before "
            "optimizer.zero_grad()"
        )

    def squared_gradient(name: str, param: nn.Parameter) -> float:
        if param.grad is None:
            return 0.0
        return float(param.grad.detach().double().pow(2).sum())

    return _norms_per_layer(layers, squared_gradient, "grad_norm")


def _norms_per_layer(
    layers: dict[str, list[tuple[str, nn.Parameter]]],
    squared_sum: Any,
    key: str,
) -> dict[str, float]:
    """``"<layer>/<key>"`` per layer of ``layers`` (:func:`parameter_layers`) and
    ``key`` over all of them: square roots of the sums of ``squared_sum(name,
    param)`` over the parameters."""
    metrics: dict[str, float] = {}
    total = 0.0
    for layer, params in layers.items():
        squares = 0.0
        for name, param in params:
            squares += squared_sum(name, param)
        metrics[f"{layer}/{key}"] = squares**0.5
        total += squares
    metrics[key] = total**0.5
    return metrics


class WeightChangeTracker:
    """Distance of the weights from their values at the start of the current task.

    ``||theta - theta_task_start||_2`` per layer and over each whole network (Lyle et
    al. 2023 and Dohare et al. 2024 relate how far weights travel within a task to
    plasticity). Call :meth:`on_task_start` when a task begins (and once before the
    first); :meth:`metrics` at any time. Save :meth:`state_dict` in a checkpoint and
    restore it with :meth:`load_state_dict` so a resumed run measures from the same
    snapshot.

    Args:
        nets: ``{name: module}`` as for :func:`~clenv.metrics.plasticity_report`
            (a net named ``""`` gives plain keys), or one module (plain keys).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1, bias=False)).double()
        >>> tracker = WeightChangeTracker(net)
        >>> tracker.on_task_start()
        >>> with torch.no_grad():
        ...     _ = net[0].weight.add_(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
        >>> tracker.metrics()
        {'0/weight_change': 5.0, 'weight_change': 5.0}
    """

    def __init__(self, nets: Mapping[str, nn.Module] | nn.Module):
        self.nets = {"": nets} if isinstance(nets, nn.Module) else dict(nets)
        if not self.nets:
            raise ValueError("WeightChangeTracker needs at least one network")
        self.snapshot: dict[str, torch.Tensor] | None = None

    def _parameters(self) -> dict[str, nn.Parameter]:
        return {
            f"{net_name}/{name}" if net_name else name: param
            for net_name, net in self.nets.items()
            for name, param in net.named_parameters()
            if param.requires_grad
        }

    def on_task_start(self) -> None:
        """Store the current weights as the task's start (a copy on their device)."""
        with torch.no_grad():
            self.snapshot = {
                key: param.detach().clone() for key, param in self._parameters().items()
            }

    def metrics(self) -> dict[str, float]:
        """``"<net>/<layer>/weight_change"`` per layer and ``"<net>/weight_change"``
        per net (plain ``"<layer>/weight_change"`` and ``"weight_change"`` for a net
        named ``""``); layers as in :func:`parameter_layers`."""
        if self.snapshot is None:
            raise ValueError(
                "WeightChangeTracker has no task-start weights; call "
                "tracker.on_task_start() when the task begins (or load_state_dict)"
            )
        snapshot = self.snapshot
        metrics: dict[str, float] = {}
        with torch.no_grad():
            for net_name, net in self.nets.items():
                prefix = f"{net_name}/" if net_name else ""

                def squared_change(name, param, prefix=prefix) -> float:
                    start = snapshot[prefix + name]
                    return float((param.double() - start.double()).pow(2).sum())

                norms = _norms_per_layer(
                    parameter_layers(net), squared_change, "weight_change"
                )
                metrics.update((prefix + key, value) for key, value in norms.items())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The task-start weights (``None`` before :meth:`on_task_start`)."""
        snapshot = self.snapshot
        return {"snapshot": None if snapshot is None else dict(snapshot)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the snapshot must match the nets' parameters."""
        snapshot = state["snapshot"]
        if snapshot is None:
            self.snapshot = None
            return
        params = self._parameters()
        shapes = {key: tuple(p.shape) for key, p in params.items()}
        saved = {key: tuple(t.shape) for key, t in snapshot.items()}
        if shapes != saved:
            raise ValueError(
                "WeightChangeTracker state does not match the networks' parameters "
                f"(saved {sorted(saved)} vs now {sorted(shapes)}, or shapes differ); "
                "load the state saved with the same nets"
            )
        self.snapshot = {
            key: tensor.detach().to(params[key].device, params[key].dtype).clone()
            for key, tensor in snapshot.items()
        }
