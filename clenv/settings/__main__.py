"""Render docs/protocols.md from the settings tables: ``python -m clenv.settings``.

``python -m clenv.settings > docs/protocols.md`` rewrites the page; the test suite
checks that the committed page equals this output.
"""

from __future__ import annotations

from clenv.settings import render_markdown

if __name__ == "__main__":
    print(render_markdown(), end="")
