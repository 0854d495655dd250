"""agents/supervised_l2er.py: smoke runs on small files in the real data formats,
the logged series, the fast path's equality with the autograd loop, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from clenv.logger import list_series, read_series

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agents" / "supervised_l2er.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

# Runs the agent in a subprocess on the fixture files: their md5s are registered
# first (the loaders reject files whose md5 they do not know), then one run per
# argument list, each in its own runs directory.
DRIVER = textwrap.dedent(
    """
    import json, runpy, sys, traceback
    from pathlib import Path
    from clenv.data import cifar100, mnist
    from clenv.data.files import FileSpec, md5sum
    agent, root, runs, configs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    for key, spec in mnist.FILES.items():
        path = root / "mnist" / spec.filename
        if path.is_file():
            mnist.FILES[key] = FileSpec(spec.filename, md5sum(path))
    tarball = root / "cifar100" / cifar100.TARBALL.filename
    if tarball.is_file():
        cifar100.TARBALL = FileSpec(tarball.name, md5sum(tarball))
    results = {}
    for name, argv in json.loads(configs).items():
        sys.argv = [agent, *argv, "--runs-dir", f"{runs}/{name}", "--data-dir", str(root)]
        try:
            runpy.run_path(agent, run_name="__main__")
            results[name] = "ok"
        except SystemExit as exit:
            results[name] = "ok" if exit.code in (None, 0) else f"exit {exit.code}"
        except Exception:
            results[name] = traceback.format_exc()
    print("RESULTS " + json.dumps(results))
    """
)

# Permuted MNIST on the 120-image fixture: 3 tasks of 40 examples in chunks of 20,
# every metric at a cheap setting.
PMNIST = [
    "--width", "16", "--num-tasks", "3", "--examples-per-task", "40", "--chunk", "20",
    "--log-every", "20", "--metric-samples", "30", "--curvature-every-tasks", "2",
    "--curvature-order", "5", "--no-progress",
]  # fmt: skip
IMAGENET = [
    "--env-id", "clenv/ContinualImageNet-v0", "--num-tasks", "2", "--epochs-per-task",
    "1", "--batch-size", "5",
    "--env-kwargs", "num_classes=6", "train_images_per_class=10",
    "test_images_per_class=4",
    "--metric-samples", "10", "--curvature-every-tasks", "1", "--curvature-order", "4",
    "--no-progress",
]  # fmt: skip
CIFAR = [
    "--env-id", "clenv/IncrementalCIFAR100-v0", "--num-tasks", "2", "--epochs-per-task",
    "2", "--batch-size", "10", "--env-kwargs", "train_images_per_class=5",
    "--resnet-channels", "4",
    "--metric-samples", "10", "--curvature-every-tasks", "0", "--no-progress",
]  # fmt: skip
RESUME = [
    "--width", "32", "--num-tasks", "10", "--examples-per-task", "120", "--chunk",
    "20", "--reg", "cbp+l2", "--method-kwargs", "replacement_rate=0.01",
    "--fast-path", "off",
    "--checkpoint-every-tasks", "2", "--curvature-every-tasks", "3",
    "--curvature-order", "5", "--metric-samples", "40", "--log-every", "100",
    "--no-progress",
]  # fmt: skip
CONFIGS = {
    "resume_whole": RESUME,
    "pmnist_bp": [*PMNIST, "--reg", "bp"],
    "pmnist_l2er": [*PMNIST, "--reg", "l2er", "--method-kwargs", "er__interval=7"],
    "pmnist_cbp": [
        *PMNIST,
        "--reg",
        "cbp",
        "--method-kwargs",
        "replacement_rate=0.05",
        "maturity_threshold=5",
    ],  # fmt: skip
    "pmnist_snp_autograd": [*PMNIST, "--reg", "snp"],
    "pmnist_bp_autograd": [*PMNIST, "--reg", "bp", "--fast-path", "off"],
    "pmnist_minibatch": [*PMNIST, "--reg", "l2", "--batch-size", "10"],
    "imagenet_l2er": [*IMAGENET, "--reg", "l2er"],
    "imagenet_lop_cbp": [*IMAGENET, "--reg", "cbp", "--protocol", "lop"],
    "cifar_sc_l2er": [*CIFAR, "--reg", "l2er"],
    "cifar_lop_bp": [
        *CIFAR,
        "--reg",
        "bp",
        "--protocol",
        "lop",
        "--lr-milestones",
        "1",
    ],  # fmt: skip
}


def run_driver(data_root: Path, runs: Path, configs: dict[str, list[str]]):
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(AGENT), str(data_root), str(runs),
         json.dumps(configs)],
        env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS ") :]), result


def only_run(runs_dir: Path) -> Path:
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir


def series(run_dir: Path, tag: str) -> dict[str, np.ndarray]:
    return read_series(run_dir / "metrics.h5", tag)


@pytest.fixture(scope="module")
def smoke_runs(fake_data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("supervised_runs")
    results, _ = run_driver(fake_data_dir, runs, CONFIGS)
    return runs, results


@pytest.mark.parametrize("name", list(CONFIGS))
def test_smoke_run_finishes(smoke_runs, name):
    _, results = smoke_runs
    assert results[name] == "ok", results[name]


def test_pmnist_logs_every_series_per_task(smoke_runs):
    runs, _ = smoke_runs
    run_dir = only_run(runs / "pmnist_l2er")
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        tags = set(list_series(f))
        assert f.attrs["agent"] == "supervised" and f.attrs["reg"] == "l2er"
    online = series(run_dir, "cl/online_accuracy_per_task")
    assert online["task_id"].tolist() == [0, 1, 2]
    assert online["step"].tolist() == [40, 80, 120]  # examples at each task end
    assert np.all((online["value"] >= 0) & (online["value"] <= 1))
    for layer in range(3):
        for metric in ("effective_rank", "dead_units", "dormant_units"):
            assert f"plasticity/layer{layer}/{metric}" in tags
    # Curvature at the start and end of tasks 0 and 2 (every 2nd task).
    for when in ("task_start", "task_end"):
        for key in ("epsilon_rank/0.01", "top_eigenvalue", "kfac_rank",
                    "dead_unit_rank_bound"):  # fmt: skip
            logged = series(run_dir, f"curvature/{when}/{key}")
            assert logged["task_id"].tolist() == [0, 2], key
        density = series(run_dir, f"curvature/{when}/spectral_density")
        with h5py.File(run_dir / "metrics.h5", "r") as f:
            grid = f[f"curvature/{when}/spectral_density"].attrs["grid"]
        # The stored density integrates to one on its grid (trapezoid weights).
        widths = np.zeros_like(grid)
        widths[:-1] += np.diff(grid) / 2
        widths[1:] += np.diff(grid) / 2
        assert np.allclose(density["value"] @ widths, 1.0, atol=1e-6)
    assert list(run_dir.glob("events.out.tfevents.*"))
    args = json.loads((run_dir / "args.json").read_text())
    assert args["fast_path_used"] is True and args["learning_rate"] == 0.01


def test_fast_path_logs_the_same_run_as_the_autograd_loop(smoke_runs):
    runs, _ = smoke_runs
    fast = series(only_run(runs / "pmnist_bp"), "cl/online_accuracy_per_task")
    slow = series(only_run(runs / "pmnist_bp_autograd"), "cl/online_accuracy_per_task")
    # float32 summation order may flip a near-tie argmax: allow one example per task.
    assert np.abs(fast["value"] - slow["value"]).max() <= 1 / 40 + 1e-12
    loss_fast = series(only_run(runs / "pmnist_bp"), "losses/train_loss_per_task")
    loss_slow = series(
        only_run(runs / "pmnist_bp_autograd"), "losses/train_loss_per_task"
    )
    assert np.allclose(loss_fast["value"], loss_slow["value"], rtol=1e-3)
    args = json.loads(
        (only_run(runs / "pmnist_snp_autograd") / "args.json").read_text()
    )
    assert args["fast_path_used"] is False  # S&P runs on the autograd path


def test_image_benchmarks_log_test_accuracy(smoke_runs):
    runs, _ = smoke_runs
    for name, tasks in (("imagenet_l2er", [0, 1]), ("cifar_sc_l2er", [0, 1])):
        run_dir = only_run(runs / name)
        test = series(run_dir, "eval/test_accuracy_per_task")
        assert test["task_id"].tolist() == tasks
        assert np.all((test["value"] >= 0) & (test["value"] <= 1))
    imagenet = only_run(runs / "imagenet_l2er")
    assert "curvature/task_end/kfac_rank" in list_series(
        h5py.File(imagenet / "metrics.h5", "r")
    )
    # SC's CIFAR net ranks its two extra FC layers.
    cifar = only_run(runs / "cifar_sc_l2er")
    assert series(cifar, "plasticity/layer1/units")["value"][0] == 512
    lop = only_run(runs / "cifar_lop_bp")
    validation = series(lop, "eval/validation_accuracy")
    assert len(validation["value"]) == 4  # 2 tasks x 2 epochs
    args = json.loads((lop / "args.json").read_text())
    assert args["augment"] and args["restore_best_validation"] and args["extra_fc"] == 0


def test_bad_arguments_exit_with_a_message(tmp_path):
    cases = {
        ("--env-id", "CartPole-v1"): "--env-id must be one of",
        ("--examples-per-task", "50", "--chunk", "20"): "must be a multiple of",
        ("--reg", "nope"): "unknown method",
        ("--reg", "snp", "--fast-path", "on"): "--fast-path on needs",
    }
    for argv, message in cases.items():
        result = subprocess.run(
            [sys.executable, str(AGENT), *argv, "--runs-dir", str(tmp_path),
             "--data-dir", str(tmp_path / "nothing")],
            env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode != 0
        assert message in result.stderr, (argv, result.stderr[-1500:])
    missing = subprocess.run(
        [sys.executable, str(AGENT), "--runs-dir", str(tmp_path),
         "--data-dir", str(tmp_path / "nothing"), "--no-progress"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode != 0 and "mnist" in missing.stderr.lower()
    assert "Traceback" not in missing.stderr


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(
    smoke_runs, fake_data_dir, tmp_path
):
    runs, results = smoke_runs
    assert results["resume_whole"] == "ok", results["resume_whole"]
    killed_runs = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(AGENT), str(fake_data_dir),
         str(killed_runs), json.dumps({"run": RESUME})],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    checkpoints: list[Path] = []
    while time.time() < deadline and process.poll() is None:
        checkpoints = list(killed_runs.glob("run/*/checkpoints/*.pt"))
        if checkpoints:
            break
        time.sleep(0.005)
    if process.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = only_run(killed_runs / "run")
    resumed, _ = run_driver(
        fake_data_dir, tmp_path / "unused", {"resume": ["--resume", str(run_dir)]}
    )
    assert resumed["resume"] == "ok", resumed["resume"]
    reference = only_run(runs / "resume_whole")
    for tag in ("cl/online_accuracy_per_task", "losses/train_loss_per_task",
                "plasticity/layer1/effective_rank",
                "curvature/task_end/top_eigenvalue", "cl/online_accuracy"):  # fmt: skip
        expected, got = series(reference, tag), series(run_dir, tag)
        assert got["step"].tolist() == expected["step"].tolist(), tag  # no gap/dupe
        assert np.allclose(got["value"], expected["value"], rtol=1e-5), tag


def load_agent_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("supervised_l2er", AGENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def test_stored_density_keeps_the_mass_of_every_ritz_value():
    """Closed form: a mixture of Gaussians of width sqrt(1e-5) at -2 and 3 (weights
    1:3) puts mass 0.25 below zero and 0.75 above, however coarse the grid."""
    agent = load_agent_module()
    grid = agent.DENSITY_GRID
    density = agent.density_on_grid(
        np.array([-2.0, 3.0]), np.array([0.5, 1.5]), grid, 1e-5
    )
    widths = np.zeros_like(grid)
    widths[:-1] += np.diff(grid) / 2
    widths[1:] += np.diff(grid) / 2
    mass = density * widths
    assert mass.sum() == pytest.approx(1.0, abs=1e-12)
    assert mass[grid < 0].sum() == pytest.approx(0.25, abs=1e-9)
    # Each peak sits in the bin of the grid point nearest to it.
    assert mass[np.argmin(np.abs(grid - 3.0))] == pytest.approx(0.75, abs=1e-6)
    # Ritz values at zero (the collapsed spectrum SC describes): the mass inside
    # |lambda| <= 0.01 is the Gaussian's within 0.01 / sqrt(1e-5) = 3.16 sigma (0.9984),
    # plus what the bin reaching just past 0.01 holds.
    at_zero = agent.density_on_grid(np.zeros(3), np.ones(3), grid, 1e-5) * widths
    assert 0.9984 <= at_zero[np.abs(grid) <= 0.01].sum() <= 0.9995
