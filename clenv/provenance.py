"""Where a run's numbers came from: the code, the libraries and the machine.

Every run records one :func:`provenance` entry in its ``args.json`` under
``"provenance"`` when it starts, and one more each time it is resumed (with the step it
resumed at), so two runs whose numbers differ can be traced to the commit, the torch
build or the machine that made them, and a run resumed under other code says so::

    json.loads(Path(run_dir, "args.json").read_text())["provenance"][-1]["git"]
    # {"commit": "a7b9d77...", "dirty": False}
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ARGS_KEY", "cpu_name", "git_state", "provenance"]

#: The key of the list of entries in ``args.json``.
ARGS_KEY = "provenance"

PACKAGE_DIR = Path(__file__).resolve().parent


def git_state(directory: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """``{"commit": <sha>, "dirty": <tracked files changed>}`` of the git checkout
    holding ``directory``, or None when it is not one (an installed wheel) or git is
    missing. Untracked files (run outputs) do not count as dirty."""

    def git(*command: str) -> str:
        return subprocess.run(
            ["git", "-C", str(directory), *command],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def cpu_name() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict[str, Any]:
    """This process's code, libraries and machine, for a run's ``args.json``."""
    from clenv import __version__

    cuda = torch.cuda.is_available()
    return {
        "argv": list(sys.argv),
        "clenv": __version__,
        "clenv_path": str(PACKAGE_DIR),
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else cpu_name(),
        "cpus": os.cpu_count(),
        "host": socket.gethostname(),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
