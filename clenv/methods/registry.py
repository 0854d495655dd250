"""``make_method``: build a method from its ``--reg`` name, a preset and overrides."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from clenv.methods.base import Compose, PlasticityMethod
from clenv.methods.cchain import CChain
from clenv.methods.continual_backprop import ContinualBackprop
from clenv.methods.effective_rank import EffectiveRankAscent
from clenv.methods.inject import PlasticityInjection
from clenv.methods.l2 import L2
from clenv.methods.l2init import L2Init
from clenv.methods.layers import HiddenLayerSpec
from clenv.methods.nap import NormalizeAndProject
from clenv.methods.parseval import Parseval
from clenv.methods.presets import preset_arguments
from clenv.methods.redo import ReDo
from clenv.methods.resets import FullReset, HeadReset, LayerReset
from clenv.methods.shrink_perturb import ShrinkPerturb
from clenv.methods.spectral import SpectralRegularization
from clenv.methods.upgd import UPGD
from clenv.metrics.activations import ForwardFn

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
        LayerReset,
        L2Init,
        SpectralRegularization,
        Parseval,
        UPGD,
        NormalizeAndProject,
        PlasticityInjection,
        CChain,
    )
}
# Names that stand for a combination of methods.
ALIASES: dict[str, tuple[str, ...]] = {"bp": (), "l2er": ("l2", "er")}
# Names that build no method but select the preset values tuned with them: "layernorm"
# (the network's --norm layer; SC's laynorm_l2), e.g. "l2+layernorm".
SETTING_TAGS: dict[str, str] = {"layernorm": "layer"}
ALIASES.update({tag: () for tag in SETTING_TAGS})


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
                f"unknown method {part!r} in {name!r} (an agent's --reg); choose "
                f"from {method_names()} or combine them with '+', e.g. 'cbp+l2'"
            )
    if len(set(components)) != len(components):
        raise ValueError(f"{name!r} (an agent's --reg) names a method twice")
    return sorted(components, key=lambda c: METHODS[c].order)


def _accepts(cls: type, key: str) -> bool:
    return key in inspect.signature(cls.__init__).parameters


def make_method(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    preset: str | None = None,
    forward_fn: ForwardFn | None = None,
    hidden_layers: HiddenLayerSpec = None,
    seed: int = 0,
    model_norm: str | None = None,
    **overrides: Any,
) -> PlasticityMethod:
    """Build the method ``name`` (a ``--reg`` value) for ``model`` and ``optimizer``.

    Args:
        name: ``bp``, ``l2``, ``er``, ``l2er``, ``cbp``, ``snp``, ``redo``,
            ``head_reset``, ``reset``, ``layer_reset``, ``l2init``, ``spectral``,
            ``parseval``, ``upgd``, ``nap`` (:func:`method_names` lists all) or a
            ``+`` combination such as ``cbp+l2``.
        model: the network (methods follow its device: build them after ``.to()``).
        optimizer: the optimizer whose state CBP, ReDo and resets keep consistent.
        preset: per-benchmark defaults (``pmnist``, ``imagenet``, ``cifar``, ``ant``, and
            ``*_lop``); ``None`` uses each method's own defaults.
        forward_fn: ``forward_fn(model, inputs)`` for ER's forward (a PPO agent's
            actor and critic); ignored by the components that make no forward.
        hidden_layers: explicit hidden-layer spec (see
            :func:`clenv.methods.find_hidden_layers`) for every component that finds
            hidden layers; ignored by the others.
        seed: seed of the random draws of CBP, S&P, ReDo and the resets.
        model_norm: the network's ``norm`` (``--norm``): ``"layer"`` selects the
            preset values tuned with LayerNorm (rows ``when="...+layernorm"``, SC's
            ``laynorm_l2``), as ``+layernorm`` in ``name`` does.
        **overrides: constructor arguments. A plain key (``weight_decay=1e-4``) goes to
            every component that takes it; ``<method>__<key>`` (``cbp__replacement_rate``)
            to one. ``forward_fn``, ``hidden_layers`` and ``seed`` are passed for every
            name, so an agent builds every ``--reg`` with one call and never inspects
            a constructor.

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
    parts = {part.strip() for part in name.lower().split("+")}
    tags = [
        tag for tag, norm in SETTING_TAGS.items() if tag in parts or norm == model_norm
    ]
    shared = {"forward_fn": forward_fn, "hidden_layers": hidden_layers, "seed": seed}
    used: set[str] = set()
    methods = []
    for component in components:
        cls = METHODS[component]
        arguments = preset_arguments(preset, component, [*components, *tags])
        arguments.update(
            {
                key: value
                for key, value in shared.items()
                if value is not None and _accepts(cls, key)
            }
        )
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
    unused = set(overrides) - used
    if unused:
        raise ValueError(
            f"no component of {name!r} ({components or ['bp']}) takes "
            f"{sorted(unused)}; see help(clenv.methods.<Method>) for the arguments"
        )
    return methods[0] if len(methods) == 1 else Compose(methods)
