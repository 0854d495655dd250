"""The `clenv` console script: list, download, plot, bench (sweep: tests/test_sweep.py)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import matplotlib.image
import pytest
from test_plots import write_fixture_run

from clenv.cli import describe_env, main
from clenv.plotting.figure import TITLE_DEAD_UNITS, TITLE_PERFORMANCE
from clenv.registration import ENV_IDS

REPO = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("CLENV_SHARED_DATA", REPO.parent / "shared/data")) / "mnist"


def clenv(
    *args: str, cwd: Path = REPO, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    script = Path(sys.executable).with_name("clenv")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "clenv.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        command + list(args), capture_output=True, text=True, cwd=cwd, env=env,
        timeout=timeout,
    )  # fmt: skip


# -- clenv list ----------------------------------------------------------------------
def test_list_shows_every_env_with_docstring_line_and_schedule() -> None:
    run = clenv("list")
    assert run.returncode == 0, run.stderr
    for env_id in ENV_IDS:
        assert env_id in run.stdout
    data = json.loads(clenv("list", "--json").stdout)
    assert [d["id"] for d in data] == list(ENV_IDS)
    for entry in data:
        if entry["description"].startswith("(not available"):
            continue  # that env's module has not landed yet
        module, name = entry["entry_point"].split(":")
        env_class = getattr(__import__(module, fromlist=[name]), name)
        doc = [ln.strip() for ln in inspect.getdoc(env_class).splitlines()]
        first = next(ln for ln in doc if ln and not ln.startswith("#"))
        summary = entry["description"].split(" [")[0].rstrip("…")
        assert summary and (summary.startswith(first) or first.startswith(summary))
        signature = inspect.signature(env_class.__init__).parameters
        kwargs = gym.spec(entry["id"]).kwargs
        if "switch_every" in signature:
            expected = kwargs.get("switch_every", signature["switch_every"].default)
            assert entry["schedule"]["switch_every"] == expected


def test_summary_sentence() -> None:
    from clenv.cli import summary_sentence

    doc = (
        "## Description\nOnline MNIST where every task\nshuffles pixels. More.\n\nRest."
    )
    assert summary_sentence(doc) == "Online MNIST where every task shuffles pixels."
    assert summary_sentence("One line only") == "One line only"
    long = summary_sentence("word " * 60)
    assert len(long) <= 110 and long.endswith("…")


def test_describe_slippery_ant() -> None:
    info = describe_env("clenv/SlipperyAnt-v0")
    assert "friction" in info["description"].lower()
    assert info["schedule"]["switch_every"] == 2_000_000
    assert info["schedule"]["switch_at"] == "step"


# -- clenv download ------------------------------------------------------------------
@pytest.mark.skipif(not MNIST.is_dir(), reason="shared MNIST files not on this machine")
def test_download_keeps_verified_files(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    for file in MNIST.glob("*.gz"):
        (tmp_path / "mnist" / file.name).symlink_to(file)
    run = clenv("download", "mnist", "--data-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert f"mnist: ready in {tmp_path / 'mnist'}" in run.stdout


def test_download_offline_says_what_to_do(tmp_path: Path) -> None:
    # A closed port on loopback stands in for "no network".
    run = clenv("download", "mnist", "--data-dir", str(tmp_path),
                "--mirror", "http://127.0.0.1:9/")  # fmt: skip
    assert run.returncode == 1
    assert "could not download" in run.stderr and "Traceback" not in run.stderr
    assert not any((tmp_path / "mnist").glob("*.gz"))  # nothing half-written
    bad = clenv("download", "svhn")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# -- clenv plot ----------------------------------------------------------------------
def test_plot_command_writes_png(tmp_path: Path) -> None:
    for seed in (1, 2):
        write_fixture_run(tmp_path / "runs", reg="bp", seed=seed)
        write_fixture_run(tmp_path / "runs", reg="l2er", seed=seed, curvature=False)
    out = tmp_path / "fig.png"
    run = clenv("plot", str(tmp_path / "runs"), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert (
        f"- {TITLE_PERFORMANCE}" in run.stdout and f"- {TITLE_DEAD_UNITS}" in run.stdout
    )
    assert "note: Hessian spectral density: left out" in run.stdout
    assert matplotlib.image.imread(out).shape[1] > 1000


def test_plot_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "f.png")]) == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("clenv plot: error: run directory") and "does not exist" in err
    )


# -- clenv bench ---------------------------------------------------------------------
def test_bench_runs_a_benchmark_into_one_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = clenv("bench", "envs", "--args", "envs=--block-steps 20 --repeats 1",
                "--json", str(out))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[envs] " in run.stdout  # its own output, streamed
    assert "| benchmark | figure | value |" in run.stdout
    [result] = json.loads(out.read_text())
    assert result["name"] == "envs" and result["status"] == "ok"
    # Every figure main() returned is a row of the table (names are the benchmark's).
    assert result["figures"]
    for name, value in result["figures"].items():
        assert isinstance(value, int | float)
        assert f"| envs | {name} |" in run.stdout


def test_bench_reports_a_failing_benchmark(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "envs", "--args", "envs=--repeats 0"]) == 1
    assert "| envs | **failed (exit 2)** | |" in capsys.readouterr().out
    assert main(["bench", "nonexistent"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_help_lists_commands() -> None:
    run = clenv("--help")
    for command in ("list", "download", "plot", "bench", "sweep"):
        assert command in run.stdout
    assert shutil.which("clenv") or Path(sys.executable).with_name("clenv").exists()


def test_bench_table_flattens_nested_figures() -> None:
    from clenv.bench.__main__ import BenchResult, format_table

    figures = {"1": {"l2er": {"ratio": 1.23456}}, "100": {"bp": {"ratio": 1.0}}}
    table = format_table(
        [BenchResult("methods", "ok", 3.0, figures), BenchResult("metrics", "ok", 1.0)]
    )
    assert "| methods | 1 / l2er / ratio | 1.235 |" in table
    assert "| methods | 100 / bp / ratio | 1 |" in table
    assert "| metrics | (main() returned no figures) | |" in table
