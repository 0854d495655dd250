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

import numpy as np
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
    assert message.endswith(
        "in the trial's arguments (its grid values: learning-rate=-1)"
    )
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


def test_consecutive_seeds_form_groups_of_at_most_the_size() -> None:
    assert sweep.seed_groups([5, 1, 2, 3], 2) == [(1, 2), (3, 1), (5, 1)]
    assert sweep.seed_groups([1, 2, 3, 7, 9, 10], 3) == [(1, 3), (7, 1), (9, 2)]
    assert sweep.seed_groups([4, 2], 5) == [(2, 1), (4, 1)]  # not consecutive
    spec = sweep.SweepSpec(
        name="s", agent="agent.py", seeds=[1, 2, 3, 5], regs=["bp", "x"], grid={},
        agent_args=[], runs_dir="runs", workdir=".", python="python", group_seeds=3,
        seeds_apart={"s-x": "the agent's reason"},
    )  # fmt: skip
    trials = {t.trial_id: t for t in spec.trials()}
    assert list(trials) == ["s-bp__seeds=1-3", "s-bp__seed=5", "s-x__seed=1",
                            "s-x__seed=2", "s-x__seed=3", "s-x__seed=5"]  # fmt: skip
    group = trials["s-bp__seeds=1-3"]
    assert (group.seed, group.num_seeds, group.seeds) == (1, 3, [1, 2, 3])
    assert group.command == [
        "python", "agent.py", "--seed", "1", "--num-seeds", "3", "--reg", "bp",
        "--exp-name", "s-bp", "--runs-dir", "runs",
    ]  # fmt: skip
    # group_seeds 1 (the default): exactly the trials of an ungrouped sweep.
    ungrouped = sweep.SweepSpec(**{**sweep.asdict(spec), "group_seeds": 1}).trials()
    assert [t.trial_id for t in ungrouped][:4] == [
        "s-bp__seed=1", "s-bp__seed=2", "s-bp__seed=3", "s-bp__seed=5"
    ]  # fmt: skip
    assert all(t.num_seeds == 1 and "--num-seeds" not in t.command for t in ungrouped)


# An agent with check_args that takes --num-seeds (one run directory per seed, each
# args.json naming the group, --resume of any member resumes the group), as
# agents/supervised_l2er.py does, and refuses it for --reg apart.
GROUP_AGENT = """
import argparse, json, sys, time
from pathlib import Path

def check_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num-seeds", type=int, default=1)
    for flag in ("--reg", "--exp-name", "--runs-dir", "--resume"):
        parser.add_argument(flag)
    args = parser.parse_args(argv)
    if args.num_seeds > 1 and args.reg == "apart":
        raise ValueError(f"--num-seeds {args.num_seeds} trains the seeds together on "
                         "the batch-1 fast path only: here: --reg apart")
    return args

if __name__ == "__main__":
    args = check_args(sys.argv[1:])
    with open("calls.jsonl", "a") as f:
        f.write(json.dumps(vars(args)) + "\\n")
    if args.resume:
        saved = json.loads((Path(args.resume) / "args.json").read_text())
        members, reg = saved["seed_group"], saved["reg"]
    else:
        members = [f"{args.runs_dir}/X__{args.exp_name}__{seed}__{time.time_ns()}"
                   for seed in range(args.seed, args.seed + args.num_seeds)]
        for member in members:
            seed = int(member.split("__")[2])
            Path(member).mkdir(parents=True)
            (Path(member) / "args.json").write_text(json.dumps(
                {**vars(args), "seed": seed, "seed_group": members}))
        reg = args.reg
    marker = Path(f"flaky-{members[0].split('__')[2]}")
    if reg == "flaky" and not marker.exists():  # dies after every member's checkpoint
        marker.touch()
        for member in members:
            (Path(member) / "checkpoints").mkdir()
            (Path(member) / "checkpoints" / "step_100.pt").write_text("state")
        sys.exit("flaky: fails the first attempt")
    for member in members:
        (Path(member) / "done").write_text(member.split("__")[2])
"""


