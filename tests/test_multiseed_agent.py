"""agents/supervised_l2er.py --num-seeds N: N seeds trained in lockstep on one
clenv.fastpath.BatchedMLPTrainer write exactly what N separate runs write (metrics.h5
and checkpoints), resume as a group from any member's directory, and refuse the
configurations the batched fast path cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_supervised_agent import AGENT, ENV, PMNIST, run_driver

from clenv.checkpoint import list_checkpoints

# Every task's checkpoint kept; a method whose draws come from its own generator
# (CBP), one whose task-switch reset draws from torch's global generator and one
# (layer_reset) from its own.
GROUP = [*PMNIST, "--checkpoint-every-tasks", "1", "--keep-checkpoints", "100",
         "--seed", "3"]  # fmt: skip
METHODS = {
    "cbp_l2er": ["--reg", "cbp+l2er", "--method-kwargs", "replacement_rate=0.05",
                 "maturity_threshold=5", "er__interval=7"],
    "reset_l2": ["--reg", "reset+l2"],
    # A layer reset with SC's MSE loss (both on the fast path since 2026-12-07).
    "layer_reset_mse": ["--reg", "layer_reset", "--loss", "mse"],
}  # fmt: skip
# Wall-clock series differ between any two runs.
TIMED = ("charts/examples_per_second", "/seconds")


def runs_by_seed(runs_dir: Path) -> dict[int, Path]:
    return {int(p.name.split("__")[2]): p for p in runs_dir.iterdir() if p.is_dir()}


def h5_datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                found.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return {k: v for k, v in found.items() if not any(t in k for t in TIMED)}


def assert_same_tree(a, b, path=""):
    """Nested checkpoint contents equal, tensors bit for bit."""
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for key in a:
            assert_same_tree(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{path}[{index}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b, path


def assert_same_run(group_run: Path, separate_run: Path) -> None:
    expected = h5_datasets(separate_run / "metrics.h5")
    got = h5_datasets(group_run / "metrics.h5")
    assert set(got) == set(expected)
    assert any(k.startswith("plasticity/") for k in got)
    for key, value in expected.items():
        assert np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f"), key
    mine = list_checkpoints(group_run / "checkpoints")
    theirs = list_checkpoints(separate_run / "checkpoints")
    assert [s for s, _ in mine] == [s for s, _ in theirs] == [40, 80, 120]
    for (_, a), (_, b) in zip(mine, theirs, strict=True):
        a, b = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
        for part in ("objects", "rng", "extra", "finished"):
            assert_same_tree(a[part], b[part], part)


@pytest.fixture(scope="module")
def group_and_separate_runs(fake_data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("multiseed")
    configs = {}
    for name, method in METHODS.items():
        configs[f"{name}_group"] = [*GROUP, *method, "--num-seeds", "3"]
        for seed in (3, 4, 5):
            configs[f"{name}_seed{seed}"] = [*GROUP, *method, "--seed", str(seed)]
    configs["resumed_group"] = [*GROUP, *METHODS["cbp_l2er"], "--num-seeds", "3"]
    results, _ = run_driver(fake_data_dir, runs, configs)
    return runs, results


@pytest.mark.parametrize("name", list(METHODS))
def test_num_seeds_equals_separate_runs(group_and_separate_runs, name):
    """Each seed's run directory of --num-seeds 3 holds exactly what its own run
    writes: every metrics.h5 series and every checkpoint (weights, optimizer,
    method and trainer state, the env's stream, the global RNG states)."""
    runs, results = group_and_separate_runs
    assert all(r == "ok" for r in results.values()), results
    group = runs_by_seed(runs / f"{name}_group")
    assert sorted(group) == [3, 4, 5]
    for seed, run_dir in group.items():
        (separate,) = runs_by_seed(runs / f"{name}_seed{seed}").values()
        assert_same_run(run_dir, separate)
        saved = json.loads((run_dir / "args.json").read_text())
        assert saved["seed"] == seed and saved["num_seeds"] == 3
        assert saved["seed_group"] == [str(group[s]) for s in (3, 4, 5)]


def test_resume_of_any_member_resumes_the_group(group_and_separate_runs, fake_data_dir):
    """A group killed after its task-1 checkpoints (the later ones deleted) and
    resumed with --resume of its second seed's directory continues every seed bit
    for bit; members at different steps are refused with the fix."""
    runs, results = group_and_separate_runs
    assert results["resumed_group"] == "ok", results["resumed_group"]
    whole = runs_by_seed(runs / "cbp_l2er_group")
    group = runs_by_seed(runs / "resumed_group")
    for run_dir in group.values():
        for step, path in list_checkpoints(run_dir / "checkpoints"):
            if step > 40:
                path.unlink()
    latest = list_checkpoints(group[5] / "checkpoints")[-1][1]
    moved = latest.with_suffix(".kept")
    latest.rename(moved)  # seed 5 now resumes from step 0: out of step
    resumed, result = run_driver(
        fake_data_dir, runs / "unused", {"resume": ["--resume", str(group[4])]}
    )
    assert "are at different checkpoints" in resumed["resume"], resumed["resume"]
    assert "delete the newer checkpoints" in resumed["resume"]
    moved.rename(latest)
    resumed, result = run_driver(
        fake_data_dir, runs / "unused", {"resume": ["--resume", str(group[4])]}
    )
    assert resumed["resume"] == "ok", resumed["resume"] + result.stderr[-2000:]
    for seed in (3, 4, 5):
        assert_same_run(group[seed], whole[seed])


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--env-id", "clenv/ContinualImageNet-v0"], "here: --env-id clenv/Continual"),
        (["--fast-path", "off"], "here: --fast-path off"),
        (["--optimizer", "adam"], "here: --optimizer adam (plain SGD only)"),
        (["--batch-size", "10"], "here: batch size 10 (batch 1 only)"),
        (["--reg", "snp"], "here: the lockstep fast path cannot run 'snp'"),
        # One seed runs these on the fast path; the lockstep trainer does not.
        (["--reg", "l2init"], "here: the lockstep fast path cannot run 'l2init'"),
        (["--reg", "l2+layernorm"], "here: --norm layer (the lockstep trainer"),
        (["--activation", "crelu"], "here: --activation crelu (the lockstep trainer"),
    ],
)
def test_num_seeds_refuses_what_the_batched_fast_path_cannot_run(
    tmp_path, argv, reason
):
    result = subprocess.run(
        [sys.executable, str(AGENT), "--num-seeds", "2", *argv, "--no-progress",
         "--runs-dir", str(tmp_path), "--data-dir", str(tmp_path / "nothing")],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-1500:]
    assert "--num-seeds 2 trains the seeds together on the batch-1 fast path" in (
        result.stderr
    )
    assert reason in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.glob("clenv_*"))  # no run directory was started


