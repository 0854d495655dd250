"""clenv.settings: the one home of the papers' settings, and docs/protocols.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clenv.settings import BENCHMARKS, PAPERS, render_markdown, rows

ROOT = Path(__file__).resolve().parents[1]


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
    }


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_every_row_names_a_source_and_an_existing_test(benchmark):
    for row in rows(benchmark):
        assert row.lop is not None or row.sc is not None, row.name
        for paper in PAPERS:
            value = row.value(paper)
            if value is not None:
                # path:line, with a line number that is a number
                for source in value.source.split("; "):
                    path, _, line = source.rpartition(":")
                    assert path and line.split("-")[0].isdigit(), (row.name, source)
        file, _, function = row.test.partition("::")
        assert (ROOT / file).exists(), (row.name, row.test)
        assert function in _test_functions(ROOT / file), (row.name, row.test)


def test_docs_protocols_page_is_rendered_from_the_settings():
    page = (ROOT / "docs" / "protocols.md").read_text()
    assert page == render_markdown(), (
        "docs/protocols.md is out of date: run "
        "`python -m clenv.settings > docs/protocols.md`"
    )
