"""Per-benchmark hyperparameters of each method, built from :mod:`clenv.settings`.

A preset maps each method name to its constructor arguments. Names: ``pmnist``,
``imagenet``, ``cifar``, ``ant`` follow SC (Prakash et al. 2026), clenv's default;
``pmnist_lop``, ``imagenet_lop``, ``cifar_lop``, ``ant_lop`` follow LoP (Dohare et al.
2024). Every value is a ``kind="method"`` row of the benchmark's settings module (with
its source in the paper's code; docs/protocols.md lists them); this module holds none.

A combination can have its own values: L2-ER's eta_ER is larger than ER-only's, and
SC's CBP+L2 on Ant uses a much smaller replacement rate than CBP. A method one paper
never ran (ER in LoP, ReDo in SC) takes the other paper's values, so every ``--reg``
runs under either protocol; values neither paper gives are the method's own defaults
(docs/methods.md lists them).
"""

from __future__ import annotations

from typing import Any

from clenv.settings import Paper, method_preset

Preset = dict[str, dict[str, Any]]

# Preset name -> the benchmark module of clenv.settings.
BENCHMARKS = {
    "pmnist": "permuted_mnist",
    "imagenet": "continual_imagenet",
    "cifar": "incremental_cifar",
    "ant": "slippery_ant",
}


def _components(preset: dict[str, Preset]) -> set[str]:
    named = set(preset["methods"])
    for changes in preset["combinations"].values():
        named |= set(changes)
    return named


def build_preset(benchmark: str, paper: Paper) -> dict[str, Preset]:
    """``paper``'s method rows of ``benchmark``; a component ``paper`` has no row for
    takes the other paper's rows (methods and combinations)."""
    own = method_preset(benchmark, paper)
    other = method_preset(benchmark, "sc" if paper == "lop" else "lop")
    missing = _components(other) - _components(own)
    preset: dict[str, Preset] = {
        "methods": {
            **{c: dict(a) for c, a in other["methods"].items() if c in missing},
            **own["methods"],
        },
        "combinations": {},
    }
    for source in (other, own):
        for key, changes in source["combinations"].items():
            kept = {
                c: dict(a) for c, a in changes.items() if source is own or c in missing
            }
            if kept:
                preset["combinations"].setdefault(key, {}).update(kept)
    return preset


PRESETS: dict[str, dict[str, Preset]] = {
    **{name: build_preset(bench, "sc") for name, bench in BENCHMARKS.items()},
    **{f"{name}_lop": build_preset(bench, "lop") for name, bench in BENCHMARKS.items()},
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
