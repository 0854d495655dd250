"""Atomic checkpoints and random-number-generator state capture.

Checkpoints are ``<dir>/ckpt_<global step, 12 digits>.pt`` files written by
:func:`save_checkpoint`: to a temporary file in the same directory, fsynced, then
``os.replace``-d into place, so a run killed at any moment leaves either the old or the
new checkpoint, never half a file. Only the last ``keep_last`` are kept.
:func:`load_latest_checkpoint` returns the newest one that loads (an unreadable newest
file is skipped with a warning rather than ending the resume).

:func:`capture_rng_state` / :func:`restore_rng_state` cover Python's ``random``, NumPy's
legacy global generator, torch's CPU generator and every CUDA device's generator, which
is what a training loop seeded in CleanRL's way draws from.

Example:
    >>> import tempfile, torch
    >>> directory = tempfile.mkdtemp()
    >>> _ = save_checkpoint(directory, {"w": torch.ones(2)}, step=10)
    >>> step, state = load_latest_checkpoint(directory)
    >>> step, state["w"].tolist()
    (10, [1.0, 1.0])
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """Where the checkpoint of global ``step`` lives."""
    return Path(directory) / f"ckpt_{int(step):012d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    directory: str | Path, state: dict[str, Any], step: int, keep_last: int = 3
) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the last few.

    Args:
        directory: the checkpoint directory (created if missing).
        state: anything ``torch.save`` can pickle (state dicts, RNG states, ...). The
            global step is stored with it under ``"global_step"``.
        step: the global step this state belongs to; names the file.
        keep_last: how many checkpoints to keep (older ones are deleted after the new
            one is in place); must be >= 1.

    Returns:
        The checkpoint's path.
    """
    if keep_last < 1:
        raise ValueError(
            f"keep_last must be >= 1 (checkpoints to keep), got {keep_last}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(directory, step)
    fd, tmp_name = tempfile.mkstemp(prefix=".ckpt_", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({**state, "global_step": int(step)}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    for _, old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return target


def load_latest_checkpoint(
    directory: str | Path, map_location: str | torch.device | None = "cpu"
) -> tuple[int, dict[str, Any]] | None:
    """The newest readable checkpoint as ``(step, state)``, or None if there is none.

    Checkpoints hold RNG states and optimizer state (not only tensors), so they are
    loaded with ``weights_only=False``: load only checkpoints you wrote.
    """
    for step, path in reversed(list_checkpoints(directory)):
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as error:  # a truncated file from a full disk, say
            warnings.warn(
                f"skipping unreadable checkpoint {path}: {error}", stacklevel=2
            )
            continue
        return step, state
    return None


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator a training loop draws from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned.

    CUDA states are restored when CUDA is available and the checkpoint has them (a run
    moved from a GPU machine to a CPU one keeps its CPU generators).
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            warnings.warn(
                f"checkpoint has {len(cuda_states)} CUDA generator states but "
                f"{torch.cuda.device_count()} devices are visible; restoring the "
                "common ones",
                stacklevel=2,
            )
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
