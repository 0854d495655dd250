"""clenv.plotting: fixture run directories in the exact metrics.h5 layout -> PNG panels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
import pytest

from clenv.plotting import (
    epsilon_rank_from_density,
    linear_fit,
    load_run,
    mean_confidence_interval,
    plot_runs,
)
from clenv.plotting.figure import (
    EPSILON_CANDIDATES,
    TITLE_DEAD_UNITS,
    TITLE_EFFECTIVE_RANK,
    TITLE_EPSILON_RANK,
    TITLE_PERFORMANCE,
    TITLE_PERFORMANCE_STEPS,
    TITLE_SPECTRUM,
)
from clenv.plotting.stats import best_epsilon, log_abs_mass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS_PER_TASK = 1000
GRID = np.linspace(-5.0, 60.0, 1301)


class _SeriesWriter:
    """Collects records, then writes each series in the exact RunLogger layout."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        self.grids: dict[str, np.ndarray] = {}

    def append(self, tag: str, step: int, task_id: int, value, grid=None) -> None:
        self.records.setdefault(tag, []).append((step, task_id, np.asarray(value)))
        if grid is not None:
            self.grids[tag] = grid

    def write(self, f: h5py.File) -> None:
        for tag, records in self.records.items():
            group = f.create_group(tag)
            steps, tasks, values = zip(*records, strict=True)
            for name, data, dtype in (("step", steps, np.int64),
                                      ("task_id", tasks, np.int64),
                                      ("value", values, np.float64)):  # fmt: skip
                array = np.asarray(data, dtype=dtype)
                group.create_dataset(
                    name, data=array, maxshape=(None, *array.shape[1:]), chunks=True
                )
            if tag in self.grids:
                group.attrs["grid"] = self.grids[tag]


def _density(collapse: float) -> np.ndarray:
    """A smoothed spectrum whose share ``collapse`` of mass sits at zero."""
    spread = np.exp(-0.5 * ((GRID - 8.0) / 6.0) ** 2) * (GRID > 0)
    spike = np.exp(-0.5 * (GRID / 0.01) ** 2)
    density = collapse * spike / np.trapezoid(spike, GRID)
    return density + (1 - collapse) * spread / np.trapezoid(spread, GRID)


def write_fixture_run(
    root: Path,
    *,
    reg: str,
    seed: int,
    num_tasks: int = 12,
    env_id: str = "clenv/PermutedMNIST-v0",
    exp_name: str = "supervised_l2er",
    plasticity: bool = True,
    curvature: bool = True,
) -> Path:
    """A run dir in the exact BRIEF.md layout: BP declines and collapses, L2-ER holds."""
    rng = np.random.default_rng(seed)
    unix_time = 1700000000 + 10 * seed + len(reg)
    run_dir = root / f"{env_id.replace('/', '_')}__{exp_name}__{seed}__{unix_time}"
    run_dir.mkdir(parents=True)
    args = {"env_id": env_id, "exp_name": exp_name, "reg": reg, "seed": seed}
    (run_dir / "args.json").write_text(json.dumps(args))
    decline = 0.02 if reg == "bp" else 0.0
    log = _SeriesWriter()
    with h5py.File(run_dir / "metrics.h5", "w") as f:
        for key, val in (("env_id", env_id), ("exp_name", exp_name), ("reg", reg),
                         ("seed", seed), ("agent", "supervised"),
                         ("args_json", json.dumps(args))):  # fmt: skip
            f.attrs[key] = val
        for task in range(num_tasks):
            start, end = task * STEPS_PER_TASK, (task + 1) * STEPS_PER_TASK
            collapse = min(0.9, 0.05 + decline * 3 * task)
            accuracy = 0.93 - decline * task + 0.01 * rng.standard_normal()
            for step in range(start, end, 100):
                log.append("cl/online_accuracy", step, task, accuracy)
            log.append("cl/online_accuracy_per_task", end, task, accuracy)
            if plasticity:
                for layer in ("layer0", "layer1"):
                    dead = 5 + 40 * decline * task + rng.integers(0, 3)
                    erank = 90 - 150 * decline * task + rng.standard_normal()
                    log.append(f"plasticity/{layer}/dead_units", end - 1, task, dead)
                    log.append(
                        f"plasticity/{layer}/effective_rank", end - 1, task, erank
                    )
            if curvature and task % 2 == 0:
                for step in (start, end - 1):
                    log.append("curvature/task_start/spectral_density", step, task,
                               _density(collapse), grid=GRID)  # fmt: skip
        log.write(f)
    return run_dir


