"""Per-benchmark hyperparameters of each method, from PROTOCOLS.md.

A preset maps each method name to its constructor arguments. Names: ``pmnist``,
``imagenet``, ``cifar``, ``ant`` follow SC (Prakash et al. 2026), clenv's default;
``pmnist_lop``, ``imagenet_lop``, ``cifar_lop``, ``ant_lop`` follow LoP (Dohare et al.
2024) where it differs. A combination can have its own values: L2-ER's eta_ER is larger
than ER-only's, and SC's CBP+L2 on Ant uses a much smaller replacement rate than CBP.

Values the protocols do not give (ReDo outside Ant, S&P on CIFAR and Ant) are the
method's own defaults; docs/methods.md lists them.
"""

from __future__ import annotations

import copy
from typing import Any

Preset = dict[str, dict[str, Any]]

# SC (clenv's defaults). "methods" holds each method alone ("er" is ER only);
# "combinations" (keyed by the components joined with "+", any order) changes them in
# every method that contains all those components: "l2+er" is L2-ER (also inside
# "l2er+head_reset").
_SC: dict[str, dict[str, Preset]] = {
    "pmnist": {
        "methods": {
            "l2": {"weight_decay": 1e-3},
            "er": {"ascent_lr": 1e-4, "interval": 100},
            "cbp": {"replacement_rate": 1e-6, "maturity_threshold": 100},
            "snp": {"weight_decay": 1e-4, "noise_std": 1e-5},
        },
        "combinations": {"l2+er": {"er": {"ascent_lr": 1e-2}}},
    },
    "imagenet": {
        "methods": {
            "l2": {"weight_decay": 1e-3},
            "er": {"ascent_lr": 1e-5, "interval": 12, "last_layers": 2},
            "cbp": {"replacement_rate": 1e-5, "maturity_threshold": 100},
            "snp": {"weight_decay": 1e-5, "noise_std": 1e-5},
        },
        "combinations": {"l2+er": {"er": {"ascent_lr": 1e-4}}},
    },
    "cifar": {
        "methods": {
            "l2": {"weight_decay": 1e-3},
            "er": {"ascent_lr": 1e-4, "interval": 5, "last_layers": 2},
            "cbp": {"replacement_rate": 1e-5, "maturity_threshold": 1000},
        },
        "combinations": {"l2+er": {"er": {"ascent_lr": 1e-3}}},
    },
    "ant": {
        "methods": {
            "l2": {"weight_decay": 1e-3},
            "er": {"ascent_lr": 1e-7, "schedule": "epoch"},
            "cbp": {"replacement_rate": 1e-4, "maturity_threshold": 10_000},
            "redo": {"threshold": 0.1, "interval": 100},
        },
        "combinations": {
            "l2+er": {"er": {"ascent_lr": 1e-6}},
            "cbp+l2": {"cbp": {"replacement_rate": 1e-7}},
        },
    },
}

# LoP, as differences from SC.
_LOP_CHANGES: dict[str, dict[str, Preset]] = {
    "pmnist": {"methods": {"l2": {"weight_decay": 1e-4}}},
    "imagenet": {
        "methods": {
            "cbp": {"replacement_rate": 3e-4},
            "head_reset": {"mode": "zero"},
        }
    },
    "cifar": {},
    "ant": {"combinations": {"cbp+l2": {}}},
}


def _merge(base: dict, changes: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


PRESETS: dict[str, dict[str, Preset]] = {
    **_SC,
    **{f"{name}_lop": _merge(_SC[name], _LOP_CHANGES[name]) for name in _SC},
}


def preset_arguments(
    preset: str | None, method: str, components: list[str]
) -> dict[str, Any]:
    """Constructor arguments of ``method`` inside ``components`` under ``preset``.

    Args:
        preset: a name in :data:`PRESETS`, or ``None`` for the methods' own defaults.
        method: one component, e.g. ``"er"``.
        components: every component of the method built, e.g. ``["l2", "er"]``.

    Raises:
        ValueError: for an unknown preset name.
    """
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    entry = PRESETS[preset]
    arguments = dict(entry["methods"].get(method, {}))
    for key, changes in entry.get("combinations", {}).items():
        if set(key.split("+")) <= set(components):
            arguments.update(changes.get(method, {}))
    return arguments
