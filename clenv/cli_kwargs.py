"""Command-line helpers: ``key=value`` pairs (the agents' ``--env-kwargs``,
``--method-kwargs``) and the one-line error report every ``clenv`` command shares."""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Callable
from typing import Any

#: What a command reports as a one-line error (anything else is a bug: traceback).
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)


def run_command(
    prog: str,
    command: Callable[[], int],
    errors: tuple[type[Exception], ...] = USER_ERRORS,
) -> int:
    """Run ``command()``; an error in what was asked becomes one line and status 2.

    ``prog: error: <message>`` goes to stderr; ``CLENV_DEBUG=1`` re-raises it to show
    the traceback.
    """
    try:
        return command()
    except errors as error:
        if os.environ.get("CLENV_DEBUG"):
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2


def parse_kwargs(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["a=1", "b=step"]`` -> ``{"a": 1, "b": "step"}``.

    Values are read as Python literals (numbers, booleans, None, tuples, ...); anything
    else stays a string.

    Raises:
        ValueError: for an entry that is not ``key=value`` with an identifier key.
    """
    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(
                f"{flag} takes key=value pairs such as switch_every=50000, got {pair!r}"
            )
        try:
            parsed[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed[key] = text
    return parsed