@pytest.fixture
def fixture_runs(tmp_path: Path) -> list[Path]:
    return [
        write_fixture_run(tmp_path / "runs", reg=reg, seed=seed)
        for reg in ("bp", "l2er")
        for seed in (1, 2, 3)
    ]


def _assert_png(path: Path, min_width: int = 400) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] >= min_width
    assert image[..., :3].std() > 0.05  # something was drawn
    return image


def test_plot_has_every_panel(fixture_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "fig.png"
    result = plot_runs(fixture_runs, out)
    assert result.path == out
    _assert_png(out, min_width=1000)
    titles = result.panels
    assert titles[:4] == [
        TITLE_PERFORMANCE,
        TITLE_PERFORMANCE_STEPS,
        TITLE_DEAD_UNITS,
        TITLE_EFFECTIVE_RANK,
    ]
    assert titles[4:6] == [f"{TITLE_SPECTRUM} (bp)", f"{TITLE_SPECTRUM} (l2er)"]
    assert titles[6].startswith(TITLE_EPSILON_RANK)
    assert result.notes == []
    # In the fixtures accuracy falls linearly as the zero spike grows, so the ε-rank
    # explains it (for any ε here, which ε wins is up to noise; the choice itself is
    # tested in test_best_epsilon_picks_the_informative_band).
    r_squared = float(titles[6].split("R² = ")[1].rstrip(")"))
    eps = float(titles[6].split("ε = ")[1].split(",")[0])
    assert r_squared > 0.9
    assert any(np.isclose(eps, c, rtol=5e-3) for c in EPSILON_CANDIDATES)


def test_missing_series_are_skipped_with_a_note(tmp_path: Path) -> None:
    full = write_fixture_run(tmp_path / "runs", reg="bp", seed=1)
    bare = write_fixture_run(
        tmp_path / "runs", reg="bp", seed=2, plasticity=False, curvature=False
    )
    result = plot_runs([full, bare], tmp_path / "mixed.png")
    assert TITLE_DEAD_UNITS in result.panels
    assert any(bare.name in note and TITLE_DEAD_UNITS in note for note in result.notes)
    _assert_png(tmp_path / "mixed.png")

    only_bare = plot_runs([bare], tmp_path / "bare.png")
    assert only_bare.panels == [TITLE_PERFORMANCE, TITLE_PERFORMANCE_STEPS]
    skipped = " ".join(only_bare.notes)
    for title in (
        TITLE_DEAD_UNITS,
        TITLE_EFFECTIVE_RANK,
        TITLE_SPECTRUM,
        TITLE_EPSILON_RANK,
    ):
        assert f"skipped panel '{title}'" in skipped
    _assert_png(tmp_path / "bare.png")


def test_directory_of_runs_is_expanded_and_eps_can_be_fixed(
    fixture_runs: list[Path], tmp_path: Path
) -> None:
    result = plot_runs([fixture_runs[0].parent], tmp_path / "all.png", eps=1e-4)
    assert f"{TITLE_SPECTRUM} (l2er)" in result.panels
    assert "ε = 0.0001" in result.panels[-1]


def test_bad_inputs_raise_clear_errors(
    fixture_runs: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_runs([tmp_path / "nope"], tmp_path / "x.png")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="metrics.h5"):
        plot_runs([empty], tmp_path / "x.png")
    (empty / "metrics.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_run(empty)
    with pytest.raises(ValueError, match="--metric"):
        plot_runs(fixture_runs, tmp_path / "x.png", metric="cl/nothing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_runs(fixture_runs, tmp_path / "no_dir" / "x.png")


def test_load_run_reads_layout(fixture_runs: list[Path]) -> None:
    run = load_run(fixture_runs[0])
    assert run.group_key == ("clenv/PermutedMNIST-v0", "supervised_l2er", "bp")
    assert run.seed == 1
    density = run.series["curvature/task_start/spectral_density"]
    assert density.value.shape == (12, len(GRID))
    np.testing.assert_array_equal(density.attrs["grid"], GRID)
    per_task = run.series["cl/online_accuracy_per_task"]
    np.testing.assert_array_equal(per_task.task_id, np.arange(12))


# -- statistics against closed forms --------------------------------------------------
def test_confidence_interval_matches_student_t() -> None:
    samples = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 4.0]])
    mean, half, count = mean_confidence_interval(samples)
    np.testing.assert_allclose(mean, [3.0, 3.0])
    np.testing.assert_array_equal(count, [3, 2])
    # t_{0.975, 2} = 4.302653, sd = 2, n = 3; t_{0.975, 1} = 12.706205, sd = sqrt(2)
    np.testing.assert_allclose(
        half,
        [4.302653 * 2 / np.sqrt(3), 12.706205 * np.sqrt(2) / np.sqrt(2)],
        rtol=1e-6,
    )
    _, single, _ = mean_confidence_interval(np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(single, [0.0, 0.0])


def test_epsilon_rank_of_uniform_density() -> None:
    grid = np.linspace(-1.0, 1.0, 20001)
    density = np.full_like(grid, 0.5)  # uniform on [-1, 1]
    np.testing.assert_allclose(
        epsilon_rank_from_density(grid, density, 0.1), 0.9, atol=1e-3
    )
    both = epsilon_rank_from_density(grid, np.stack([density, density]), 0.5)
    np.testing.assert_allclose(both, [0.5, 0.5], atol=1e-3)


def test_log_abs_mass_folds_signs_and_keeps_mass() -> None:
    grid = np.array([-100.0, -1.0, 0.0, 1.0, 100.0])
    density = np.array([[0.0, 1.0, 0.0, 1.0, 0.0]])
    edges = np.array([-1.0, 1.0, 3.0])  # log10|λ| bins [-1, 1), [1, 3)
    mass = log_abs_mass(grid, density, edges)
    np.testing.assert_allclose(mass.sum(), 1.0)
    np.testing.assert_allclose(mass, [[1.0, 0.0]])  # |λ| = 1 -> log 0 -> first bin


def test_linear_fit_r_squared() -> None:
    x = np.arange(10.0)
    slope, intercept, r2 = linear_fit(x, 2 * x + 1)
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    y = np.array([0.0, 1.0, 0.0, 1.0])
    _, _, r2 = linear_fit(np.array([0.0, 1.0, 2.0, 3.0]), y)
    assert r2 == pytest.approx(0.2)  # r = 0.4472
    assert np.isnan(linear_fit(np.ones(5), np.arange(5.0))[2])


def test_best_epsilon_picks_the_informative_band() -> None:
    # Three bumps: at 0, at 0.2 and at 1.5. Performance follows the mass at 1.5 only;
    # the mass at 0.2 varies independently, so only ε = 0.5 separates the two.
    grid = np.linspace(-2.0, 2.0, 4001)
    rng = np.random.default_rng(0)
    outer_share = np.linspace(0.1, 0.6, 8)
    middle_share = rng.uniform(0.0, 0.3, 8)

    def bump(centre: float) -> np.ndarray:
        density = np.exp(-0.5 * ((grid - centre) / 0.02) ** 2)
        return density / np.trapezoid(density, grid)

    densities = np.stack([
        (1 - o - m) * bump(0.0) + m * bump(0.2) + o * bump(1.5)
        for o, m in zip(outer_share, middle_share, strict=True)
    ])  # fmt: skip
    eps, r2 = best_epsilon([(grid, densities)], 3 * outer_share, [0.1, 0.5, 1.9])
    assert eps == 0.5 and r2 == pytest.approx(1.0, abs=1e-6)
    _, r2_wide_band = best_epsilon([(grid, densities)], 3 * outer_share, [0.1])
    assert r2_wide_band < 0.99


def test_runs_written_by_run_logger_plot(tmp_path: Path) -> None:
    """The contract end to end: clenv.logger.RunLogger writes, clenv.plotting reads."""
    logger_module = pytest.importorskip("clenv.logger")
    for seed in (1, 2):
        with logger_module.RunLogger.create(
            tmp_path / "runs", env_id="clenv/PermutedMNIST-v0", exp_name="real",
            seed=seed, agent="supervised", reg="bp", args={"seed": seed},
            tensorboard=False,
        ) as logger:  # fmt: skip
            for task in range(4):
                logger.set_task(task)
                start = task * STEPS_PER_TASK
                logger.log_array("curvature/task_start/spectral_density",
                                 _density(0.1 * task), start, grid=GRID)  # fmt: skip
                logger.log_scalar("plasticity/layer0/dead_units", 3.0 * task, start + 1)
                logger.log_scalar("plasticity/dead_units", 3.0 * task, start + 1)
                logger.log_scalar(
                    "cl/online_accuracy_per_task", 0.9 - 0.05 * task, start + 999
                )
    result = plot_runs([tmp_path / "runs"], tmp_path / "real.png")
    assert result.panels == [
        TITLE_PERFORMANCE,
        TITLE_DEAD_UNITS,
        f"{TITLE_SPECTRUM} (bp)",
        result.panels[-1],
    ]
    assert result.panels[-1].startswith(TITLE_EPSILON_RANK)
    run = load_run(next((tmp_path / "runs").iterdir()))
    # Only the per-layer series is summed; the aggregate is not added on top of it.
    from clenv.plotting.figure import _layer_series

    [layer] = _layer_series(run, "dead_units")
    assert layer.name == "plasticity/layer0/dead_units"
    _assert_png(tmp_path / "real.png")


def test_group_labels_show_what_differs() -> None:
    from clenv.plotting.runs import group_labels

    env = "clenv/PermutedMNIST-v0"
    assert group_labels([(env, "a", "bp")]) == {(env, "a", "bp"): "bp"}
    keys = [(env, "study", "bp"), (env, "study", "l2er")]
    assert list(group_labels(keys).values()) == ["bp", "l2er"]
    keys = [(env, "s-bp", "bp"), (env, "s-l2er-lr=0.1", "l2er")]  # clenv sweep names
    assert list(group_labels(keys).values()) == ["s-bp", "s-l2er-lr=0.1"]
    keys = [(env, "x", "bp"), ("clenv/SlipperyAnt-v0", "x", "l2er")]
    assert list(group_labels(keys).values()) == [
        f"{env} | bp",
        "clenv/SlipperyAnt-v0 | l2er",
    ]


def test_run_discovery_is_recursive_and_skips_failed_sweep_attempts(
    tmp_path: Path,
) -> None:
    from clenv.plotting.runs import expand_run_dirs

    nested = write_fixture_run(
        tmp_path / "runs" / "study" / "bp_seed1", reg="bp", seed=1
    )
    failed = write_fixture_run(
        tmp_path / "runs" / "sweeps" / "s" / "failed", reg="bp", seed=2
    )
    found = expand_run_dirs([tmp_path / "runs"])
    assert found == [nested] and failed not in found


def test_records_of_runs_plot_like_their_run_directories(
    fixture_runs: list[Path], tmp_path: Path
) -> None:
    # The records a study keeps (clenv.logger.copy_series: every series here) are
    # found in their folder and read as the runs they were copied from.
    from clenv.logger import copy_series, list_series, open_metrics
    from clenv.plotting.runs import expand_run_dirs, load_runs

    records = tmp_path / "records"
    for i, run_dir in enumerate(fixture_runs):
        with open_metrics(run_dir / "metrics.h5") as f:
            tags = list_series(f)
        copy_series(run_dir / "metrics.h5", records / f"run{i}.h5", tags)
    found = expand_run_dirs([records])
    assert found == sorted(records.glob("*.h5")) and len(found) == len(fixture_runs)
    for record, run in zip(load_runs([records]), load_runs(fixture_runs), strict=True):
        assert record.path.parent == records and record.attrs == run.attrs
        assert record.series.keys() == run.series.keys()
        for tag, series in run.series.items():
            np.testing.assert_array_equal(record.series[tag].value, series.value)
    plot_runs([records], tmp_path / "records.png")
    _assert_png(tmp_path / "records.png")


def test_plotting_leaves_the_users_backend_and_pyplot_alone(
    fixture_runs: list[Path], tmp_path: Path
) -> None:
    # a fresh interpreter with an interactive-style backend chosen by the user
    code = (
        "import matplotlib; matplotlib.use('svg'); import sys\n"
        "import matplotlib.pyplot as plt\n"
        "from clenv.plotting import plot_runs\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        f"plot_runs({[str(p) for p in fixture_runs]!r}, {str(tmp_path / 'b.png')!r})\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert plt.get_fignums() == [], plt.get_fignums()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    _assert_png(tmp_path / "b.png")
