"""Per-unit statistics and unit reinitialisation, shared by CBP and ReDo.

A unit of a hidden layer is an output feature of a ``Linear`` or an output channel of
a ``Conv``; its *incoming* weights are the layer's weight rows (and bias entry), its
*outgoing* weights the columns of the next layer that read it (one column, or the H*W
columns of a channel flattened into a ``Linear``).

An activation with two features per unit (:class:`clenv.models.CReLU`,
:class:`clenv.models.FourierFeatures`: unit ``i`` owns features ``2i`` and ``2i + 1``)
hands CBP and ReDo ``(samples, 2 * units, ...)`` features; :func:`unit_features` views
them as ``(samples, units, 2, ...)``, so a unit's statistics pool over both of its
features (as a channel's pool over its positions), and its outgoing weights are the
next layer's columns (or input channels) ``2i`` and ``2i + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod, SeededGenerator, reset_optimizer_slices
from clenv.methods.layers import (
    FeatureRecorder,
    HiddenLayer,
    HiddenLayerSpec,
    activation_gain,
    find_hidden_layers,
    uniform_bound,
)
from clenv.metrics.units import group_by_unit
from clenv.models.layers import CReLU, FourierFeatures


class UnitMethod(PlasticityMethod):
    """Base of the methods that score and reinitialise hidden units (CBP, ReDo).

    Finds the hidden layers, records each step's training-forward features with
    forward hooks (forwards under ``torch.no_grad()`` are not recorded) and hands them
    to :meth:`update`; a fast path without module forwards calls :meth:`update`
    itself. Fresh incoming weights are U(-b, b), b = gain * sqrt(3 / fan_in), gain
    from each layer's activation unless ``init_gain`` is given. With
    ``score_after_pool`` a hidden layer followed by a pooling layer is scored on the
    pooling layer's output.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        init_gain: float | None,
        hidden_layers: HiddenLayerSpec,
        seed: int,
        score_after_pool: bool = False,
    ):
        self.optimizer = optimizer
        self.init_gain = init_gain
        self.hidden = find_hidden_layers(model, hidden_layers)
        self.bounds = [
            uniform_bound(
                h.layer,
                activation_gain(h.activation) if init_gain is None else init_gain,
            )
            for h in self.hidden
        ]
        self.rng = SeededGenerator(self.hidden[0].layer.weight.device, seed)
        self.recorder = FeatureRecorder(
            [
                h.pool if score_after_pool and h.pool is not None else h.activation
                for h in self.hidden
            ]
        )

    def new_unit_buffers(self) -> list[torch.Tensor]:
        """One zero vector per hidden layer, on its device and dtype."""
        return [h.layer.weight.new_zeros(h.num_units) for h in self.hidden]

    def after_step(self, inputs: Any = None) -> None:
        if not self.recorder.complete():
            raise ValueError(
                f"{self.name} saw no training forward since the last step: run the "
                "model's forward with grad enabled before optimizer.step(), or call "
                "method.update(features) with each hidden layer's features"
            )
        features = [
            unit_features(hidden, h)
            for hidden, h in zip(self.hidden, self.recorder.features, strict=True)
        ]
        self.recorder.clear()
        self.update(features)

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """One step from each hidden layer's (samples, units, ...) features."""
        raise NotImplementedError

    def remove(self) -> None:
        """Remove the feature-recording hooks from the model."""
        self.recorder.remove()


