"""clenv sweep on a local Ray: a 2x2 grid, restart without reruns, retries reported.

The trials run a test-double agent (written below) that takes the same arguments as
agents/*.py (--seed, --reg, --exp-name, --runs-dir, --resume), writes a run directory
in the metrics.h5 layout and counts its own executions; a real tiny agent run is the
slow test at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from clenv import sweep  # noqa: E402
from clenv.plotting import load_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

FAKE_AGENT = """
import argparse, json, sys, time
from pathlib import Path
import h5py

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--reg", default="bp")
parser.add_argument("--exp-name", default="fake")
parser.add_argument("--runs-dir", default="runs")
parser.add_argument("--learning-rate", type=float, default=0.1)
parser.add_argument("--env-id", default="clenv/PermutedMNIST-v0")
parser.add_argument("--resume", default=None)
args = parser.parse_args()
if args.resume:  # like agents/*.py: a resumed run takes its saved arguments
    resume = args.resume
    args = argparse.Namespace(**json.loads((Path(resume) / "args.json").read_text()))
    args.resume = resume

calls = Path(args.runs_dir).parent / "calls.jsonl"
with calls.open("a") as f:
    f.write(json.dumps(vars(args)) + "\\n")
marker = Path(args.runs_dir).parent / f"flaky-{args.seed}"
name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{time.time_ns()}"
run_dir = Path(args.resume) if args.resume else Path(args.runs_dir) / name
run_dir.mkdir(parents=True, exist_ok=bool(args.resume))
(run_dir / "args.json").write_text(json.dumps(vars(args)))
if args.reg == "broken":  # dies before its first checkpoint
    sys.exit("broken on purpose")
if args.reg == "flaky" and not marker.exists():  # dies after a checkpoint
    marker.touch()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_100.pt").write_text("state")
    sys.exit("flaky: fails the first attempt")
with h5py.File(run_dir / "metrics.h5", "w") as f:
    for key in ("env_id", "exp_name", "reg", "seed"):
        f.attrs[key] = getattr(args, key)
    group = f.create_group("cl/online_accuracy_per_task")
    group["step"] = [100, 200]
    group["task_id"] = [0, 1]
    group["value"] = [args.learning_rate, args.learning_rate / 2]
print("done", run_dir)
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "fake_agent.py").write_text(FAKE_AGENT)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _calls(workspace: Path) -> list[dict]:
    path = workspace / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _manifest(workspace: Path, name: str) -> dict:
    return json.loads((workspace / "runs/sweeps" / name / "manifest.json").read_text())


def test_grid_and_trial_ids_are_deterministic() -> None:
    spec = sweep.SweepSpec(
        name="s",
        agent="agent.py",
        seeds=[1, 2],
        regs=["bp", "l2er"],
        grid=sweep.parse_grid(["learning-rate=0.1,0.01"]),
        agent_args=["--env-id", "X-v0"],
        runs_dir="runs",
        workdir=".",
        python="python",
    )
    trials = spec.trials()
    assert len(trials) == 8
    assert trials[0].trial_id == "s-bp-learning-rate=0.1__seed=1"
    assert trials[0].command == [
        "python", "agent.py", "--env-id", "X-v0", "--learning-rate", "0.1",
        "--seed", "1", "--reg", "bp", "--exp-name", "s-bp-learning-rate=0.1",
        "--runs-dir", "runs",
    ]  # fmt: skip
    assert [t.trial_id for t in spec.trials()] == [t.trial_id for t in trials]
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        sweep.parse_grid(["learning-rate"])
    with pytest.raises(ValueError, match="--seeds"):
        sweep.parse_grid(["seed=1,2"])


