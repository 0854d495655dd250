"""RunLogger: run-dir layout, HDF5 series, TensorBoard, crash safety and resume."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clenv.logger import (
    METRICS_FILE,
    RunLogger,
    copy_series,
    hparams_markdown,
    list_series,
    read_series,
    run_name,
)

ATTRS = dict(env_id="clenv/SlipperyAnt-v0", exp_name="t", seed=3, agent="ppo", reg="bp")


def tb_events(run_dir):
    accumulator = EventAccumulator(
        str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def test_run_name_replaces_namespace_slash():
    assert run_name("clenv/SlipperyAnt-v0", "ppo", 1, 17) == (
        "clenv_SlipperyAnt-v0__ppo__1__17"
    )


def test_create_writes_layout_attrs_and_args(tmp_path):
    args = {"learning_rate": 1e-4, "reg": "bp", "path": tmp_path}
    with RunLogger.create(tmp_path, args=args, name="run", **ATTRS) as logger:
        logger.log_scalar("charts/episodic_return", 1.5, step=10)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "args.json").read_text())["learning_rate"] == 1e-4
    with h5py.File(run_dir / METRICS_FILE, "r") as f:
        for key, value in ATTRS.items():
            assert f.attrs[key] == value
        assert json.loads(f.attrs["args_json"])["reg"] == "bp"
        group = f["charts/episodic_return"]
        assert group["step"].dtype == np.int64 and group["task_id"].dtype == np.int64
        assert group["value"].dtype == np.float64
        assert group["value"].maxshape == (None,)
    events = tb_events(run_dir)
    assert [e.value for e in events.Scalars("charts/episodic_return")] == [1.5]
    text = events.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0]
    assert "|learning_rate|0.0001|" in text.decode()


def test_create_refuses_to_overwrite_a_run(tmp_path):
    RunLogger.create(tmp_path, args={}, name="run", tensorboard=False, **ATTRS).close()
    with pytest.raises(FileExistsError, match="resume"):
        RunLogger.create(tmp_path, args={}, name="run", tensorboard=False, **ATTRS)


def test_hparams_markdown_table():
    assert hparams_markdown({"a": 1, "b": "x"}) == "|param|value|\n|-|-|\n|a|1|\n|b|x|"


def test_task_ids_are_stamped_and_overridable(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        logger.log_scalar("cl/task_id", 0, step=1)
        logger.set_task(4)
        logger.log_scalars({"a": 1.0, "b": 2.0}, step=2, prefix="losses/")
        logger.log_scalar("cl/mean_return_per_task", 7.0, step=3, task_id=3)
    path = tmp_path / METRICS_FILE
    assert read_series(path, "cl/task_id")["task_id"].tolist() == [0]
    assert read_series(path, "losses/a")["task_id"].tolist() == [4]
    assert read_series(path, "losses/b")["value"].tolist() == [2.0]
    per_task = read_series(path, "cl/mean_return_per_task")
    assert per_task["task_id"].tolist() == [3] and per_task["step"].tolist() == [3]
    with h5py.File(path, "r") as f:
        assert list_series(f) == [
            "cl/mean_return_per_task",
            "cl/task_id",
            "losses/a",
            "losses/b",
        ]


def test_array_series_with_grid_goes_to_hdf5_and_tensorboard(tmp_path):
    grid = np.linspace(-1.0, 1.0, 5)
    rows = [np.array([0.0, 1.0, 2.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0, 1.0, 1.0])]
    with RunLogger(tmp_path) as logger:
        for step, row in enumerate(rows):
            logger.log_array("curvature/spectral_density", row, step=step, grid=grid)
        logger.log_array("plasticity/activations", np.arange(6.0), step=0)
    series = read_series(tmp_path / METRICS_FILE, "curvature/spectral_density")
    np.testing.assert_array_equal(series["value"], np.stack(rows))
    np.testing.assert_array_equal(series["grid"], grid)
    histograms = tb_events(tmp_path).Histograms("curvature/spectral_density")
    first = histograms[0].histogram_value
    assert first.bucket == rows[0].tolist() and first.bucket_limit == grid.tolist()
    assert first.num == pytest.approx(4.0) and first.sum == pytest.approx(0.0)
    assert len(tb_events(tmp_path).Histograms("plasticity/activations")) == 1


def test_log_report_writes_scalars_arrays_on_their_grid_and_pads(tmp_path):
    grid = np.linspace(0.0, 1.0, 4)
    report = {
        "top_eigenvalue": 2.5,
        "epsilon_rank/0.01": 0.25,
        "spectral_density": np.array([0.1, 0.2, 0.3, 0.4]),
        "spectral_density_grid": grid,
        "ritz_values": np.array([0.5, 2.5]),  # Lanczos stopped after 2 of 3
        "ritz_weights": np.array([0.4, 0.6]),
        "seconds": 0.1,
    }
    with RunLogger(tmp_path) as logger:
        logger.set_task(4)
        logger.log_report("curvature/task_end/", report, 100, task_id=3)
        logger.log_report("curvature/task_start/", report, 100, array_length=3)
    path = tmp_path / METRICS_FILE
    prefix = "curvature/task_end/"
    with h5py.File(path, "r") as file:
        logged = set(list_series(file))
    assert logged == {
        f"curvature/{when}/{key}"
        for when in ("task_end", "task_start")
        for key in report
        if key != "spectral_density_grid"
    }
    top = read_series(path, prefix + "top_eigenvalue")
    assert top["value"].tolist() == [2.5] and top["task_id"].tolist() == [3]
    assert read_series(path, prefix + "epsilon_rank/0.01")["value"].tolist() == [0.25]
    density = read_series(path, prefix + "spectral_density")
    np.testing.assert_array_equal(density["value"], [report["spectral_density"]])
    np.testing.assert_array_equal(density["grid"], grid)
    np.testing.assert_array_equal(
        read_series(path, prefix + "ritz_values")["value"], [[0.5, 2.5]]
    )
    # array_length pads the arrays without a grid: values NaN, weights 0.
    padded = read_series(path, "curvature/task_start/ritz_values")
    np.testing.assert_array_equal(padded["value"], [[0.5, 2.5, np.nan]])
    assert padded["task_id"].tolist() == [4]  # set_task's
    weights = read_series(path, "curvature/task_start/ritz_weights")["value"]
    np.testing.assert_array_equal(weights, [[0.4, 0.6, 0.0]])
    density = read_series(path, "curvature/task_start/spectral_density")["value"]
    assert density.shape == (1, 4)  # on its grid: never padded
    histograms = tb_events(tmp_path).Histograms(prefix + "spectral_density")
    assert histograms[0].histogram_value.bucket_limit == grid.tolist()


def test_bad_input_raises_value_error(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match="tag"):
            logger.log_scalar("charts/bad tag", 1.0, step=0)
        logger.log_array("curvature/d", np.zeros(3), step=0, grid=np.arange(3.0))
        with pytest.raises(ValueError, match="shape"):
            logger.log_array("curvature/d", np.zeros(4), step=1)
        with pytest.raises(ValueError, match="grid"):
            logger.log_array("curvature/d", np.zeros(3), step=1, grid=np.ones(3))
        with pytest.raises(ValueError, match="grid shape"):
            logger.log_array("curvature/e", np.zeros(3), step=1, grid=np.ones(2))
    with pytest.raises(KeyError, match="no series"):
        read_series(tmp_path / METRICS_FILE, "charts/missing")
    with pytest.raises(FileNotFoundError, match="metrics.h5"):
        RunLogger.resume(tmp_path / "nothing", step=0)


def test_resume_truncates_series_and_tensorboard_without_gap_or_duplicate(tmp_path):
    with RunLogger.create(tmp_path, args={}, name="run", **ATTRS) as logger:
        for step in range(10):
            logger.set_task(step // 4)
            logger.log_scalar("charts/x", step * 10.0, step=step)
            logger.log_array(
                "curvature/d", np.full(3, step), step=step, grid=np.ones(3)
            )
        logger.log_scalar("charts/only_late", 1.0, step=8)
    run_dir = tmp_path / "run"
    # A checkpoint at step 5: rows 6..9 are dropped, then logged again.
    time.sleep(1.1)  # TensorBoard names event files by the second
    with RunLogger.resume(run_dir, step=5) as logger:
        series = read_series(run_dir / METRICS_FILE, "charts/x")
        assert series["step"].tolist() == list(range(6))
        assert series["task_id"].tolist() == [0, 0, 0, 0, 1, 1]
        assert read_series(run_dir / METRICS_FILE, "charts/only_late")["step"].size == 0
        assert read_series(run_dir / METRICS_FILE, "curvature/d")["value"].shape == (
            6,
            3,
        )
        for step in range(6, 12):
            logger.log_scalar("charts/x", step * 10.0 + 1, step=step)
    series = read_series(run_dir / METRICS_FILE, "charts/x")
    assert series["step"].tolist() == list(range(12))
    assert series["value"][5] == 50.0 and series["value"][6] == 61.0
    scalars = tb_events(run_dir).Scalars("charts/x")
    assert [s.step for s in scalars] == list(range(12))
    assert scalars[6].value == 61.0


def test_resume_truncates_non_monotone_series(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        for step in (1, 7, 3, 9, 2):
            logger.log_scalar("eval/x", step, step=step)
    RunLogger(tmp_path, step_limit=3, tensorboard=False).close()
    series = read_series(tmp_path / METRICS_FILE, "eval/x")
    assert series["step"].tolist() == [1, 3, 2]
    assert series["value"].tolist() == [1.0, 3.0, 2.0]


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from clenv.logger import RunLogger
    logger = RunLogger(sys.argv[1], tensorboard=False)
    step = 0
    while True:
        logger.log_scalar("charts/x", float(step), step=step)
        logger.log_array("curvature/d", np.full(50, step), step=step, grid=np.arange(50.0))
        if step == 20:
            print("ready", flush=True)
        step += 1
    """
)


