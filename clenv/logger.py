"""RunLogger: one run directory, every series in TensorBoard and in an HDF5 file.

A run directory (``runs/<env_id with / as _>__<exp_name>__<seed>__<unix time>/``)
holds

================ ====================================================================
event files      TensorBoard (scalars, histograms, the hyperparameter table)
``metrics.h5``   every series as numbers you can load without TensorBoard
``checkpoints/`` see :mod:`clenv.checkpoint`
``args.json``    the run's arguments
================ ====================================================================

``metrics.h5`` layout: root attributes ``env_id``, ``exp_name``, ``reg``, ``seed``,
``agent`` and ``args_json``; every series is a group at its tag path (e.g.
``/charts/episodic_return``) holding three resizable datasets of equal length:
``step`` (int64, global step), ``task_id`` (int64, the task when it was logged) and
``value`` (float64; shape ``(n,)`` for scalars, ``(n, ...)`` for arrays such as a
spectral density on a fixed grid, whose grid is the group attribute ``grid``).

The file is flushed after every write, so a run killed with SIGKILL keeps everything it
logged. A write that fails (a full disk: ``ENOSPC``) raises :class:`StorageError` after
the logger has closed the file, so it stays readable with every row written before. :meth:`RunLogger.resume` truncates every series to ``step <= checkpoint step``
and reopens TensorBoard with ``purge_step`` so a resumed run has no gap and no
duplicate.

Example:
    >>> import tempfile
    >>> with RunLogger.create(tempfile.mkdtemp(), env_id="clenv/SlipperyAnt-v0",
    ...                       exp_name="demo", seed=0, agent="ppo", reg="bp",
    ...                       args={"lr": 1e-4}, tensorboard=False) as logger:
    ...     logger.set_task(0)
    ...     logger.log_scalar("charts/episodic_return", 12.5, step=1000)
    ...     read_series(logger.run_dir / "metrics.h5", "charts/episodic_return")["value"]
    array([12.5])
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5s

METRICS_FILE = "metrics.h5"
COLUMNS = ("step", "task_id", "value")  # of every series
ARGS_FILE = "args.json"
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class StorageError(OSError):
    """A run's files could not be written: a full disk, no permission, a read-only
    filesystem. The message names the path and the fix; ``errno`` is the cause's."""


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
#: A run stops with :class:`StorageError` before a write when its disk has less free
#: space than this: HDF5 does not recover from a write that fails half way (the
#: library's state is left inconsistent), so the logger and the checkpoints never let
#: the disk fill that far.
MIN_FREE_BYTES = 16 << 20
#: How often (seconds) the logger looks at the free space while appending rows.
SPACE_CHECK_SECONDS = 0.5


def free_bytes(path: str | Path) -> int:
    """The bytes an unprivileged process may still write on ``path``'s filesystem."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def ensure_free_space(path: str | Path, needed: int = 0, what: str = "writing") -> None:
    """Raise :class:`StorageError` (``ENOSPC``) unless ``needed`` bytes plus
    :data:`MIN_FREE_BYTES` are free on ``path``'s filesystem."""
    try:
        free = free_bytes(path)
    except (OSError, AttributeError):  # no statvfs: rely on the write's own error
        return
    if free < needed + MIN_FREE_BYTES:
        error = OSError(
            errno.ENOSPC,
            f"only {free / 2**20:.1f} MiB free, clenv stops below "
            f"{(needed + MIN_FREE_BYTES) / 2**20:.1f} MiB so that metrics.h5 and the "
            "checkpoints stay intact",
        )
        raise storage_error(what, path, error)


def storage_error(what: str, path: str | Path, error: BaseException) -> StorageError:
    """A :class:`StorageError` for ``error`` while ``what`` (e.g. "writing metrics"),
    naming ``path`` and the fix for its cause."""
    code = getattr(error, "errno", None)
    if code is None and "No space left" in str(error):  # HDF5 reports it in text
        code = errno.ENOSPC
    if code in _NO_SPACE:
        fix = (
            "The disk is full: free space there (or choose another --runs-dir), then "
            "continue the run with --resume"
        )
    elif code == errno.EROFS:
        fix = "Its filesystem is mounted read-only: choose another --runs-dir"
    elif code in (errno.EACCES, errno.EPERM):
        fix = (
            "It is not writable: fix its permissions (chmod u+w) or choose another "
            "--runs-dir"
        )
    else:
        fix = "Check the disk and the path, then continue the run with --resume"
    problem = StorageError(f"{what} failed at {path}: {error}. {fix}")
    problem.errno = code
    return problem