# The fast path's second single-seed kernel trainer (seed 4 of 3, 4, 5) gets a NaN
# weight after its third chunk.
INJECT_NAN = """
import torch
from clenv.fastpath import trainer as _trainer
_init, _train, _made = _trainer.FastMLPTrainer.__init__, _trainer.FastMLPTrainer.train, []
def _spy_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _made.append(self)
    self.calls = 0
def _nan_train(self, *args, **kwargs):
    out = _train(self, *args, **kwargs)
    self.calls += 1
    if len(_made) > 1 and self is _made[1] and self.calls == 3:
        with torch.no_grad():
            self.layers[0].weight[0, 0] = float("nan")
    return out
_trainer.FastMLPTrainer.__init__, _trainer.FastMLPTrainer.train = _spy_init, _nan_train
"""


def test_a_diverged_seed_drops_out_and_the_others_finish_as_alone(
    group_and_separate_runs, fake_data_dir, tmp_path
):
    """Seed 4 diverges in task 1: its run records it and ends; seeds 3 and 5 go on
    without it (a regrouped trainer) and still equal their own runs; the group exits
    1 with seed 4's message (--on-divergence fail)."""
    runs, _ = group_and_separate_runs
    argv = [*GROUP, *METHODS["cbp_l2er"], "--num-seeds", "3",
            "--divergence-check-every", "1"]  # fmt: skip
    outcomes, _ = run_driver(fake_data_dir, tmp_path, {"run": argv}, prelude=INJECT_NAN)
    outcome = outcomes["run"]
    assert outcome.startswith("exit error: training diverged: non-finite parameter "
                              "'layers.0.weight' (nan) at example 60"), outcome  # fmt: skip
    group = runs_by_seed(tmp_path / "run")
    diverged = json.loads((group[4] / "args.json").read_text())["diverged"]
    assert diverged["tensor"] == "layers.0.weight" and diverged["step"] == 60
    for seed in (3, 5):
        (alone,) = runs_by_seed(runs / f"cbp_l2er_seed{seed}").values()
        assert_same_run(group[seed], alone)


@pytest.mark.slow  # ~25 s: two groups of 8 tasks and a resume
def test_sigkill_and_resume_of_the_group_reproduce_it(fake_data_dir, tmp_path):
    """A group killed with SIGKILL mid-run and resumed (--resume of its last seed's
    directory) logs every series as the uninterrupted group; a kill between two
    members' saves leaves them at different checkpoints, which the resume refuses
    until the newer ones are deleted."""
    import signal
    import time

    from test_supervised_agent import DRIVER

    argv = [*PMNIST, "--reg", "l2er", "--num-tasks", "8", "--num-seeds", "3",
            "--checkpoint-every-tasks", "1", "--curvature-every-tasks", "3"]  # fmt: skip
    whole, _ = run_driver(fake_data_dir, tmp_path / "whole", {"run": argv})
    assert whole["run"] == "ok", whole["run"]
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(AGENT), str(fake_data_dir),
         str(tmp_path / "killed"), json.dumps({"run": argv})],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if len(list((tmp_path / "killed").glob("run/*/checkpoints/*.pt"))) >= 3:
            break
        time.sleep(0.005)
    if process.poll() is not None:
        pytest.skip("the group finished before it could be killed (machine too fast)")
    process.send_signal(signal.SIGKILL)
    process.wait()
    group = runs_by_seed(tmp_path / "killed" / "run")
    latest = {s: list_checkpoints(d / "checkpoints") for s, d in group.items()}
    oldest = min(c[-1][0] if c else 0 for c in latest.values())
    if any((c[-1][0] if c else 0) != oldest for c in latest.values()):
        refused, _ = run_driver(
            fake_data_dir, tmp_path / "unused", {"r": ["--resume", str(group[3])]}
        )
        assert "are at different checkpoints" in refused["r"], refused["r"]
        for checkpoints in latest.values():
            for step, path in checkpoints:
                if step > oldest:
                    path.unlink()
    resumed, result = run_driver(
        fake_data_dir, tmp_path / "unused", {"r": ["--resume", str(group[3])]}
    )
    assert resumed["r"] == "ok", resumed["r"] + result.stderr[-2000:]
    reference = runs_by_seed(tmp_path / "whole" / "run")
    for seed in (1, 2, 3):
        expected = h5_datasets(reference[seed] / "metrics.h5")
        got = h5_datasets(group[seed] / "metrics.h5")
        assert set(got) == set(expected)
        for key, value in expected.items():
            same = np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f")
            assert same, (seed, key)
