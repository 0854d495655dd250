"""Share loaded datasets between envs of one process.

The sub-envs of a vector env, or an env and its unpickled copy, load the same files;
they get the same read-only arrays instead of one copy each. An entry lives as long as
some env holds it (weak references).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable

import numpy as np


class SharedArrays:
    """Read-only arrays loaded once and shared (attribute ``arrays``, a tuple)."""

    __slots__ = ("arrays", "__weakref__")

    def __init__(self, arrays: tuple[np.ndarray, ...]) -> None:
        for array in arrays:
            array.flags.writeable = False
        self.arrays = arrays


_CACHE: weakref.WeakValueDictionary[Hashable, SharedArrays] = (
    weakref.WeakValueDictionary()
)


def shared_arrays(
    key: Hashable, load: Callable[[], tuple[np.ndarray, ...]]
) -> SharedArrays:
    """The arrays stored under ``key``, calling ``load()`` if no env holds them."""
    entry = _CACHE.get(key)
    if entry is None:
        entry = SharedArrays(tuple(np.ascontiguousarray(a) for a in load()))
        _CACHE[key] = entry
    return entry
