"""agents/pmnist_study.py: its arms, and end to end on the fixture MNIST (runs,
resume, figure)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from clenv.provenance import git_state

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


def copy_run(source: Path, dest: Path, **flags: str) -> None:
    """Copy a run directory as another run: its saved start command (provenance argv,
    which the study checks against the arm's flags) gets ``flags``' values
    (``num_tasks="5"`` sets ``--num-tasks 5``); also ``num_tasks`` in its saved args."""
    shutil.copytree(source, dest)
    (metrics,) = dest.glob("*/metrics.h5")
    with h5py.File(metrics, "r+") as f:
        saved = json.loads(f.attrs["args_json"])
        argv = saved["provenance"][0]["argv"]
        for name, value in flags.items():
            argv[argv.index("--" + name.replace("_", "-")) + 1] = value
        if "num_tasks" in flags:
            saved["num_tasks"] = int(flags["num_tasks"])
        f.attrs["args_json"] = json.dumps(saved)


def tiny_study(tmp_path, data_dir, monkeypatch, arms):
    """The study module running the real agent on the fixture MNIST, with argv set to
    a 3-task width-8 study of ``arms`` (seed 1), its runs and records under
    ``tmp_path``: ``(study, runs, out, argv)``."""
    study = load_study(monkeypatch)
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT_ACCEPTING_FIXTURE_MD5S)
    monkeypatch.setattr(study, "AGENT", agent)
    runs, out = tmp_path / "runs", tmp_path / "results"
    argv = [
        "pmnist_study.py", "--arms", *arms, "--seeds", "1", "--width", "8",
        "--num-tasks", "3", "--examples-per-task", "100",
        "--curvature-every-tasks", "1", "--plasticity-every-tasks", "1",
        "--metric-samples", "30", "--data-dir", str(data_dir),
        "--runs-dir", str(runs), "--records", str(tmp_path / "records"),
        "--out", str(out), "--name", "tiny",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    return study, runs, out, argv


def test_study_runs_every_method_skips_finished_runs_and_plots(
    tmp_path, fake_data_dir, monkeypatch, capsys
):
    study, runs, out, argv = tiny_study(
        tmp_path, fake_data_dir, monkeypatch, ["bp", "l2er"]
    )
    study.main()
    printed = capsys.readouterr().out
    assert "bp seed 1: ok" in printed and "l2er seed 1: ok" in printed, printed
    # Progress: what is left, by the per-run estimates (COST: bp 0.55, l2er 1.7 min;
    # two workers, so l2er's run alone sets it).
    assert "2 of 2 runs to do, ~2 min by the per-run estimates" in printed, printed
    # Runs are reported as they end, in either order: what is left is the other run.
    first_ended = re.search(r"^(bp|l2er) seed 1: ok .*1 runs left, (~\d+ min)[;\]]",
                            printed, re.M)  # fmt: skip
    assert first_ended, printed
    left_after = {"bp": "~2 min", "l2er": "~1 min"}  # the other run's 1.7 or 0.55 min
    assert first_ended[2] == left_after[first_ended[1]], printed
    assert "0 runs left, ~0 min" in printed, printed
    summary = json.loads((out / "tiny.json").read_text())
    assert set(summary) == {"bp", "l2er"}
    for entry in summary.values():
        assert entry["seeds"] == 1 and entry["tasks"] == 3
        assert 0 <= entry["accuracy_last_10"] <= 1
        assert entry["accuracy_last_10_per_seed"] == [entry["accuracy_last_10"]]
        assert entry["effective_rank_first"] > 0
    assert (out / "tiny.png").stat().st_size > 10_000
    table = (out / "tiny.md").read_text()
    assert "l2er" in table
    # The table names the clenv commit the runs were made at (their provenance).
    state = git_state()
    if state is not None:
        commit = state["commit"][:7] + (" dirty" if state["dirty"] else "")
        assert f"Code: clenv commits {commit} (2 runs). A resumed" in table, table

    # A second call finds both runs finished: nothing is rerun, the figure is redrawn.
    h5_files = sorted(runs.glob("*/*/metrics.h5"))
    assert len(h5_files) == 2
    stamps = [f.stat().st_mtime_ns for f in h5_files]
    study.main()
    assert sorted(runs.glob("*/*/metrics.h5")) == h5_files
    assert [f.stat().st_mtime_ns for f in h5_files] == stamps
    assert json.loads((out / "tiny.json").read_text()) == summary

    # Each ended run is recorded: its drawn series, in metrics.h5's layout.
    records = tmp_path / "records"
    assert sorted(p.name for p in records.iterdir()) == ["bp_seed1.h5", "l2er_seed1.h5"]

    # Arms are found by their label's folder, and a run made with other flags than
    # its arm's is refused: BP's run copied as "l2" is refused until its saved
    # command says --reg l2; then it shows up in its own column (weight
    # regularisers). An arm without runs is named as missing. Each run's metrics.h5
    # (or record) is read once for the figure and the table.
    arms = ["bp", "l2er", "l2", "mse=--reg bp --loss mse"]
    argv[argv.index("--arms") + 1 : argv.index("--seeds")] = arms
    monkeypatch.setattr(sys, "argv", [*argv, "--plot-only", "--name", "arms"])
    shutil.copytree(runs / "bp_seed1", runs / "l2_seed1")
    with pytest.raises(SystemExit, match=r"made with --reg bp, but this study's l2 "
                       r"seed 1 has --reg l2: give a study .*own --records"):  # fmt: skip
        study.main()
    assert not (records / "l2_seed1.h5").exists()
    shutil.rmtree(runs / "l2_seed1")
    copy_run(runs / "bp_seed1", runs / "l2_seed1", reg="l2")
    opened = []
    open_metrics = study.open_metrics
    monkeypatch.setattr(
        study, "open_metrics", lambda path: opened.append(path) or open_metrics(path)
    )
    capsys.readouterr()
    study.main()
    # bp's and l2er's records; l2's run, then the record made of it.
    assert len(opened) == len(set(opened)) == 4, opened
    assert (records / "l2_seed1.h5").exists()
    printed = capsys.readouterr().out
    assert f"1 of 4 arms not drawn:\n  no run in {runs} yet: mse\n" in printed
    arms_summary = json.loads((out / "arms.json").read_text())
    assert set(arms_summary) == {"bp", "l2er", "l2"}
    assert arms_summary["l2"] | {"flags": "--reg bp"} == summary["bp"]
    table = (out / "arms.md").read_text()
    assert "| l2 | `--reg l2` | 1 |" in table
    assert "No finished run yet (running or not started): mse." in table
    assert (out / "arms.png").stat().st_size > 10_000

    # With several seeds the table gives their range of last-10 accuracy: BP's run
    # copied as a second seed, so the range is that one value twice.
    copy_run(runs / "bp_seed1", runs / "bp_seed2", seed="2")
    argv[argv.index("--arms") + 1 : argv.index("--seeds") + 2] = [
        "bp",
        "--seeds",
        "1",
        "2",
    ]
    monkeypatch.setattr(sys, "argv", [*argv, "--plot-only", "--name", "seeds"])
    study.main()
    last = summary["bp"]["accuracy_last_10"]
    row = next(r for r in (out / "seeds.md").read_text().splitlines() if "| bp |" in r)
    assert (
        f"| 2 | {summary['bp']['accuracy_first_10']:.3f} | {last:.3f} ({last:.3f}-{last:.3f}) |"
        in row
    ), row

    # Without the runs directory, the records redraw the same figure and table, and
    # the study has nothing to rerun.
    shutil.rmtree(runs)
    argv[argv.index("--arms") + 1 : argv.index("--seeds") + 3] = [
        "bp", "l2er", "--seeds", "1",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [*argv, "--name", "records"])
    capsys.readouterr()
    study.main()
    assert "0 of 2 runs to do" in capsys.readouterr().out
    assert not runs.exists()
    assert json.loads((out / "records.json").read_text()) == summary
    # A record made with other settings than the study's is refused, not drawn.
    monkeypatch.setattr(sys, "argv", [*argv, "--plot-only", "--num-tasks", "4"])
    with pytest.raises(SystemExit, match=r"bp_seed1.h5 was made with --num-tasks 3, "
                       "but this study's bp seed 1 has --num-tasks 4"):  # fmt: skip
        study.main()


def test_plot_only_without_runs_says_so(tmp_path, monkeypatch):
    study = load_study(monkeypatch)
    argv = ["pmnist_study.py", "--plot-only", "--runs-dir", str(tmp_path / "none"),
            "--records", str(tmp_path / "none"), "--out", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(
        SystemExit, match="no record in .* and no finished run in .*--partial"
    ):
        study.main()
    assert not (tmp_path / "out").exists()  # no empty figure


def test_a_panel_spanning_more_than_two_decades_gets_a_log_axis(monkeypatch):
    study = load_study(monkeypatch)
    tasks = np.arange(3)

    def panel(*arms):
        return {f"arm{i}": (tasks, np.array(values)) for i, values in enumerate(arms)}

    # The ε-rank at ε = 0.1: bp's 0.003 against fourier's 0.98; a zero (Muon) is
    # not a decade.
    assert study.wide_range(panel([[0.017, 0.005, 0.003]], [[0.04, 0.5, 0.98]]))
    assert not study.wide_range(panel([[0.017, 0.0, 0.0]], [[0.02, 0.1, 0.9]]))
    # At ε = 1e-4 every arm stays near 0.99: linear.
    assert not study.wide_range(panel([[0.992, 0.995, 0.994]], [[0.974, 0.99, 1.0]]))
    assert not study.wide_range({})


def test_built_in_arms_cover_every_baseline_with_a_reg_and_a_colour(monkeypatch):
    study = load_study(monkeypatch)
    arms = study.arms_of(study.Args())  # the default: every built-in arm
    labels = [arm.label for arm in arms]
    # The study's first four arms keep their labels (their runs are found by them).
    assert {"bp", "l2", "l2er", "cbp"} <= set(labels)
    assert {"spectral", "spectral_target1", "layernorm_l2", "muon", "mse", "l2init",
            "inject", "crelu", "fourier", "nap", "parseval", "trac", "upgd",
            "layer_reset"} <= set(labels)  # fmt: skip
    flags = {arm.label: " ".join(arm.flags) for arm in arms}
    assert flags["layernorm_l2"] == "--reg l2 --norm layer"
    assert flags["muon"] == "--reg bp --optimizer muon"
    assert flags["crelu_half"] == "--reg bp --activation crelu --width 50"
    assert flags["fourier_l2"] == "--reg l2 --activation fourier"
    assert flags["spectral_target1"] == "--reg spectral --method-kwargs target=1.0"
    # SC's sweeps of its baselines (PMNIST configs): step size for bp_muon and bp_mse,
    # the L2 strength for laynorm_l2.
    for lr in ("1e-3", "1e-4"):
        assert (
            flags[f"muon_lr{lr}"] == f"--reg bp --optimizer muon --learning-rate {lr}"
        )
        assert flags[f"mse_lr{lr}"] == f"--reg bp --loss mse --learning-rate {lr}"
        assert flags[f"layernorm_l2_wd{lr}"] == (
            f"--reg l2 --norm layer --method-kwargs weight_decay={lr}"
        )
    assert flags["layer_reset"].endswith("layers=['layers.4','layers.6']")
    assert set(study.COST) == set(labels)  # every built-in arm has a measured cost
    for arm in arms:
        study.split_name(arm.reg)  # a --reg the methods registry knows
        assert arm.color is not None
    columns = study.columns_of(arms)
    assert [group for group, _ in columns] == [
        "weight regularisers", "normalisation and units", "optimizer and loss",
        "resets and injection",
    ]  # fmt: skip
    shown = [arm.label for _, column in columns for arm in column[2:]]
    assert sorted(shown) == sorted(set(labels) - {"bp", "l2er"})  # each arm once
    for _, column in columns:
        assert [arm.label for arm in column[:2]] == ["bp", "l2er"]
        colours = [arm.color for arm in column]
        assert len(set(colours)) == len(colours), column  # distinct within a panel


def test_arms_from_reg_names_and_label_flags(monkeypatch):
    study = load_study(monkeypatch)
    er, custom = study.arms_of(
        study.Args(
            arms=("er", "muon_lr3=--reg bp --optimizer muon --learning-rate 1e-3")
        )
    )
    assert (er.label, er.flags, er.group) == ("er", ("--reg", "er"), "other")
    assert custom.reg == "bp" and custom.label == "muon_lr3"
    assert custom.color is not None and custom.color != er.color
    for entry, message in [
        ("nope", "neither a built-in arm"),
        ("x=--optimizer muon", "sets no single --reg"),
        ("x=--reg bp --seed 3", r"\['--seed'\] are set by the study"),
        ("x=muon --reg bp", "comes before any flag"),
        ("a/b=--reg bp", "must be letters"),
        ("x=--reg bp --reg l2", "--reg given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            study.parse_arm(entry)
    # Cheapest arm first (measured costs), seeds together, arms without a cost last.
    args = study.Args(arms=("muon", "x=--reg bp --loss mse", "bp"), seeds=(1, 2))
    order = study.launch_order(args, study.arms_of(args))
    assert [(arm.label, seed) for arm, seed in order] == [
        ("bp", 1), ("bp", 2), ("muon", 1), ("muon", 2), ("x", 1), ("x", 2),
    ]  # fmt: skip
    # The time left it prints: runs' minutes over the workers, in hours from an hour.
    assert study.estimate({"a": 90, "b": 60}, study.Args(workers=1)) == "2.5 h"
    assert study.estimate({"a": 30, "b": 30}, study.Args(workers=2)) == "30 min"
    # One run left: the second worker idles, so the estimate is the run's own cost.
    assert study.estimate({"a": 28}, study.Args(workers=2)) == "28 min"
    assert study.estimate({"a": 90, "b": 10}, study.Args(workers=2)) == "1.5 h"
    # ... and at this machine's pace, once runs have ended at another than COST's.
    monkeypatch.setitem(study.COST, "a", 10)
    monkeypatch.setitem(study.COST, "b", 20)
    left, two = {"x": 60, "y": 60}, study.Args(workers=2)

    def note(*timings):
        return study.pace_note([(label, 1, s, code) for label, s, code in timings],
                               left, two)  # fmt: skip

    assert note() == ""  # nothing ended yet
    tripled = ("a", 600 * 3, 0)
    # A failed run tells nothing, nor one without an estimate.
    assert note(tripled, ("a", 5, 1), ("z", 60, 0)) == (
        "; ~3.0 h at this machine's pace (3.0x the estimates)"
    )
    # 40 min taken for 30 estimated: 1.3x.
    assert note(tripled, ("b", 600, 0)) == (
        "; ~1.3 h at this machine's pace (1.3x the estimates)"
    )
    # 0 s: recorded before, never ran; then 40.3 min for 50: within 20%.
    assert note(tripled, ("b", 600, 0), ("a", 0, 0), ("a", 0.1, 0), ("a", 10, 0)) == ""
    # --order costliest (a time-limited job): the reverse, arms without a cost first.
    args = dataclasses.replace(args, order="costliest")
    order = study.launch_order(args, study.arms_of(args))
    assert [(arm.label, seed) for arm, seed in order] == [
        ("x", 1), ("x", 2), ("muon", 1), ("muon", 2), ("bp", 1), ("bp", 2),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"names \['bp'\] more than once"):
        study.arms_of(study.Args(arms=("bp", "bp=--reg bp --loss mse")))


def test_each_run_is_recorded_and_reported_as_it_ends(monkeypatch, capsys):
    # bp starts first (cheapest) and takes longer than l2: l2 is reported (and its
    # record made, by ended_run) first, not after bp as in launch order.
    study = load_study(monkeypatch)

    def launch(args, arm, seed):
        time.sleep(0.5 if arm.label == "bp" else 0.0)
        return arm.label, seed, 1.0, 0

    ended = []
    monkeypatch.setattr(study, "launch", launch)
    monkeypatch.setattr(study, "finished", lambda *_: False)
    monkeypatch.setattr(
        study, "ended_run", lambda _, arm, seed: ended.append(arm.label)
    )
    monkeypatch.setattr(study, "check_arms", lambda *_: [])
    args = study.Args(arms=("bp", "l2"), seeds=(1,), workers=2)
    study.run_study(args, study.arms_of(args))
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed if " seed 1: ok" in line] == [
        "l2",
        "bp",
    ]
    assert ended == ["l2", "bp"]


def test_trial_of_keeps_the_plain_arms_runs_and_lets_an_arm_override(monkeypatch):
    study = load_study(monkeypatch)
    args = study.Args(runs_dir="runs/x", data_dir="/data")
    # A plain --reg arm: the very trial the study made before it had arms.
    trial, spec, sweep_dir = study.trial_of(args, study.ARMS["cbp"], 2)
    before = study.SweepSpec(
        name="pmnist_study", agent=str(study.AGENT), seeds=[2], regs=["cbp"], grid={},
        agent_args=study.agent_args(args), runs_dir="runs/x/cbp_seed2",
        workdir=spec.workdir,
    ).trials()[0]  # fmt: skip
    assert trial == before
    assert sweep_dir == Path(spec.workdir, "runs/x/cbp_seed2/sweeps/pmnist_study")
    # An arm with more flags: its own sweep name, its flags, its value replacing the
    # shared one.
    arm = study.parse_arm("muon_lr3=--reg bp --optimizer muon --learning-rate 1e-3")
    trial, spec, _ = study.trial_of(args, arm, 1)
    command = trial.command[2:]
    assert spec.runs_dir == "runs/x/muon_lr3_seed1"
    assert trial.exp_name == "pmnist_study-muon_lr3-bp"
    assert command.count("--learning-rate") == 1
    assert command[command.index("--learning-rate") + 1] == "1e-3"
    assert command[command.index("--optimizer") + 1] == "muon"
    assert command[command.index("--reg") + 1] == "bp"
    assert command[command.index("--data-dir") + 1] == "/data"


def test_check_only_runs_the_agents_checks_on_every_arm(
    tmp_path, fake_data_dir, monkeypatch, capsys
):
    study = load_study(monkeypatch)
    base = ["pmnist_study.py", "--check-only", "--data-dir", str(fake_data_dir),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [*base, "--arms", "bp", "layernorm_l2"])
    study.main()
    printed = capsys.readouterr().out
    assert "layernorm_l2: " in printed and "--norm layer" in printed
    assert "2 arms" in printed
    bad = "bad=--reg bp --activation tanh"
    monkeypatch.setattr(sys, "argv", [*base, "--arms", "bp", bad])
    with pytest.raises(SystemExit, match="arm bad .*--activation"):
        study.main()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_a_diverged_run_ends_its_arm_is_not_rerun_and_is_reported(
    tmp_path, fake_data_dir, monkeypatch, capsys
):
    # SGD with step size 1e4 overflows within the first task: the run stops there
    # (the agent's --on-divergence stop, the study's default) and the study reports it
    # as the arm's result instead of a failure to retry.
    study, runs, out, argv = tiny_study(
        tmp_path,
        fake_data_dir,
        monkeypatch,
        ["bp", "boom=--reg bp --learning-rate 1e4"],
    )
    study.main()
    printed = capsys.readouterr().out
    assert "bp seed 1: ok" in printed, printed
    assert "boom seed 1: diverged at task 0 (recorded)" in printed, printed
    (run_dir,) = (runs / "boom_seed1").glob("*/args.json")
    recorded = json.loads(run_dir.read_text())["diverged"]
    assert recorded["action"] == "stop" and recorded["task_id"] == 0
    summary = json.loads((out / "tiny.json").read_text())
    assert summary["bp"]["diverged_at_task"] == []
    # Diverged in task 0: no task finished, so the arm has nothing to draw.
    assert "boom" not in summary

    # Rerunning the study does not rerun the diverged run.
    stamp = run_dir.stat().st_mtime_ns
    study.main()
    printed = capsys.readouterr().out
    assert "0 of 2 runs to do" in printed and "2 ended already" in printed, printed
    assert "boom seed 1" not in printed  # only runs that ran are reported
    assert run_dir.stat().st_mtime_ns == stamp

    # A run that diverged after some tasks (BP's run, its args.json saying it was
    # started for 5 tasks and diverged in task 3): drawn up to task 2 and reported.
    copy_run(runs / "bp_seed1", runs / "late_seed1", num_tasks="5")
    (late,) = (runs / "late_seed1").glob("*/metrics.h5")
    with h5py.File(late, "r+") as f:
        saved = json.loads(f.attrs["args_json"])
        saved |= {"diverged": {"task_id": 3, "action": "stop"}}
        f.attrs["args_json"] = json.dumps(saved)
    argv[argv.index("--arms") + 1 : argv.index("--seeds")] = ["late=--reg bp"]
    monkeypatch.setattr(sys, "argv", [*argv, "--plot-only", "--num-tasks", "5"])
    study.main()
    late_summary = json.loads((out / "tiny.json").read_text())["late"]
    assert late_summary["diverged_at_task"] == [3] and late_summary["tasks"] == 3
    row = next(r for r in (out / "tiny.md").read_text().splitlines() if "| late |" in r)
    assert "(tasks 0-2)" in row and row.endswith("| 3 |"), row
