"""``make_method``: build a method from its ``--reg`` name, a preset and overrides."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from clenv.methods.base import Compose, PlasticityMethod
from clenv.methods.continual_backprop import ContinualBackprop
from clenv.methods.effective_rank import EffectiveRankAscent
from clenv.methods.l2 import L2
from clenv.methods.presets import preset_arguments
from clenv.methods.redo import ReDo
from clenv.methods.resets import FullReset, HeadReset
from clenv.methods.shrink_perturb import ShrinkPerturb

METHODS: dict[str, type[PlasticityMethod]] = {
    cls.name: cls
    for cls in (
        FullReset,
        HeadReset,
        L2,
        ShrinkPerturb,
        ContinualBackprop,
        ReDo,
        EffectiveRankAscent,
    )
}
# Arguments an agent can pass whatever --reg is: components that take them get them,
# the others ignore them.
SHARED_ARGUMENTS = frozenset({"seed", "forward_fn", "hidden_layers"})
# Names that stand for a combination of methods.
ALIASES: dict[str, tuple[str, ...]] = {"bp": (), "l2er": ("l2", "er")}


def method_names() -> list[str]:
    """Every single name :func:`make_method` accepts (combine them with ``+``)."""
    return sorted(set(METHODS) | set(ALIASES))


def split_name(name: str) -> list[str]:
    """The components of a ``--reg`` name, in composition order.

    ``"cbp+l2"`` -> ``["l2", "cbp"]``; ``"l2er"`` -> ``["l2", "er"]``; ``"bp"`` -> ``[]``.

    Raises:
        ValueError: for an unknown or repeated component.
    """
    components: list[str] = []
    for part in name.lower().split("+"):
        part = part.strip()
        if part in ALIASES:
            components.extend(ALIASES[part])
        elif part in METHODS:
            components.append(part)
        else:
            raise ValueError(
                f"unknown method {part!r} in {name!r}; choose from {method_names()} "
                "or combine them with '+', e.g. 'cbp+l2'"
            )
    if len(set(components)) != len(components):
        raise ValueError(f"{name!r} names a method twice")
    return sorted(components, key=lambda c: METHODS[c].order)


def _accepts(cls: type, key: str) -> bool:
    return key in inspect.signature(cls.__init__).parameters


def make_method(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> PlasticityMethod:
    """Build the method ``name`` (a ``--reg`` value) for ``model`` and ``optimizer``.

    Args:
        name: ``bp``, ``l2``, ``er``, ``l2er``, ``cbp``, ``snp``, ``redo``,
            ``head_reset``, ``reset`` or a ``+`` combination such as ``cbp+l2``.
        model: the network (methods follow its device: build them after ``.to()``).
        optimizer: the optimizer whose state CBP, ReDo and resets keep consistent.
        preset: per-benchmark defaults (``pmnist``, ``imagenet``, ``cifar``, ``ant``, and
            ``*_lop``); ``None`` uses each method's own defaults.
        **overrides: constructor arguments. A plain key (``weight_decay=1e-4``) goes to
            every component that takes it; ``<method>__<key>`` (``cbp__replacement_rate``)
            to one. ``seed``, ``forward_fn`` and ``hidden_layers`` may be passed
            for any name (ignored by components that do not take them), so an agent
            can build every ``--reg`` with one call.

    Returns:
        The single method, or a :class:`Compose` (``bp`` is an empty one) whose hooks
        run the components in composition order (see :func:`split_name`).

    Raises:
        ValueError: for an unknown name or preset, or an override no component takes.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> make_method("l2er", model, opt, preset="pmnist").name
        'l2+er'
    """
    components = split_name(name)
    used: set[str] = set()
    methods = []
    for component in components:
        cls = METHODS[component]
        arguments = preset_arguments(preset, component, components)
        for key, value in overrides.items():
            target, _, sub_key = key.rpartition("__")
            if target == component or (not target and _accepts(cls, sub_key)):
                if not _accepts(cls, sub_key):
                    raise ValueError(
                        f"{component} takes no argument {sub_key!r}; its arguments: "
                        f"{list(inspect.signature(cls.__init__).parameters)[3:]}"
                    )
                arguments[sub_key] = value
                used.add(key)
        methods.append(cls(model, optimizer, **arguments))
    unused = set(overrides) - used - SHARED_ARGUMENTS
    if unused:
        raise ValueError(
            f"no component of {name!r} ({components or ['bp']}) takes "
            f"{sorted(unused)}; see help(clenv.methods.<Method>) for the arguments"
        )
    return methods[0] if len(methods) == 1 else Compose(methods)