def test_group_seeds_trains_consecutive_seeds_in_one_trial_and_resumes_the_group(
    local_ray, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    (workspace / "group_agent.py").write_text(GROUP_AGENT)
    argv = ["group_agent.py", "--name", "g", "--seeds", "1", "2", "3", "5",
            "--reg", "flaky", "apart", "--group-seeds", "3", "--max-retries", "1"]  # fmt: skip
    # --dry-run shows the grouping and why a point's seeds stay apart.
    assert sweep.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "g-apart: one trial per seed (--group-seeds): --num-seeds 3 trains the " in out
    )
    lines = [line for line in out.splitlines() if "__seed" in line]
    assert [line.split(":")[0] for line in lines] == [
        "g-flaky__seeds=1-3", "g-flaky__seed=5", "g-apart__seed=1", "g-apart__seed=2",
        "g-apart__seed=3", "g-apart__seed=5",
    ]  # fmt: skip
    assert "--seed 1 --num-seeds 3 --reg flaky" in lines[0]
    assert "--num-seeds" not in "".join(lines[1:])
    assert not (workspace / "runs").exists()

    assert sweep.main(argv) == 0
    calls = _calls(workspace)
    assert sorted((str(c["reg"]), c["seed"], c["num_seeds"]) for c in calls) == [
        ("None", 1, 1), ("None", 1, 1),  # the two resumes (reg from args.json)
        ("apart", 1, 1), ("apart", 2, 1), ("apart", 3, 1), ("apart", 5, 1),
        ("flaky", 1, 3), ("flaky", 5, 1),
    ]  # fmt: skip
    manifest = _manifest(workspace, "g")
    group = manifest["trials"]["g-flaky__seeds=1-3"]
    assert (group["status"], group["attempts"], group["seeds"]) == (
        "done",
        2,
        [1, 2, 3],
    )
    # The retry resumed the group from its first seed's run directory.
    resumes = [c["resume"] for c in calls if c["resume"]]
    assert group["run_dirs"][0] in resumes
    assert group["run_dir"] == group["run_dirs"][0]
    for seed, run_dir in zip((1, 2, 3), group["run_dirs"], strict=True):
        assert f"__g-flaky__{seed}__" in run_dir
        assert (Path(run_dir) / "done").read_text() == str(seed)
    # Every seed's run is listed, grouped or not, under the ungrouped trial's id.
    runs = manifest["runs"]
    assert sorted(runs) == sorted(
        f"g-{reg}__seed={seed}" for reg in ("flaky", "apart") for seed in (1, 2, 3, 5)
    )
    assert runs["g-flaky__seed=2"]["trial"] == "g-flaky__seeds=1-3"
    assert runs["g-flaky__seed=2"]["run_dir"] == group["run_dirs"][1]
    assert runs["g-apart__seed=2"]["trial"] == "g-apart__seed=2"
    assert all(Path(r["run_dir"]).is_dir() and r["status"] == "done"
               for r in runs.values())  # fmt: skip
    assert "trains the seeds together" in manifest["spec"]["seeds_apart"]["g-apart"]
    run_dirs = [p for p in (workspace / "runs").iterdir() if p.name != "sweeps"]
    assert len(run_dirs) == 8
    # Restarted (also with --resume): nothing reruns; the grouping is part of the
    # sweep's definition.
    assert sweep.main(argv) == 0
    assert sweep.main(["--resume", "runs/sweeps/g"]) == 0
    assert len(_calls(workspace)) == 8
    with pytest.raises(ValueError, match="already exists with group_seeds=3"):
        sweep.main([*argv[:-4], "--group-seeds", "2"])


