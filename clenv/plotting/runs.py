"""Read run directories (``metrics.h5``) and group them by experiment.

The layout is the one :class:`clenv.logger.RunLogger` writes (docs/tooling.md): root
attributes ``env_id``, ``exp_name``, ``reg``, ``seed``, ``agent``, ``args_json``; every
series a group at its tag path holding the datasets ``step``, ``task_id`` and ``value``
(and, for arrays such as a spectral density, a group attribute ``grid``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clenv.logger import METRICS_FILE, open_metrics

RUN_ATTRS = ("env_id", "exp_name", "reg", "seed", "agent")


@dataclass
class Series:
    """One logged series: ``value[i]`` was logged at global ``step[i]`` in ``task_id[i]``."""

    name: str
    step: np.ndarray
    task_id: np.ndarray
    value: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.step)

    def per_task_mean(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean value in each task: ``(task_ids, means)``, task ids sorted ascending."""
        tasks, inverse = np.unique(self.task_id, return_inverse=True)
        values = self.value.reshape(len(self.value), -1)[:, 0].astype(np.float64)
        sums = np.bincount(inverse, weights=values, minlength=len(tasks))
        counts = np.bincount(inverse, minlength=len(tasks))
        return tasks, sums / counts


@dataclass
class Run:
    """A run directory and every series in its ``metrics.h5``."""

    path: Path
    attrs: dict[str, Any]
    series: dict[str, Series]

    @property
    def env_id(self) -> str:
        return str(self.attrs.get("env_id", "?"))

    @property
    def exp_name(self) -> str:
        return str(self.attrs.get("exp_name", "?"))

    @property
    def reg(self) -> str:
        return str(self.attrs.get("reg", "?"))

    @property
    def seed(self) -> int | str:
        return self.attrs.get("seed", "?")

    @property
    def group_key(self) -> tuple[str, str, str]:
        """Runs with the same env, experiment and method differ only by their seed."""
        return (self.env_id, self.exp_name, self.reg)

    @property
    def name(self) -> str:
        return self.path.name

    def find(self, names: Iterable[str]) -> Series | None:
        """The first of ``names`` that this run logged, or None."""
        for name in names:
            if name in self.series and len(self.series[name]):
                return self.series[name]
        return None

    def matching(self, suffix: str, prefix: str = "") -> list[Series]:
        """Series whose tag starts with ``prefix`` and ends with ``/suffix``."""
        return [
            s
            for name, s in sorted(self.series.items())
            if name.startswith(prefix) and name.endswith("/" + suffix) and len(s)
        ]


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_run(run_dir: str | Path) -> Run:
    """Read every series of a run directory.

    Args:
        run_dir: a directory holding ``metrics.h5``, that file, or a run's record in
            its layout (any other ``.h5`` file: :func:`clenv.logger.copy_series`, as
            ``agents/pmnist_study.py`` keeps its runs).

    Raises:
        FileNotFoundError: the directory or its ``metrics.h5`` does not exist.
        ValueError: the file is not a readable HDF5 file of the expected layout.
    """
    path = Path(run_dir)
    if path.suffix == ".h5" and path.is_file():
        h5_path = path
        path = path.parent if path.name == METRICS_FILE else path
    else:
        h5_path = _run_dir_metrics(path)
    series: dict[str, Series] = {}
    try:
        with open_metrics(h5_path) as f:
            attrs = {key: _decode(val) for key, val in f.attrs.items()}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Group) and {"step", "value"} <= set(obj.keys()):
                    step = np.asarray(obj["step"][()], dtype=np.int64)
                    value = np.asarray(obj["value"][()])
                    if "task_id" in obj:
                        task_id = np.asarray(obj["task_id"][()], dtype=np.int64)
                    else:
                        task_id = np.zeros_like(step)
                    n = min(len(step), len(value), len(task_id))  # a torn last write
                    series[name] = Series(
                        name=name,
                        step=step[:n],
                        task_id=task_id[:n],
                        value=value[:n],
                        attrs={k: _decode(v) for k, v in obj.attrs.items()},
                    )

            f.visititems(visit)
    except (OSError, RuntimeError, KeyError) as err:  # h5py's errors on damage
        raise ValueError(
            f"cannot read {str(h5_path)!r} as HDF5 ({err}); the file is corrupt or "
            "not a clenv metrics file"
        ) from err
    return Run(path=path, attrs=attrs, series=series)


def _run_dir_metrics(path: Path) -> Path:
    """The ``metrics.h5`` of run directory ``path`` (FileNotFoundError, saying what
    was expected, when there is none)."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"run directory {str(path)!r} does not exist; pass a directory under runs/ "
            "that an agent created (e.g. runs/clenv_SlipperyAnt-v0__ppo_l2er__1__...)"
        )
    h5_path = path / METRICS_FILE
    if not h5_path.is_file():
        raise FileNotFoundError(
            f"{str(h5_path)!r} not found: {str(path)!r} is not a clenv run directory "
            "(agents/ppo_l2er.py and agents/supervised_l2er.py write metrics.h5 into "
            "every run directory)"
        )
    return h5_path


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named by ``paths``; a directory of run directories is expanded.

    ``clenv plot runs/`` therefore plots every run under ``runs/`` (at any depth; the
    failed attempts that ``clenv sweep`` moves to ``runs/sweeps/<name>/failed/`` are
    left out), and ``clenv plot docs/results/pmnist_study_runs`` every record there
    (an ``.h5`` file other than ``metrics.h5``, as :func:`load_run` reads).
    """
    if not paths:
        raise ValueError("no run directories given; pass one or more RUN_DIR paths")
    run_dirs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / METRICS_FILE).is_file():
            children = sorted(
                p.parent
                for p in path.rglob(METRICS_FILE)
                if not (p.parent.parent.name == "failed" and "sweeps" in p.parts)
            )
            # Records of runs (clenv.logger.copy_series): any other .h5 file.
            children += sorted(
                p for p in path.rglob("*.h5") if p.is_file() and p.name != METRICS_FILE
            )
            if children:
                run_dirs.extend(children)
                continue
        run_dirs.append(path)
    return run_dirs


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """:func:`load_run` on every directory of :func:`expand_run_dirs`."""
    return [load_run(path) for path in expand_run_dirs(paths)]


def group_runs(runs: Sequence[Run]) -> dict[tuple[str, str, str], list[Run]]:
    """Runs grouped by (env_id, exp_name, reg), each group sorted by seed."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_key, []).append(run)
    for members in groups.values():
        members.sort(key=lambda r: str(r.seed))
    return groups


def group_labels(keys: Sequence[tuple[str, str, str]]) -> dict[tuple, str]:
    """Short legend labels: only the fields that differ between groups are shown."""
    if len(keys) == 1:
        env_id, exp_name, reg = keys[0]
        return {keys[0]: reg}
    varying = [i for i in range(3) if len({key[i] for key in keys}) > 1]
    labels = {}
    for key in keys:
        fields = [key[i] for i in varying]
        if 1 in varying and 2 in varying and key[2] in key[1]:
            fields.remove(key[2])  # the experiment name already says the method
        labels[key] = " | ".join(fields)
    return labels
