"""Argument checks shared by clenv's envs, methods, metrics and optimizers.

Each check raises a ``ValueError`` whose message names the argument, the values it
accepts and the value it got, so the caller can fix the call from the message alone:

>>> check_range("weight_decay", -1.0, 0)
Traceback (most recent call last):
...
ValueError: weight_decay must be >= 0, got -1.0
>>> check_flags(halve="yes")
Traceback (most recent call last):
...
ValueError: halve must be True or False, got 'yes'
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_flags", "check_range"]


def check_range(
    name: str,
    value: float,
    low: float,
    high: float | None = None,
    *,
    closed: bool = False,
) -> None:
    """Check ``low <= value`` and, when ``high`` is given, ``value < high`` (``value <=
    high`` with ``closed=True``).

    The bounds print as given (``low=0`` reads ``>= 0``, ``low=0.0`` reads
    ``>= 0.0``). NaN is refused (it is in no range: a NaN learning rate or strength
    would turn every weight into NaN at the first step); a value that cannot be
    compared with a number raises the comparison's ``TypeError``.

    Args:
        name: the argument as the message should name it, e.g. ``"weight_decay"`` or
            ``"Adam's lr"``.
        value: the value to check.
        low: the smallest value allowed.
        high: if given, the bound ``value`` must stay below (half-open ``[low, high)``).
        closed: ``high`` itself is allowed too (``[low, high]``).

    Raises:
        ValueError: ``"{name} must be >= {low}, got {value}"``, or ``"{name} must be
            in [{low}, {high}), got {value}"`` (``]`` when closed) when ``high`` is given.
    """
    below_high = high is None or value < high or (closed and value == high)
    if not (value >= low and below_high):
        bound = (
            f"in [{low}, {high}{']' if closed else ')'}"
            if high is not None
            else f">= {low}"
        )
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_flags(**flags: Any) -> None:
    """Check that each keyword is True or False (a Python or NumPy bool).

    ``check_flags(halve=halve, fuse=fuse)`` checks both, in order. A truthy value
    such as ``1`` or ``"yes"`` is refused, so a flag never means something its
    caller did not write.

    Raises:
        ValueError: ``"{name} must be True or False, got {value!r}"`` for the first
            keyword that is not a bool.
    """
    for name, value in flags.items():
        if not isinstance(value, bool | np.bool_):
            raise ValueError(f"{name} must be True or False, got {value!r}")
