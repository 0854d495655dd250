"""Build and load the native batch-1 MLP kernel (``mlp_kernel.cpp``) through ctypes.

The kernel is plain C++ (no Python or torch headers), compiled once per machine with
the system compiler (``$CXX``, else ``g++``/``c++``/``clang++``) into a cache directory
(``$CLENV_CACHE_DIR/fastpath``, else ``~/.cache/clenv/fastpath``). The file name hashes
the source, the flags, the compiler and the CPU's feature flags, so a cached build is
only reused where it was built for (``-march=native``). Building takes a few seconds;
the file is written to a temporary name and renamed, so concurrent processes are safe.

Where no compiler works, :func:`load_kernel` returns ``None`` and
:class:`clenv.fastpath.FastMLPTrainer` falls back to the torch implementation
(:mod:`clenv.fastpath.reference`), which is slower but computes the same thing.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).with_name("mlp_kernel.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c++17")
_VP = ctypes.c_void_p
_I64 = ctypes.c_int64
_F64 = ctypes.c_double
# clenv_train_chunk_{f32,f64}(n_layers, width*, W**, b**, X*, Y*, P*, losses*, K, start,
#   lr, weight_decay, ages**, utils**, mean_acts**, acc*, decay, maturity,
#   replacement_rate, adaptable, mse, ln_w**, ln_b**, ln_eps, anchor_w**, anchor_b**,
#   anchor, w_target*, ln_target*, crelu) -> examples processed
ARGTYPES = [_I64, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _I64, _I64, _F64, _F64,
            _VP, _VP, _VP, _VP, _F64, _I64, _F64, ctypes.c_int, ctypes.c_int,
            _VP, _VP, _F64, _VP, _VP, _F64, _VP, _VP, ctypes.c_int]  # fmt: skip


def cache_dir() -> Path:
    """Where built kernels are kept (``$CLENV_CACHE_DIR/fastpath`` or ~/.cache)."""
    root = os.environ.get("CLENV_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "clenv"
    return base / "fastpath"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() + platform.machine()


def build_kernel(verbose: bool = False) -> Path:
    """Compile the kernel if it is not cached; return the shared library's path.

    Raises:
        RuntimeError: when no C++ compiler is found or the build fails (the message
            holds the compiler's output).
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(
            "no C++ compiler found (tried $CXX, g++, c++, clang++); install one (e.g. "
            "apt-get install g++) for the fast path, or use backend='torch'"
        )
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout
    key = hashlib.sha256(
        b"\0".join(
            s.encode()
            for s in (SOURCE.read_text(), " ".join(FLAGS), version, _cpu_flags())
        )
    ).hexdigest()[:16]
    target = cache_dir() / f"mlp_kernel_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=target.parent, suffix=".so", delete=False
    ) as tmp:
        tmp_path = Path(tmp.name)
    command = [compiler, *FLAGS, str(SOURCE), "-o", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        raise RuntimeError(
            f"building the fast-path kernel failed: {' '.join(command)}\n"
            f"{result.stderr[-2000:]}"
        )
    if verbose:
        print(f"built {target}")
    os.replace(tmp_path, target)
    return target


@cache
def load_kernel() -> dict[str, ctypes._CFuncPtr] | None:
    """The kernel's entry points by dtype name (``"float32"``, ``"float64"``).

    Returns ``None`` (with a warning, once per process) when the kernel cannot be
    built, so callers fall back to the torch implementation.
    """
    try:
        library = ctypes.CDLL(str(build_kernel()))
    except (RuntimeError, OSError) as error:
        warnings.warn(
            f"clenv fast path: native kernel unavailable, using the torch fallback "
            f"(several times slower). Reason: {error}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    functions = {}
    for dtype, symbol in (("float32", "clenv_train_chunk_f32"),
                          ("float64", "clenv_train_chunk_f64")):  # fmt: skip
        function = getattr(library, symbol)
        function.argtypes = ARGTYPES
        function.restype = _I64
        functions[dtype] = function
    return functions