def unit_features(hidden: HiddenLayer, features: torch.Tensor) -> torch.Tensor:
    """A hidden layer's ``(samples, k * units, ...)`` features as
    ``(samples, units, k, ...)`` when its activation gives ``k > 1`` features per
    unit (CReLU, Fourier features: features ``k*i .. k*i + k - 1`` are unit ``i``'s,
    :func:`clenv.metrics.units.group_by_unit`); unchanged when ``k = 1`` (then
    ``features.shape[1]`` is the number of units).
    """
    units = hidden.num_units
    if features.dim() < 2 or features.shape[1] == units:
        return features
    if features.shape[1] % units:
        raise ValueError(
            f"hidden layer {hidden.name!r}: its activation gives "
            f"{features.shape[1]} features for {units} units, not a whole number "
            "per unit; pass hidden_layers= naming the activation that follows the "
            "layer directly"
        )
    return group_by_unit(features, features.shape[1] // units)


def features_per_unit(hidden: HiddenLayer) -> int:
    """2 for an activation with two features per unit (:class:`clenv.models.CReLU`,
    :class:`clenv.models.FourierFeatures`), else 1."""
    return 2 if isinstance(hidden.activation, CReLU | FourierFeatures) else 1


def per_feature_mean(features: torch.Tensor, per_unit: int) -> torch.Tensor:
    """Mean of each unit's features over samples (and positions): ``(units,)`` for
    ``per_unit = 1``, ``(units, per_unit)`` for grouped ``(samples, units, k, ...)``
    features."""
    if per_unit == 1:
        return per_unit_mean(features)
    return features.mean(dim=[0, *range(3, features.dim())])


def per_unit_mean(features: torch.Tensor) -> torch.Tensor:
    """Mean of (samples, units, ...) features over every dim but the units: (units,)."""
    dims = [0, *range(2, features.dim())]
    return features.mean(dim=dims)


def outgoing_weights(hidden: HiddenLayer) -> torch.Tensor:
    """The next layer's weight as (outputs, units, inputs per unit), a view."""
    weight = hidden.next_layer.weight
    return weight.reshape(weight.shape[0], hidden.num_units, -1)


def outgoing_magnitude(hidden: HiddenLayer) -> torch.Tensor:
    """Mean |outgoing weight| of each unit (LoP's ``output_weight_mag``): (units,)."""
    weight = outgoing_weights(hidden)
    count = weight.shape[0] * weight.shape[2]
    # This runs every CBP step: abs().sum over a 2-D view is ~5x faster on CPU than
    # torch.linalg.vector_norm(ord=1) or a reduction over two dims.
    if weight.shape[2] == 1:
        return weight[:, :, 0].abs().sum(dim=0) / count
    return weight.abs().sum(dim=(0, 2)) / count


def incoming_magnitude(hidden: HiddenLayer) -> torch.Tensor:
    """Mean |incoming weight| of each unit (LoP's ``input_weight_mag``): (units,)."""
    weight = hidden.layer.weight.reshape(hidden.num_units, -1)
    return weight.abs().sum(dim=1) / weight.shape[1]


@torch.no_grad()
def reinitialize_units(
    hidden: HiddenLayer,
    units: torch.Tensor,
    bound: float,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None,
    mean_activation: torch.Tensor | None = None,
    outgoing_bound: float | None = None,
) -> None:
    """Give ``units`` fresh incoming weights and zero outgoing weights.

    Incoming weights ~ U(-bound, bound), bias 0, a normalisation layer back to its
    initial affine parameters and running statistics; outgoing weights 0. When
    ``mean_activation`` (one value per replaced unit) is given, the next layer's bias
    absorbs ``W_out[:, unit] * mean`` first (CBP), so the network's output is unchanged
    wherever the unit's activation equals its mean. The optimizer state of every slice
    touched is zeroed (see :func:`clenv.methods.base.reset_optimizer_slices`).

    Args:
        hidden: the hidden layer.
        units: indices of the units to reinitialise (int64, on the model's device).
        bound: the uniform bound, e.g. ``gain * sqrt(3 / fan_in)``.
        generator: random generator for the new weights.
        optimizer: whose state to reset; ``None`` for none.
        mean_activation: per replaced unit, the mean activation to absorb.
        outgoing_bound: draw the outgoing weights from U(-outgoing_bound, +...)
            instead of zeroing them (SC's code).
    """
    if units.numel() == 0:
        return
    layer, next_layer = hidden.layer, hidden.next_layer
    out_view = outgoing_weights(hidden)
    if mean_activation is not None and next_layer.bias is not None:
        mean = mean_activation.to(out_view.dtype)
        if mean.dim() == 1:
            contribution = out_view[:, units, :].sum(dim=2) @ mean
        else:  # (units, k): the columns of each feature (k, times H*W positions)
            columns = out_view[:, units, :].reshape(
                out_view.shape[0], units.numel(), mean.shape[1], -1
            )
            contribution = torch.einsum("orkp,rk->o", columns, mean)
        next_layer.bias.add_(contribution)
    if outgoing_bound is None:
        out_view[:, units, :] = 0
    else:
        out_view[:, units, :] = torch.empty_like(out_view[:, units, :]).uniform_(
            -outgoing_bound, outgoing_bound, generator=generator
        )
    fresh = torch.empty(
        (units.numel(), *layer.weight.shape[1:]),
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    layer.weight[units] = fresh.uniform_(-bound, bound, generator=generator)
    if layer.bias is not None:
        layer.bias[units] = 0
    norm = hidden.norm
    if norm is not None:
        _reset_norm_units(norm, units)
    if optimizer is None:
        return
    reset_optimizer_slices(optimizer, layer.weight, units, dim=0)
    if layer.bias is not None:
        reset_optimizer_slices(optimizer, layer.bias, units, dim=0)
    columns = _outgoing_columns(hidden, units)
    reset_optimizer_slices(optimizer, next_layer.weight, columns, dim=1)
    if norm is not None:
        for param in (norm.weight, norm.bias):
            if param is not None:
                reset_optimizer_slices(optimizer, param, units, dim=0)


def _outgoing_columns(hidden: HiddenLayer, units: torch.Tensor) -> torch.Tensor:
    """Indices along dim 1 of the next layer's weight that ``units`` feed: for a
    ``Linear``, every column of a unit (its k features times the H*W positions of a
    flattened channel); for a ``Conv``, its k input channels."""
    fan = hidden.next_layer.weight.shape[1]
    if fan % hidden.num_units:
        raise ValueError(
            f"hidden layer {hidden.name!r}: the next layer reads {fan} inputs, not a "
            f"multiple of the layer's {hidden.num_units} units"
        )
    per_unit = fan // hidden.num_units
    if per_unit == 1:
        return units
    offsets = torch.arange(per_unit, device=units.device)
    return (units[:, None] * per_unit + offsets).reshape(-1)


def _reset_norm_units(norm: nn.Module, units: torch.Tensor) -> None:
    if isinstance(norm, nn.modules.batchnorm._BatchNorm | nn.GroupNorm):
        if norm.weight is not None:
            norm.weight[units] = 1.0
            norm.bias[units] = 0.0
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean[units] = 0.0
            norm.running_var[units] = 1.0
    elif isinstance(norm, nn.LayerNorm) and norm.weight is not None:
        norm.weight.reshape(-1)[units] = 1.0
        if norm.bias is not None:
            norm.bias.reshape(-1)[units] = 0.0