def test_sweep_runs_2x2_retries_and_restart_skips_finished(
    local_ray, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    # 2 methods x 2 seeds; every "flaky" trial fails its first attempt.
    argv = ["fake_agent.py", "--name", "grid", "--seeds", "1", "2",
            "--reg", "bp", "flaky", "--max-retries", "1",
            "--", "--learning-rate", "0.5"]  # fmt: skip
    assert sweep.main(argv) == 0
    calls = _calls(workspace)
    assert sorted((c["reg"], c["seed"]) for c in calls) == [
        ("bp", 1), ("bp", 2), ("flaky", 1), ("flaky", 1), ("flaky", 2), ("flaky", 2)
    ]  # fmt: skip
    assert {c["learning_rate"] for c in calls} == {0.5}
    # The retry of a trial that left a checkpoint continues it with the agent's --resume.
    resumed = [c for c in calls if c["resume"]]
    assert len(resumed) == 2 and all("grid-flaky" in c["resume"] for c in resumed)
    manifest = _manifest(workspace, "grid")["trials"]
    assert {t["status"] for t in manifest.values()} == {"done"}
    for trial_id, trial in manifest.items():
        assert trial["attempts"] == (2 if "flaky" in trial_id else 1)
        assert Path(trial["run_dir"]).is_dir()
    assert "fails the first attempt" in manifest["grid-flaky__seed=1"]["errors"][0]
    assert "4 done; retried and recovered: 2" in capsys.readouterr().out
    # Results land in runs/ like single runs, grouped by (env, exp, reg) over seeds.
    run_dirs = sorted(p for p in (workspace / "runs").iterdir() if p.name != "sweeps")
    assert len(run_dirs) == 4
    groups = {load_run(p).group_key[1:] for p in run_dirs}
    assert groups == {("grid-bp", "bp"), ("grid-flaky", "flaky")}

    # Restarted: nothing reruns.
    assert sweep.main(argv) == 0
    assert len(_calls(workspace)) == 6
    # A different agent command under the same name is refused.
    with pytest.raises(ValueError, match="already exists"):
        sweep.main(argv[:-1] + ["0.1"])


def test_failed_trial_is_reported_and_rerun_on_restart(
    local_ray, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["fake_agent.py", "--name", "bad", "--reg", "broken", "--max-retries", "0"]
    assert sweep.main(argv) == 1
    broken = _manifest(workspace, "bad")["trials"]["bad-broken__seed=1"]
    assert (broken["status"], broken["attempts"]) == ("failed", 1)
    assert (
        "exit 1" in broken["errors"][0] and "broken on purpose" in broken["errors"][0]
    )
    assert Path(broken["log"]).read_text().strip().endswith("broken on purpose")
    assert "1 failed" in capsys.readouterr().out
    # Restarted from its directory: the unfinished trial is tried again.
    assert sweep.main(["--resume", "runs/sweeps/bad", "--max-retries", "0"]) == 1
    assert [c["reg"] for c in _calls(workspace)] == ["broken", "broken"]
    # The first attempt's partial run directory was moved out of runs/.
    moved = list((workspace / "runs/sweeps/bad/failed").iterdir())
    assert len(moved) == 1 and "__bad-broken__1__" in moved[0].name
    assert _manifest(workspace, "bad")["trials"]["bad-broken__seed=1"]["attempts"] == 2


def test_cli_dry_run_and_errors(workspace: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "clenv.cli", "sweep", "fake_agent.py", "--name", "d",
         "--seeds", "1", "2", "--reg", "bp", "--grid", "learning-rate=1,2",
         "--dry-run", "--", "--env-id", "X-v0"],
        capture_output=True, text=True, env=env, cwd=workspace, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 4 and "--env-id X-v0 --learning-rate 1 --seed 1" in lines[0]
    bad = subprocess.run(
        [sys.executable, "-m", "clenv.cli", "sweep", "missing.py", "--name", "d"],
        capture_output=True, text=True, env=env, cwd=workspace, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "agent script 'missing.py' not found" in bad.stderr
    # The default --name is derived from the agent's file name, '_' and all.
    assert sweep.main(["fake_agent.py", "--dry-run"]) == 0
    # The sweep's own numbers are checked before anything runs (also in --dry-run).
    base = ["fake_agent.py", "--name", "d", "--dry-run"]
    for flags, message in (
        (["--cpus-per-trial", "nan"], "--cpus-per-trial must be a number > 0, got nan"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be a number > 0"),
        (["--num-cpus", "0"], "--num-cpus must be >= 1 (or unset), got 0"),
        (["--max-concurrent", "-2"], "--max-concurrent must be >= 1"),
        (["--seeds", "-1"], "--seeds must be >= 0, got [-1]"),
        (["--max-retries", "-1"], "--max-retries must be >= 0"),
    ):
        with pytest.raises(ValueError) as error:
            sweep.main([*base, *flags])
        assert message in str(error.value)


MNIST_ROOT = REPO.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST_ROOT / "mnist").is_dir(), reason="needs the real MNIST")
def test_sweep_of_the_real_supervised_agent_then_plot(
    local_ray, workspace: Path
) -> None:
    """End to end: a 2x2 sweep of agents/supervised_l2er.py, then clenv plot."""
    from clenv.plotting import plot_runs
    from clenv.plotting.figure import TITLE_DEAD_UNITS, TITLE_PERFORMANCE

    argv = [str(REPO / "agents/supervised_l2er.py"), "--name", "tiny",
            "--seeds", "1", "2", "--reg", "bp", "l2er", "--",
            "--data-dir", str(MNIST_ROOT), "--width", "20", "--num-tasks", "4",
            "--examples-per-task", "300", "--curvature-every-tasks", "2",
            "--curvature-order", "10", "--metric-samples", "100",
            "--no-progress"]  # fmt: skip
    assert sweep.main(argv) == 0
    run_dirs = sorted(p for p in (workspace / "runs").iterdir() if p.name != "sweeps")
    assert len(run_dirs) == 4
    result = plot_runs(run_dirs, workspace / "tiny.png")
    assert TITLE_PERFORMANCE in result.panels and TITLE_DEAD_UNITS in result.panels
    assert "Hessian spectral density (tiny-l2er)" in result.panels


# An agent with check_args (as agents/*.py have): the sweep calls it in-process for
# every grid point before any trial; running it as a trial would fail loudly.
CHECKED_AGENT = """
import argparse, sys

def check_args(argv):
    parser = argparse.ArgumentParser()
    for flag in ("--seed", "--reg", "--exp-name", "--runs-dir"):
        parser.add_argument(flag)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.learning_rate <= 0:
        raise ValueError(f"--learning-rate must be > 0, got {args.learning_rate}")
    return args

if __name__ == "__main__":
    sys.exit("a trial was started")
"""


def test_trial_arguments_are_checked_before_any_trial(
    workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    (workspace / "checked_agent.py").write_text(CHECKED_AGENT)
    base = ["checked_agent.py", "--name", "c", "--seeds", "1", "2", "--reg", "bp"]
    assert sweep.main([*base, "--grid", "learning-rate=0.1,0.2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "arguments of 2 grid point(s) accepted by checked_agent.py" in out
    assert len([line for line in out.splitlines() if "__seed=" in line]) == 4
    # A bad value: the sweep (not only the dry run) stops before its first trial.
    with pytest.raises(ValueError) as error:
        sweep.main([*base, "--grid", "learning-rate=0.1,-1"])
    message = str(error.value)
    assert message.startswith("trial c-bp-learning-rate=-1__seed=1: checked_agent.py "
                              "rejects its arguments (--learning-rate -1 ")  # fmt: skip
    assert "--learning-rate must be > 0, got -1.0" in message
    assert "no trial was started" in message
    assert not (workspace / "runs" / "sweeps" / "c").exists()
    # An option the agent does not know: its usage error, not a buried attempt log.
    with pytest.raises(ValueError, match="unrecognized arguments: --bogus 3"):
        sweep.main([*base, "--dry-run", "--", "--bogus", "3"])


def test_real_agents_check_their_arguments_in_a_dry_run(workspace: Path) -> None:
    agent = str(REPO / "agents" / "supervised_l2er.py")
    base = [agent, "--name", "r", "--reg", "bp", "--dry-run", "--"]
    with pytest.raises(ValueError, match="Unrecognized options: --no-such-flag"):
        sweep.main([*base, "--no-such-flag", "3"])
    with pytest.raises(ValueError, match="--momentum must be in \\[0, 1\\), got 5.0"):
        sweep.main([*base, "--momentum", "5"])
    assert sweep.main([*base, "--num-tasks", "2"]) == 0


def test_a_trial_resumes_only_from_a_checkpoint_that_verifies(tmp_path: Path) -> None:
    import torch

    from clenv.checkpoint import save_checkpoint

    run_dir = tmp_path / "run"
    assert not sweep._has_checkpoint(run_dir)  # no checkpoints/ at all
    path = save_checkpoint(run_dir / "checkpoints", {"w": torch.ones(64)}, step=10)
    assert sweep._has_checkpoint(run_dir)
    # Every checkpoint damaged: a retry must start afresh, not resume and fail again.
    path.write_bytes(b"\0" * path.stat().st_size)
    assert not sweep._has_checkpoint(run_dir)
    # Another agent's own checkpoint files count as they are.
    (run_dir / "checkpoints" / "step_100.pt").write_text("state")
    assert sweep._has_checkpoint(run_dir)