def test_group_seeds_needs_an_agent_that_says_it_takes_num_seeds(
    workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    """An agent without check_args: one trial per seed, and the reason printed."""
    argv = ["fake_agent.py", "--name", "n", "--seeds", "1", "2", "--group-seeds", "2"]
    assert sweep.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "n-l2er: one trial per seed (--group-seeds): fake_agent.py defines no " in out
    )
    assert [line.split(":")[0] for line in out.splitlines() if "__seed" in line] == [
        "n-l2er__seed=1", "n-l2er__seed=2"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--group-seeds must be >= 1"):
        sweep.main([*argv, "--group-seeds", "0", "--dry-run"])


MD5_WRAPPER = """
import runpy, sys
from pathlib import Path
from clenv.data import mnist
from clenv.data.files import FileSpec, md5sum

# The loaders accept only known md5s: register the fixture files', then run the agent.
for key, spec in mnist.FILES.items():
    path = Path({root!r}) / "mnist" / spec.filename
    if path.is_file():
        mnist.FILES[key] = FileSpec(spec.filename, md5sum(path))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_grouped_sweep_of_the_real_agent_writes_the_runs_of_an_ungrouped_one(
    local_ray, workspace: Path, fake_data_dir: Path
) -> None:
    """agents/supervised_l2er.py on fake MNIST: --group-seeds 2 trains seeds 1 and 2
    of --reg bp in one trial (--num-seeds 2) whose two run directories hold the same
    metrics.h5 series as the ungrouped sweep's; --reg snp, which the agent refuses to
    train together, falls back to one trial per seed."""
    from test_multiseed_agent import h5_datasets
    from test_supervised_agent import PMNIST

    (workspace / "md5_wrapper.py").write_text(
        MD5_WRAPPER.format(root=str(fake_data_dir))
    )
    python = workspace / "python.sh"
    python.write_text(
        f'#!/bin/sh\nexec {sys.executable} {workspace / "md5_wrapper.py"} "$@"\n'
    )
    python.chmod(0o755)
    agent = str(REPO / "agents" / "supervised_l2er.py")
    common = ["--seeds", "1", "2", "--python", str(python), "--",
              *PMNIST, "--data-dir", str(fake_data_dir)]  # fmt: skip
    grouped = [agent, "--name", "grouped", "--reg", "bp", "snp", "--group-seeds", "2"]
    assert sweep.main([*grouped, *common]) == 0
    assert sweep.main([agent, "--name", "plain", "--reg", "bp", *common]) == 0

    trials = _manifest(workspace, "grouped")["trials"]
    assert sorted(trials) == [
        "grouped-bp__seeds=1-2", "grouped-snp__seed=1", "grouped-snp__seed=2"
    ]  # fmt: skip
    assert {t["status"] for t in trials.values()} == {"done"}
    apart = _manifest(workspace, "grouped")["spec"]["seeds_apart"]
    assert "--num-seeds 2 trains the seeds together" in apart["grouped-snp"]
    plain = _manifest(workspace, "plain")["runs"]
    for seed, run_dir in zip((1, 2), trials["grouped-bp__seeds=1-2"]["run_dirs"],
                             strict=True):  # fmt: skip
        saved = json.loads((Path(run_dir) / "args.json").read_text())
        assert (saved["seed"], saved["num_seeds"]) == (seed, 2)
        got = h5_datasets(Path(run_dir) / "metrics.h5")
        expected = h5_datasets(
            Path(plain[f"plain-bp__seed={seed}"]["run_dir"]) / "metrics.h5"
        )
        assert set(got) == set(expected) and any(
            k.startswith("plasticity/") for k in got
        )
        for key, value in expected.items():
            assert np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f"), (
                key
            )
    for seed in (1, 2):  # the seeds apart: ordinary runs
        run_dir = Path(trials[f"grouped-snp__seed={seed}"]["run_dir"])
        assert json.loads((run_dir / "args.json").read_text())["num_seeds"] == 1