def check_writable(directory: str | Path, what: str = "run directory") -> Path:
    """Create ``directory`` if needed and write a probe file there, or raise
    :class:`StorageError` naming it and the fix (before a run has written anything).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=directory)
        try:
            os.write(fd, b"clenv")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        raise storage_error(f"writing to the {what}", directory, error) from error
    return directory


def _is_write_failure(error: BaseException) -> bool:
    code = getattr(error, "errno", None)
    return code in (*_NO_SPACE, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO) or (
        "write failed" in str(error)
    )


def _damaged(path: Path, error: BaseException) -> OSError:
    return OSError(
        f"{path} cannot be read ({type(error).__name__}: {error}); it may have been "
        "damaged by a kill in the middle of a write or by the disk. Checkpoints are "
        f"separate and intact: move the file aside (mv {path} {path}.damaged) and "
        "resume again, which starts a fresh metrics.h5 at the checkpoint's step"
    )


def run_name(
    env_id: str, exp_name: str, seed: int, timestamp: int | None = None
) -> str:
    """CleanRL's run name, ``<env_id>__<exp_name>__<seed>__<unix time>``.

    The ``/`` of a namespaced id (``clenv/SlipperyAnt-v0``) becomes ``_`` so the run is
    one directory.
    """
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return f"{env_id.replace('/', '_')}__{exp_name}__{seed}__{timestamp}"


def hparams_markdown(args: Mapping[str, Any]) -> str:
    """The hyperparameters as a Markdown table (CleanRL's ``add_text`` format)."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in args.items())
    return f"|param|value|\n|-|-|\n{rows}"


def open_metrics(path: str | Path) -> h5py.File:
    """Open a ``metrics.h5`` for reading, also while its run is still writing it."""
    try:
        return h5py.File(path, "r")
    except BlockingIOError:
        # Another process (the run's logger) holds HDF5's file lock: read without it.
        # Not the first choice, as HDF5 refuses to open a file twice in one process
        # with different locking flags.
        return h5py.File(path, "r", locking=False)


def read_series(path: str | Path, tag: str) -> dict[str, np.ndarray]:
    """Load one series of a ``metrics.h5`` file as ``{"step", "task_id", "value"}``.

    Works on the file of a run that is still running (rows it has not finished
    writing are left out).
    """
    with open_metrics(path) as f:
        if tag not in f:
            raise KeyError(f"no series {tag!r} in {path}; it has {list_series(f)}")
        group = f[tag]
        rows = complete_rows(group)
        out = {name: group[name][:rows] for name in COLUMNS}
        if "grid" in group.attrs:
            out["grid"] = np.asarray(group.attrs["grid"])
        return out


def complete_rows(group: h5py.Group) -> int:
    """Rows present in every column of a series.

    A row is appended column by column; a run killed in between leaves one column a
    row longer than the others. That row was never complete, so readers stop before it.
    """
    return min(group[name].shape[0] for name in COLUMNS)


def _drop_incomplete_row(group: h5py.Group) -> int:
    """Cut every column of a series to its complete rows; returns their number."""
    rows = complete_rows(group)
    for name in COLUMNS:
        if group[name].shape[0] > rows:
            group[name].resize(rows, axis=0)
    return rows


def copy_series(
    source: str | Path,
    dest: str | Path,
    tags: list[str] | tuple[str, ...],
) -> Path:
    """Write the complete rows of the series ``tags`` (those ``source`` has) with
    ``source``'s root attributes to a new file ``dest`` in the
    ``metrics.h5`` layout, gzip-compressed and with the same numbers: a compact record
    of a run that outlives its run directory, read by every reader of ``metrics.h5``.

    Written to a temporary file that replaces ``dest`` only once complete, so an
    interrupted copy leaves no partial record.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with open_metrics(source) as src, h5py.File(tmp, "w") as out:
            out.attrs.update(dict(src.attrs))
            for tag in tags:
                if tag not in src:
                    continue
                group, rows = src[tag], complete_rows(src[tag])
                copy = out.create_group(tag)
                copy.attrs.update(dict(group.attrs))
                for name in COLUMNS:
                    copy.create_dataset(
                        name, data=group[name][:rows], compression="gzip",
                        compression_opts=9, shuffle=True,
                    )  # fmt: skip
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def list_series(file: h5py.File | h5py.Group) -> list[str]:
    """Every series (group holding ``step``/``task_id``/``value``) in an HDF5 file."""
    tags: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and "value" in obj and "step" in obj:
            tags.append(name)

    file.visititems(visit)
    return sorted(tags)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for run arguments: paths as strings, NumPy
    scalars as numbers, anything else as its repr."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


class RunLogger:
    """Writes every series to TensorBoard and to ``metrics.h5`` in one run directory.

    Use :meth:`create` for a new run and :meth:`resume` to continue one from a
    checkpoint; call :meth:`set_task` when the task changes so every value is stamped
    with the task it was logged in.

    Args:
        run_dir: the run directory (created if missing).
        step_limit: None for a new run. For a resumed run, the checkpoint's global step:
            every series is truncated to ``step <= step_limit`` and TensorBoard discards
            events from ``step_limit + 1`` on.
        tensorboard: also write TensorBoard event files (off only for tests or when
            TensorBoard is unwanted).
        attrs: root attributes of ``metrics.h5`` (written only when given).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        step_limit: int | None = None,
        tensorboard: bool = True,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = check_writable(run_dir)
        self.task_id = 0
        self._next_space_check = 0.0
        self._series: dict[str, _SeriesWriter] = {}
        path = self.run_dir / METRICS_FILE
        try:
            self._h5 = h5py.File(path, "a")
        except (OSError, RuntimeError) as error:
            if path.exists() and not os.access(path, os.W_OK):
                raise storage_error("opening metrics", path, error) from error
            raise _damaged(path, error) from error
        try:
            if attrs:
                for key, value in attrs.items():
                    self._h5.attrs[key] = value
            if step_limit is not None:
                self._truncate(int(step_limit))
            self._h5.flush()
        except (OSError, RuntimeError, KeyError) as error:
            self._abandon()
            if _is_write_failure(error):
                raise storage_error("writing metrics", path, error) from error
            raise _damaged(path, error) from error
        self.writer = None
        if tensorboard:
            # Imported lazily: it pulls in tensorboard (slow) and a reader of
            # metrics.h5 does not need it.
            from torch.utils.tensorboard import SummaryWriter

            purge = None if step_limit is None else int(step_limit) + 1
            self.writer = SummaryWriter(str(self.run_dir), purge_step=purge)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        env_id: str,
        exp_name: str,
        seed: int,
        agent: str,
        reg: str,
        args: Mapping[str, Any],
        tensorboard: bool = True,
        name: str | None = None,
    ) -> RunLogger:
        """Start a new run ``<root>/<run_name(...)>``: args.json, attributes, hparams.

        Args:
            root: the directory holding runs (``runs``).
            env_id, exp_name, seed: name the run (see :func:`run_name`).
            agent: which agent wrote it (``"ppo"``, ``"supervised"``).
            reg: the plasticity method (``--reg``).
            args: every argument of the run; saved to args.json, the HDF5 attribute
                ``args_json`` and TensorBoard's text tab as a Markdown table.
            tensorboard: also write TensorBoard event files.
            name: the run directory's name; default :func:`run_name`.
        """
        check_writable(root, "runs directory")
        run_dir = Path(root) / (name or run_name(env_id, exp_name, seed))
        if (run_dir / METRICS_FILE).exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; pass another name, or resume it"
            )
        check_writable(run_dir)
        args_json = json.dumps(dict(args), indent=2, default=json_default)
        try:
            (run_dir / ARGS_FILE).write_text(args_json + "\n")
        except OSError as error:
            raise storage_error("writing args.json", run_dir, error) from error
        attrs = {
            "env_id": env_id,
            "exp_name": exp_name,
            "reg": reg,
            "seed": int(seed),
            "agent": agent,
            "args_json": args_json,
        }
        logger = cls(run_dir, tensorboard=tensorboard, attrs=attrs)
        if logger.writer is not None:
            logger.writer.add_text("hyperparameters", hparams_markdown(args))
            logger.writer.flush()
        return logger

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        step: int,
        *,
        tensorboard: bool = True,
        attrs: Mapping[str, Any] | None = None,
    ) -> RunLogger:
        """Reopen a run at a checkpoint's global ``step``; drops what was logged after.

        Args:
            run_dir: the run directory.
            step: the checkpoint's global step.
            tensorboard: also write TensorBoard event files.
            attrs: the root attributes for a fresh ``metrics.h5`` when the run
                directory has none (its log was moved aside after damage); without
                them a missing file is an error.

        Raises:
            FileNotFoundError: ``run_dir`` has no ``metrics.h5`` and no ``attrs``.
        """
        run_dir = Path(run_dir)
        if not (run_dir / METRICS_FILE).exists():
            if attrs is None:
                raise FileNotFoundError(
                    f"{run_dir / METRICS_FILE} not found: --resume expects a run "
                    "directory made by an earlier run (runs/<env>__<exp>__<seed>__"
                    "<time>)"
                )
            warnings.warn(
                f"{run_dir / METRICS_FILE} not found: starting a fresh one, which "
                f"holds the rows from step {step + 1} on",
                stacklevel=2,
            )
            return cls(run_dir, step_limit=step, tensorboard=tensorboard, attrs=attrs)
        return cls(run_dir, step_limit=step, tensorboard=tensorboard)

    @staticmethod
    def load_args(run_dir: str | Path) -> dict[str, Any]:
        """The arguments a run was started with (its ``args.json``)."""
        path = Path(run_dir) / ARGS_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found; is {run_dir} a run directory made by a clenv agent?"
            )
        return json.loads(path.read_text())

    def update_args(self, args: Mapping[str, Any]) -> None:
        """Replace the saved arguments (e.g. a resumed run extended to more steps)."""
        args_json = json.dumps(dict(args), indent=2, default=json_default)
        tmp = self.run_dir / (ARGS_FILE + ".tmp")
        try:
            tmp.write_text(args_json + "\n")
            tmp.replace(self.run_dir / ARGS_FILE)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise storage_error("writing args.json", tmp, error) from error
        self._write(lambda: self._h5.attrs.__setitem__("args_json", args_json))

    # -- state -----------------------------------------------------------------------
    def set_task(self, task_id: int) -> None:
        """Stamp every following value with ``task_id`` (until the next call)."""
        self.task_id = int(task_id)

    # -- writing ---------------------------------------------------------------------
    def log_scalar(
        self, tag: str, value: float, step: int, *, task_id: int | None = None
    ) -> None:
        """One scalar at global ``step``; ``task_id`` defaults to :meth:`set_task`'s."""
        self._append(tag, np.float64(value), step, task_id)
        if self.writer is not None:
            self._write(lambda: self.writer.add_scalar(tag, float(value), int(step)))

    def log_scalars(
        self,
        values: Mapping[str, float],
        step: int,
        *,
        prefix: str = "",
        task_id: int | None = None,
    ) -> None:
        """Several scalars at one step; tags are ``prefix + key``."""
        for key, value in values.items():
            self.log_scalar(prefix + key, value, step, task_id=task_id)

    def log_array(
        self,
        tag: str,
        values: np.ndarray,
        step: int,
        *,
        grid: np.ndarray | None = None,
        task_id: int | None = None,
    ) -> None:
        """A fixed-shape array at ``step`` (e.g. a density on ``grid``).

        In HDF5 the array is one row of ``value`` and ``grid`` the group attribute
        (every row of a series must use the same grid). In TensorBoard, with a grid the
        array is drawn as a histogram whose bucket ``i`` ends at ``grid[i]`` and holds
        ``values[i]`` (a spectral density over eigenvalues); without one, as the
        histogram of its entries.
        """
        values = np.asarray(values, dtype=np.float64)
        if grid is not None:
            grid = np.asarray(grid, dtype=np.float64)
            if grid.shape != values.shape or grid.ndim != 1:
                raise ValueError(
                    f"{tag}: grid shape {grid.shape} must equal the values' 1-d shape "
                    f"{values.shape}"
                )
        self._append(tag, values, step, task_id, grid=grid)
        if self.writer is None:
            return
        if grid is None:
            self._write(lambda: self.writer.add_histogram(tag, values, int(step)))
            return
        weights = np.clip(values, 0.0, None)
        total = float(weights.sum())
        self._write(lambda: self._histogram(tag, grid, weights, total, step))

    def _histogram(self, tag, grid, weights, total, step) -> None:
        self.writer.add_histogram_raw(
            tag,
            min=float(grid[0]),
            max=float(grid[-1]),
            num=total,
            sum=float((weights * grid).sum()),
            sum_squares=float((weights * grid**2).sum()),
            bucket_limits=grid.tolist(),
            bucket_counts=weights.tolist(),
            global_step=int(step),
        )

    def log_report(
        self,
        prefix: str,
        report: Mapping[str, Any],
        step: int,
        *,
        task_id: int | None = None,
        array_length: int | None = None,
    ) -> None:
        """Every entry of a report (e.g. :func:`clenv.metrics.curvature_report`).

        Numbers are scalars ``prefix + key``; arrays are :meth:`log_array` series, an
        array ``key`` on its grid when the report has ``key + "_grid"`` (the grid
        itself is not logged). ``array_length`` pads (NaN, or 0 for a ``*_weights``
        array) or cuts the arrays without a grid to that length, so every row of a
        series has one shape even when, say, Lanczos stops early on a tiny model.
        """
        for key, value in report.items():
            if isinstance(value, int | float):
                self.log_scalar(prefix + key, value, step, task_id=task_id)
        for key, value in report.items():
            is_grid = key.endswith("_grid") and key[: -len("_grid")] in report
            if not isinstance(value, np.ndarray) or is_grid:
                continue
            grid = report.get(key + "_grid")
            if grid is None and array_length is not None:
                row = np.full(array_length, 0.0 if key.endswith("_weights") else np.nan)
                value = np.asarray(value, dtype=np.float64).reshape(-1)[:array_length]
                row[: len(value)] = value
                value = row
            self.log_array(prefix + key, value, step, grid=grid, task_id=task_id)

    def flush(self) -> None:
        self._write(self._h5.flush)
        if self.writer is not None:
            self._write(self.writer.flush)

    def close(self) -> None:
        if self._h5.id.valid:
            self._write(self._h5.flush)
            self._h5.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write(self, write: Any) -> Any:
        """Run one write; on an OSError (a full disk) close everything and raise
        :class:`StorageError`, leaving ``metrics.h5`` as its last flush left it."""
        try:
            return write()
        except (OSError, RuntimeError) as error:
            # h5py reports some failed writes as RuntimeError ("Can't flush cache
            # (file write failed ... No space left on device)").
            if not isinstance(error, OSError) and not _is_write_failure(error):
                raise
            self._abandon()
            raise storage_error(
                "writing the run's logs", self.run_dir / METRICS_FILE, error
            ) from error

    def _check_space(self) -> None:
        """Close the log cleanly and raise :class:`StorageError` when the disk is
        nearly full (looked at every :data:`SPACE_CHECK_SECONDS`)."""
        now = time.monotonic()
        if now < self._next_space_check:
            return
        self._next_space_check = now + SPACE_CHECK_SECONDS
        try:
            ensure_free_space(self.run_dir, what="writing the run's logs")
        except StorageError:
            self.close()
            raise

    def _abandon(self) -> None:
        """Close the files after a failed write, never raising: the last complete
        flush is what stays on disk."""
        try:
            if self._h5.id.valid:
                self._h5.close()
        except Exception:  # closing flushes again, which may fail the same way
            pass
        writer, self.writer = getattr(self, "writer", None), None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HDF5 ------------------------------------------------------------------------
    def _append(
        self,
        tag: str,
        value: np.ndarray | np.float64,
        step: int,
        task_id: int | None,
        grid: np.ndarray | None = None,
    ) -> None:
        value = np.asarray(value, dtype=np.float64)
        series = self._series.get(tag)
        if series is None:
            series = self._write(lambda: self._open_series(tag, value.shape, grid))
            self._series[tag] = series
        if series.shape != value.shape:
            raise ValueError(
                f"{tag}: every value of a series must have shape {series.shape}, got "
                f"{value.shape}"
            )
        if grid is not None and not np.array_equal(series.grid, grid):
            raise ValueError(f"{tag}: the grid must be the same for every row")
        task = self.task_id if task_id is None else int(task_id)
        self._check_space()
        self._write(lambda: (series.append(int(step), task, value), self._h5.flush()))

    def _open_series(
        self, tag: str, shape: tuple[int, ...], grid: np.ndarray | None
    ) -> _SeriesWriter:
        if not _TAG_PATTERN.match(tag):
            raise ValueError(
                f"tag {tag!r} must be slash-separated names of letters, digits, "
                "'_', '.', '-' (e.g. 'charts/episodic_return')"
            )
        group = self._h5.get(tag)
        if group is None:
            group = self._create_series(tag, shape, grid)
        return _SeriesWriter(group)

    def _create_series(
        self, tag: str, shape: tuple[int, ...], grid: np.ndarray | None
    ) -> h5py.Group:
        group = self._h5.create_group(tag)
        chunk_rows = max(1, min(1024, 2**16 // max(1, int(np.prod(shape, dtype=int)))))
        for name, dtype in (("step", np.int64), ("task_id", np.int64)):
            group.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1024,)
            )
        group.create_dataset(
            "value",
            shape=(0, *shape),
            maxshape=(None, *shape),
            dtype=np.float64,
            chunks=(chunk_rows, *shape),
        )
        if grid is not None:
            group.attrs["grid"] = grid
        return group

    def _truncate(self, step_limit: int) -> None:
        """Keep only complete rows with ``step <= step_limit`` in every series."""
        for tag in list_series(self._h5):
            group = self._h5[tag]
            _drop_incomplete_row(group)
            steps = group["step"][()]
            keep = steps <= step_limit
            if keep.all():
                continue
            kept = np.flatnonzero(keep)
            is_prefix = kept.size == 0 or kept[-1] == kept.size - 1
            for name in COLUMNS:
                dataset = group[name]
                if not is_prefix:
                    dataset[: kept.size] = dataset[()][kept]
                dataset.resize(kept.size, axis=0)