def test_sigkilled_writer_leaves_a_readable_file(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    series = read_series(tmp_path / METRICS_FILE, "charts/x")
    n = series["step"].size
    assert n > 20
    # Every row written is there and consistent; at most the row in flight is lost.
    assert series["step"].tolist() == list(range(n))
    np.testing.assert_array_equal(series["value"], np.arange(n))
    density = read_series(tmp_path / METRICS_FILE, "curvature/d")
    assert abs(density["step"].size - n) <= 1
    m = min(n, density["step"].size)
    np.testing.assert_array_equal(density["value"][:m, 0], np.arange(m))
    # And the killed run can be resumed from it.
    RunLogger.resume(tmp_path, step=10, tensorboard=False).close()
    assert read_series(tmp_path / METRICS_FILE, "charts/x")["step"].size == 11


def test_damaged_metrics_file_gives_a_clear_error(tmp_path):
    (tmp_path / METRICS_FILE).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(OSError, match="move the file aside"):
        RunLogger.resume(tmp_path, step=0, tensorboard=False)


def test_update_args_rewrites_args_json_and_attribute(tmp_path):
    with RunLogger.create(
        tmp_path, args={"steps": 1}, name="r", tensorboard=False, **ATTRS
    ) as logger:
        logger.update_args({"steps": 2})
    assert RunLogger.load_args(tmp_path / "r") == {"steps": 2}
    with h5py.File(tmp_path / "r" / METRICS_FILE, "r") as f:
        assert json.loads(f.attrs["args_json"]) == {"steps": 2}


def test_a_row_half_written_by_a_kill_is_dropped_by_readers_and_writers(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False)
    for step in range(5):
        logger.log_scalar("charts/x", float(step), step=step)
    logger.close()
    # What a kill between two columns' writes leaves: "step" has a row more.
    with h5py.File(tmp_path / METRICS_FILE, "a") as f:
        f["charts/x/step"].resize(6, axis=0)
        f["charts/x/step"][5] = 5
    series = read_series(tmp_path / METRICS_FILE, "charts/x")
    assert series["step"].tolist() == [0, 1, 2, 3, 4]
    assert series["value"].tolist() == [0, 1, 2, 3, 4]
    # Reopened (plain append, and resume), the next row lands after the complete ones.
    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log_scalar("charts/x", 5.0, step=5)
    logger.close()
    series = read_series(tmp_path / METRICS_FILE, "charts/x")
    assert series["step"].tolist() == series["value"].tolist() == [0, 1, 2, 3, 4, 5]
    with h5py.File(tmp_path / METRICS_FILE, "a") as f:
        f["charts/x/value"].resize(7, axis=0)  # now "value" is the longer column
    logger = RunLogger.resume(tmp_path, step=5, tensorboard=False)
    logger.log_scalar("charts/x", 6.0, step=6)
    logger.close()
    series = read_series(tmp_path / METRICS_FILE, "charts/x")
    assert series["step"].tolist() == series["value"].tolist() == list(range(7))
    assert series["task_id"].size == 7


def test_copy_series_keeps_the_chosen_series_complete_rows_and_attributes(tmp_path):
    grid = np.linspace(-1.0, 1.0, 4)
    with RunLogger(tmp_path / "run", attrs=ATTRS, tensorboard=False) as logger:
        for step in range(3):
            logger.set_task(step)
            logger.log_scalar("cl/acc", 0.5 + step / 10, step=step)
            logger.log_scalar("charts/loss", 1.0, step=step)
            logger.log_array("curvature/d", np.full(4, step / 7), step=step, grid=grid)
    source = tmp_path / "run" / METRICS_FILE
    with h5py.File(source, "a") as f:  # a kill between two columns' writes
        f["cl/acc/step"].resize(4, axis=0)
    record = copy_series(
        source, tmp_path / "rec" / "r.h5", ["cl/acc", "curvature/d", "not/logged"]
    )
    assert sorted(p.name for p in record.parent.iterdir()) == ["r.h5"]  # no temp file
    with h5py.File(record) as f, h5py.File(source) as original:
        assert list_series(f) == ["cl/acc", "curvature/d"]
        assert dict(f.attrs) == dict(original.attrs) and f.attrs["seed"] == 3
        assert f["curvature/d/value"].compression == "gzip"
    for tag in ("cl/acc", "curvature/d"):
        copied, original = read_series(record, tag), read_series(source, tag)
        assert copied.keys() == original.keys()
        for name, column in original.items():
            np.testing.assert_array_equal(copied[name], column)  # the same numbers
    assert read_series(record, "cl/acc")["step"].tolist() == [0, 1, 2]


def test_read_series_reads_the_file_of_a_run_still_writing_it(tmp_path):
    # A study reads a live run's metrics.h5 from another process; HDF5's file lock
    # must not refuse it.
    reader = (
        "import sys; from clenv.logger import read_series; "
        "s = read_series(sys.argv[1], 'charts/episodic_return'); "
        "print(s['step'].tolist(), s['value'].tolist())"
    )
    with RunLogger(tmp_path, tensorboard=False) as logger:
        logger.log_scalar("charts/episodic_return", 12.5, step=1000)
        logger.flush()
        result = subprocess.run(
            [sys.executable, "-c", reader, str(tmp_path / METRICS_FILE)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[1000] [12.5]"


# -- a full disk ------------------------------------------------------------------------

FILL_DISK = """
import sys
import numpy as np
import clenv.logger
from clenv.logger import RunLogger, StorageError
clenv.logger.MIN_FREE_BYTES = int(sys.argv[2])
clenv.logger.SPACE_CHECK_SECONDS = 0.0
logger = RunLogger(sys.argv[1], tensorboard=False, attrs={"env_id": "test"})
written = 0
try:
    for step in range(10**6):
        logger.log_scalar("charts/x", float(step), step=step)
        logger.log_array("spectrum/density", np.full(50, float(step)), step=step)
        written = step + 1
except StorageError as error:
    print("STOPPED", error.errno, written, flush=True)
"""


@pytest.mark.parametrize("margin", [1 << 20, 0], ids=["guard", "hdf5-hits-enospc"])
def test_a_full_small_filesystem_stops_the_log_with_every_row_intact(tmp_path, margin):
    """A 2 MiB tmpfs (mounted in a user namespace) fills up while a run logs. With the
    free-space guard the logger stops before HDF5 fails a write; without it (another
    process filled the disk) HDF5's own ENOSPC is still a StorageError. Either way a
    fresh process reads every row written before."""
    mount = tmp_path / "disk"
    mount.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FILL_DISK)
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mount}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs unshare -rm)")
    run = mount / "run"
    read = (
        "from clenv.logger import read_series as r; "
        f"print('ROWS', len(r('{run}/metrics.h5', 'charts/x')['value']), "
        f"len(r('{run}/metrics.h5', 'spectrum/density')['value']), "
        f"r('{run}/metrics.h5', 'charts/x')['value'].tolist() == "
        f"list(map(float, range(len(r('{run}/metrics.h5', 'charts/x')['value'])))))"
    )
    shell = (
        f"mount -t tmpfs -o size=2m tmpfs {mount} && "
        f"{sys.executable} {script} {run} {margin}; "
        f'{sys.executable} -c "{read}"'
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = result.stdout.splitlines()
    (stopped,) = [line.split() for line in lines if line.startswith("STOPPED")]
    (rows,) = [line.split() for line in lines if line.startswith("ROWS")]
    written = int(stopped[2])
    assert stopped[1] == str(errno.ENOSPC) and written > 100
    # every row written before the stop, in order (the failed row may be complete too)
    assert written <= int(rows[1]) <= written + 1 and rows[3] == "True"
    assert int(rows[2]) == int(rows[1])


# -- a damaged metrics.h5 -----------------------------------------------------------------


def test_a_damaged_metrics_file_is_a_clear_error_in_plot_and_resume(tmp_path, capsys):
    """Bytes of the HDF5 metadata overwritten at several places: ``clenv plot`` and a
    resume each end with one message naming the file (never a raw traceback)."""
    from clenv.cli import main

    clean_dir = tmp_path / "clean"
    with RunLogger(clean_dir, tensorboard=False, attrs={"env_id": "test"}) as logger:
        for step in range(300):
            logger.log_scalar("charts/episodic_return", float(step), step=step)
            logger.log_array("spectrum/density", np.ones(40), step=step)
    clean = (clean_dir / METRICS_FILE).read_bytes()
    refused = 0
    for offset in (0, 96, 800, 2000, 4000, 8000):
        run_dir = tmp_path / f"damaged_at_{offset}"
        run_dir.mkdir()
        damaged = bytearray(clean)
        damaged[offset : offset + 4096] = b"\x5a" * len(damaged[offset : offset + 4096])
        (run_dir / METRICS_FILE).write_bytes(bytes(damaged))
        status = main(["plot", str(run_dir), "--out", str(tmp_path / "plot.png")])
        err = capsys.readouterr().err
        if status != 0:
            refused += 1
            assert status == 2 and err.startswith("clenv plot: error: cannot read")
            assert str(run_dir / METRICS_FILE) in err
        try:
            RunLogger.resume(run_dir, step=100, tensorboard=False).close()
        except OSError as error:
            message = str(error)
            assert message.startswith(f"{run_dir / METRICS_FILE} cannot be read")
            assert f"mv {run_dir / METRICS_FILE} " in message
    assert refused >= 4  # most of these places hold metadata a reader needs
