"""agents/pmnist_study.py end to end on the fixture MNIST: runs, resume, figure."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The study starts the agent in subprocesses, which check the data's md5 against the
# real MNIST's: this stand-in accepts the fixture's files, then runs the real agent.
AGENT_ACCEPTING_FIXTURE_MD5S = textwrap.dedent(
    f"""
    import runpy, sys
    from pathlib import Path
    from clenv.data import mnist
    from clenv.data.files import FileSpec, md5sum
    root = Path(sys.argv[sys.argv.index("--data-dir") + 1]) / "mnist"
    for key, spec in mnist.FILES.items():
        mnist.FILES[key] = FileSpec(spec.filename, md5sum(root / spec.filename))
    sys.argv[0] = {str(ROOT / "agents" / "supervised_l2er.py")!r}
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def load_study(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "pmnist_study", ROOT / "agents" / "pmnist_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pmnist_study", module)  # for its dataclass
    spec.loader.exec_module(module)
    return module


def test_study_runs_every_method_skips_finished_runs_and_plots(
    tmp_path, fake_data_dir, monkeypatch, capsys
):
    study = load_study(monkeypatch)
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT_ACCEPTING_FIXTURE_MD5S)
    monkeypatch.setattr(study, "AGENT", agent)
    runs, out = tmp_path / "runs", tmp_path / "results"
    argv = [
        "pmnist_study.py", "--regs", "bp", "l2er", "--seeds", "1", "--width", "8",
        "--num-tasks", "3", "--examples-per-task", "100",
        "--curvature-every-tasks", "1", "--plasticity-every-tasks", "1",
        "--metric-samples", "30", "--data-dir", str(fake_data_dir),
        "--runs-dir", str(runs), "--out", str(out), "--name", "tiny",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    study.main()
    printed = capsys.readouterr().out
    assert "bp seed 1: ok" in printed and "l2er seed 1: ok" in printed, printed
    summary = json.loads((out / "tiny.json").read_text())
    assert set(summary) == {"bp", "l2er"}
    for entry in summary.values():
        assert entry["seeds"] == 1 and entry["tasks"] == 3
        assert 0 <= entry["accuracy_last_10"] <= 1
        assert entry["effective_rank_first"] > 0
    assert (out / "tiny.png").stat().st_size > 10_000
    assert "l2er" in (out / "tiny.md").read_text()

    # A second call finds both runs finished: nothing is rerun, the figure is redrawn.
    h5_files = sorted(runs.glob("*/*/metrics.h5"))
    assert len(h5_files) == 2
    stamps = [f.stat().st_mtime_ns for f in h5_files]
    study.main()
    assert sorted(runs.glob("*/*/metrics.h5")) == h5_files
    assert [f.stat().st_mtime_ns for f in h5_files] == stamps
    assert json.loads((out / "tiny.json").read_text()) == summary


def test_plot_only_without_runs_says_so(tmp_path, monkeypatch):
    study = load_study(monkeypatch)
    argv = ["pmnist_study.py", "--plot-only", "--runs-dir", str(tmp_path / "none"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="no finished run of .*--partial"):
        study.main()
    assert not (tmp_path / "out").exists()  # no empty figure
