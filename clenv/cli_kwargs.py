"""``key=value`` command-line pairs (the agents' ``--env-kwargs``, ``--method-kwargs``)."""

from __future__ import annotations

import ast
from typing import Any


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