class _SeriesWriter:
    """Appends rows to one series through h5py's low-level API.

    Five times cheaper per row than ``dataset.resize`` + ``dataset[n] = x`` (which
    build a selection in Python each time); rows are still written, and the file
    flushed, one at a time.
    """

    def __init__(self, group: h5py.Group) -> None:
        self.datasets = [group[name].id for name in COLUMNS]
        self.rows = _drop_incomplete_row(group)
        self.shape = tuple(group["value"].shape[1:])
        self.grid = np.asarray(group.attrs["grid"]) if "grid" in group.attrs else None
        self._memory_spaces = [
            h5s.create_simple((1,)),
            h5s.create_simple((1,)),
            h5s.create_simple((1, *self.shape)),
        ]

    def append(self, step: int, task_id: int, value: np.ndarray) -> None:
        n = self.rows
        rows = (
            np.array([step], dtype=np.int64),
            np.array([task_id], dtype=np.int64),
            np.ascontiguousarray(value, dtype=np.float64).reshape(1, *self.shape),
        )
        for dataset, memory, row in zip(
            self.datasets, self._memory_spaces, rows, strict=True
        ):
            extent = (n + 1, *row.shape[1:])
            dataset.set_extent(extent)
            file_space = dataset.get_space()
            file_space.select_hyperslab((n,) + (0,) * (row.ndim - 1), row.shape)
            dataset.write(memory, file_space, row)
        self.rows = n + 1
