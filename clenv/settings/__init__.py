"""Every per-paper setting of every benchmark, with the official code it comes from.

One home for the protocols: the agents, :mod:`clenv.methods.presets`, and
docs/protocols.md (rendered from these tables by ``python -m clenv.settings``) all read
these rows. A row names one setting, its value in each paper's official code with the
file and line it was read from, the clenv option that sets it, and the test that pins
it.

- LoP: Dohare et al., *Loss of plasticity in deep continual learning* (Nature 2024),
  code at ``github.com/shibhansh/loss-of-plasticity``.
- SC: Prakash, He, Guo et al., *Spectral Collapse Drives Loss of Plasticity in Deep
  Continual Learning* (ICML 2026), code at ``github.com/KevinGuo27/lop-jax``.

Sources are written ``path:line`` relative to each repository's root at the commit in
:data:`COMMITS`.

Example:
    >>> from clenv.settings import protocol_defaults
    >>> protocol_defaults("slippery_ant", "lop")["learning_rate"]
    0.0001
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Paper = Literal["lop", "sc"]
PAPERS: tuple[Paper, ...] = ("lop", "sc")
# The benchmarks, each a module of this package holding a ROWS list.
BENCHMARKS = (
    "slippery_ant",
    "permuted_mnist",
    "continual_imagenet",
    "incremental_cifar",
)
REPOSITORIES = {
    "lop": "shibhansh/loss-of-plasticity",
    "sc": "KevinGuo27/lop-jax",
}
# The commits the sources were read at.
COMMITS: dict[str, str] = {
    "lop": "63c35f3c758bbb713dd42c72d43dc192fde0d109",
    "sc": "52ae3eb0702a9e6923f252c1f7cb29340eb5b3d5",
}


@dataclass(frozen=True)
class Value:
    """One paper's value of a setting and where its official code sets it.

    Args:
        value: the value clenv uses for this paper.
        source: ``path:line`` in the paper's repository (several joined by ``; ``).
        note: why the value is read that way, or how it differs from the paper's text.
    """

    value: Any
    source: str
    note: str = ""


@dataclass(frozen=True)
class Row:
    """One setting of one benchmark.

    Args:
        name: what it sets. ``kind="agent"``: the agent's ``Args`` field;
            ``"env"``: a ``gym.make`` keyword; ``"model"``: a model constructor keyword;
            ``"method"``: ``"<component>.<argument>"`` of :func:`clenv.methods.make_method`;
            ``"optimizer"``: a keyword of :func:`clenv.optim.make_optimizer` (``when``
            names the optimizer, e.g. ``"muon"``); ``"loss"``: the
            :func:`clenv.losses.make_loss` name.
        what: a short description for the docs table.
        lop, sc: each paper's :class:`Value`, or ``None`` where that paper has no such
            setting (the option's own default then applies).
        option: the clenv option that sets it, e.g. ``"--learning-rate"``.
        test: the test that pins it, ``"tests/<file>.py::<function>"``.
        kind: see ``name``.
        when: the method components that must all be in ``--reg`` for this value to
            apply (``"l2+er"``: inside L2-ER only; ``"l2"``: any method with L2); empty
            for always. Agent rows may use it too (a step size tuned per method).
    """

    name: str
    what: str
    lop: Value | None
    sc: Value | None
    option: str
    test: str
    kind: Literal["agent", "env", "model", "method", "optimizer", "loss"] = "agent"
    when: str = ""

    def value(self, paper: Paper) -> Value | None:
        return getattr(self, paper)


# The test that resolves every method row through make_method and its preset.
METHOD_ROW_TEST = "tests/test_methods.py::test_every_method_row_resolves_in_its_preset"


def method_row(
    name: str,
    what: str,
    lop: Value | None,
    sc: Value | None,
    *,
    when: str = "",
    test: str = METHOD_ROW_TEST,
) -> Row:
    """A ``kind="method"`` row: ``name`` is ``"<component>.<argument>"`` and its
    option is ``--method-kwargs <component>__<argument>=...``."""
    component, argument = name.split(".", 1)
    return Row(
        name=name,
        what=what,
        lop=lop,
        sc=sc,
        option=f"--method-kwargs {component}__{argument}=...",
        test=test,
        kind="method",
        when=when,
    )


def rows(benchmark: str) -> list[Row]:
    """The rows of ``benchmark`` (one of :data:`BENCHMARKS`)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; choose one of {list(BENCHMARKS)}"
        )
    module = importlib.import_module(f"clenv.settings.{benchmark}")
    return [*module.ROWS, *module.METHOD_ROWS]


def protocol_defaults(
    benchmark: str,
    paper: Paper,
    kind: str = "agent",
    components: Iterable[str] = (),
) -> dict[str, Any]:
    """``{name: value}`` of every ``kind`` row that ``paper`` sets (not methods).

    A row with ``when`` (e.g. LoP's ImageNet step size with L2) applies only when every
    component it names is in ``components`` (:func:`clenv.methods.split_name` of
    ``--reg``), and then overrides the row without ``when``.
    """
    if paper not in PAPERS:
        raise ValueError(f"unknown protocol {paper!r}; choose one of {list(PAPERS)}")
    present = set(components)
    selected = [
        row
        for row in rows(benchmark)
        if row.kind == kind
        and row.value(paper) is not None
        and set(filter(None, row.when.split("+"))) <= present
    ]
    # Rows without `when` first, so a matching `when` row wins.
    selected.sort(key=lambda row: bool(row.when))
    return {row.name: row.value(paper).value for row in selected}


def method_preset(benchmark: str, paper: Paper) -> dict[str, dict[str, dict[str, Any]]]:
    """The method rows as a preset: ``{"methods": {component: {arg: value}},
    "combinations": {"l2+er": {component: {arg: value}}}}`` (see
    :mod:`clenv.methods.presets`)."""
    preset: dict[str, dict[str, dict[str, Any]]] = {"methods": {}, "combinations": {}}
    for row in rows(benchmark):
        value = row.value(paper)
        if row.kind != "method" or value is None:
            continue
        component, argument = row.name.split(".", 1)
        if row.when:
            target = preset["combinations"].setdefault(row.when, {})
        else:
            target = preset["methods"]
        target.setdefault(component, {})[argument] = value.value
    return preset


def _cell(value: Value | None, repository: str) -> str:
    if value is None:
        return "—"
    text = f"`{value.value!r}`<br>{repository} `{value.source}`"
    return text + (f"<br>{value.note}" if value.note else "")


def render_markdown() -> str:
    """docs/protocols.md: the header, then one table per benchmark."""
    module = importlib.import_module("clenv.settings._page")
    parts = [module.HEADER.strip() + "\n"]
    for benchmark in BENCHMARKS:
        bench = importlib.import_module(f"clenv.settings.{benchmark}")
        parts.append(f"\n## {bench.TITLE}\n\n{bench.__doc__.strip()}\n")
        parts.append(
            f"\nDefault protocol of `{bench.AGENT}`: `--protocol "
            f"{bench.DEFAULT_PROTOCOL}`.\n\n"
            "| setting | LoP | SC | clenv option | test |\n|---|---|---|---|---|\n"
        )
        for row in rows(benchmark):
            name = f"`{row.name}`" + (f" (in `{row.when}`)" if row.when else "")
            parts.append(
                f"| {name}: {row.what} | {_cell(row.lop, 'LoP')} | "
                f"{_cell(row.sc, 'SC')} | `{row.option}` | `{row.test}` |\n"
            )
    return "".join(parts)
