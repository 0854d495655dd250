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
from conftest import load_agent_module

from clenv.logger import list_series, read_series
from clenv.metrics import DENSITY_GRID

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
        # A resume keeps its run directory (--runs-dir would be refused).
        where = [] if "--resume" in argv else ["--runs-dir", f"{runs}/{name}"]
        sys.argv = [agent, *argv, *where, "--data-dir", str(root)]
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
    # Issue 14's options and methods (autograd, but for layer_reset, a task-switch
    # reset, and --loss mse, which the fast path runs).
    "pmnist_layernorm_l2": [*PMNIST, "--reg", "l2+layernorm"],
    "pmnist_crelu": [*PMNIST, "--reg", "bp", "--activation", "crelu"],
    "pmnist_fourier": [*PMNIST, "--reg", "bp", "--activation", "fourier"],
    "pmnist_adam": [
        *PMNIST,
        "--reg",
        "bp",
        "--optimizer",
        "adam",
        "--learning-rate",
        "1e-3",
    ],
    "pmnist_muon": [*PMNIST, "--reg", "bp", "--optimizer", "muon"],
    "pmnist_trac": [*PMNIST, "--reg", "bp", "--optimizer", "trac"],
    "pmnist_mse": [*PMNIST, "--reg", "bp", "--loss", "mse"],
    "pmnist_spectral_l2": [*PMNIST, "--reg", "spectral+l2"],
    "pmnist_parseval": [*PMNIST, "--reg", "parseval"],
    "pmnist_l2init": [*PMNIST, "--reg", "l2init"],
    "pmnist_upgd": [*PMNIST, "--reg", "upgd"],
    "pmnist_nap": [*PMNIST, "--reg", "nap", "--norm", "layer"],
    "pmnist_layer_reset": [*PMNIST, "--reg", "layer_reset"],
    "pmnist_inject": [*PMNIST, "--reg", "inject"],
    "pmnist_partial_spectra": [*PMNIST, "--reg", "bp", "--partial-spectra"],
    "imagenet_layernorm_crelu": [
        *IMAGENET,
        "--reg",
        "l2+layernorm",
        "--activation",
        "crelu",
    ],
    "cifar_mse_adam": [
        *CIFAR,
        "--reg",
        "bp",
        "--loss",
        "mse",
        "--optimizer",
        "adam",
        "--learning-rate",
        "1e-3",
    ],
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


def run_driver(
    data_root: Path, runs: Path, configs: dict[str, list[str]], prelude: str = ""
):
    """Run each config with DRIVER in one subprocess (``prelude``: code run before
    it, e.g. INJECT_NAN); returns ``({name: outcome}, completed process)``."""
    result = subprocess.run(
        [sys.executable, "-c", prelude + DRIVER, str(AGENT), str(data_root), str(runs),
         json.dumps(configs)],
        env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert len(lines) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[0][len("RESULTS ") :]), result


def only_run(runs_dir: Path) -> Path:
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir


def series(run_dir: Path, tag: str) -> dict[str, np.ndarray]:
    return read_series(run_dir / "metrics.h5", tag)


@pytest.fixture(scope="module")
def smoke_runs(fake_data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("supervised_runs")
    results, result = run_driver(fake_data_dir, runs, CONFIGS)
    (runs / "stdout.txt").write_text(result.stdout)
    return runs, results


def run_output(runs: Path, name: str) -> str:
    """What the agent printed in the smoke run ``name`` (from its run directory line
    to the next run's)."""
    text = (runs / "stdout.txt").read_text()
    return text.split(f"run directory: {runs}/{name}/")[1].split("run directory:")[0]


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
        for key in ("epsilon_rank/0.01", "epsilon_rank_trapezoid/0.01",
                    "top_eigenvalue", "kfac_rank", "dead_unit_rank_bound",
                    "smoothing_variance"):  # fmt: skip
            logged = series(run_dir, f"curvature/{when}/{key}")
            assert logged["task_id"].tolist() == [0, 2], key
        density = series(run_dir, f"curvature/{when}/spectral_density")
        with h5py.File(run_dir / "metrics.h5", "r") as f:
            grid = f[f"curvature/{when}/spectral_density"].attrs["grid"]
        assert np.array_equal(grid, DENSITY_GRID)  # the one grid of every agent
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
        ("--momentum", "0.9", "--fast-path", "on"): "here: momentum 0.9",
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


def test_use_fast_path_follows_fast_path_supports_and_the_flag():
    """auto trains on the fast path exactly where clenv.fastpath.fast_path_supports
    says it computes the same run; on refuses the rest with its reason; off never."""
    import torch

    from clenv.methods import make_method
    from clenv.supervised_args import use_fast_path

    agent = load_agent_module(AGENT)

    def decide(fast_path, **options):
        args = agent.resolve_args(agent.Args(width=16, fast_path=fast_path, **options))
        model = agent.make_model(args)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=args.learning_rate, momentum=args.momentum
        )
        method = make_method(args.reg, model, optimizer, preset=args.method_preset)
        return use_fast_path(args, model, optimizer, method)

    assert decide("auto", reg="l2er") and decide("on", reg="cbp")
    assert not decide("off", reg="l2er")
    assert not decide("auto", reg="snp") and not decide("auto", momentum=0.9)
    assert not decide("auto", env_id="clenv/ContinualImageNet-v0", reg="bp")
    # LayerNorm runs on it, except with CBP (whose replacements the kernel makes).
    assert decide("auto", reg="l2", norm="layer") and decide("auto", reg="l2+layernorm")
    assert decide("auto", reg="l2", activation="crelu")
    assert not decide("auto", reg="bp", activation="fourier")
    with pytest.raises(ValueError, match="CBP on ReLU MLPs without LayerNorm"):
        decide("on", reg="cbp", norm="layer")
    with pytest.raises(ValueError, match="here: batch size 4 \\(batch 1 only\\)"):
        decide("on", batch_size=4)
    with pytest.raises(ValueError, match="cannot run 'redo' exactly"):
        decide("on", reg="redo")


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


ROW_BENCHMARKS = {
    "clenv/PermutedMNIST-v0": "permuted_mnist",
    "clenv/ContinualImageNet-v0": "continual_imagenet",
    "clenv/IncrementalCIFAR100-v0": "incremental_cifar",
}


@pytest.mark.parametrize("env_id", list(ROW_BENCHMARKS))
@pytest.mark.parametrize("protocol", ["sc", "lop"])
@pytest.mark.parametrize("reg", ["bp", "l2", "l2er", "cbp"])
def test_protocol_rows_fill_unset_options(env_id, protocol, reg):
    """Every agent row of clenv.settings lands in the resolved Args (a row tuned per
    method only with its components), an option set on the command line wins, and
    the env and model rows reach gym.make and the model."""
    from clenv.methods import split_name
    from clenv.settings import protocol_defaults, rows

    agent = load_agent_module(AGENT)
    benchmark = ROW_BENCHMARKS[env_id]
    args = agent.resolve_args(agent.Args(env_id=env_id, protocol=protocol, reg=reg))
    expected = protocol_defaults(benchmark, protocol, components=split_name(reg))
    assert expected  # the table has rows for this benchmark and paper
    for name, value in expected.items():
        assert getattr(args, name) == value, (name, getattr(args, name), value)
    for row in rows(benchmark):
        if row.kind == "agent" and row.value(protocol) is None:
            assert getattr(args, row.name) is not None, row.name  # from UNSET
    assert args.method_preset.endswith("_lop") == (protocol == "lop")
    env_rows = protocol_defaults(benchmark, protocol, "env")
    assert env_rows.items() <= agent.env_kwargs_for(args).items()
    chosen = agent.resolve_args(
        agent.Args(env_id=env_id, protocol=protocol, reg=reg, learning_rate=0.123)
    )
    assert chosen.learning_rate == 0.123


def test_protocol_values_read_from_the_official_code():
    """Spot checks of values that differ by paper or by method (docs/protocols.md)."""
    agent = load_agent_module(AGENT)

    def resolved(env_id, protocol, reg):
        return agent.resolve_args(agent.Args(env_id=env_id, protocol=protocol, reg=reg))

    imagenet, cifar, pmnist = (
        "clenv/ContinualImageNet-v0",
        "clenv/IncrementalCIFAR100-v0",
        "clenv/PermutedMNIST-v0",
    )
    assert resolved(imagenet, "sc", "bp").learning_rate == 1e-3
    assert resolved(imagenet, "sc", "l2er").learning_rate == 1e-4  # SC's L2-ER grid
    assert resolved(imagenet, "sc", "l2").learning_rate == 1e-3
    assert resolved(imagenet, "lop", "l2").learning_rate == 0.03  # LoP's cfg/l2.json
    assert resolved(imagenet, "lop", "cbp").learning_rate == 0.01
    assert resolved(imagenet, "lop", "bp").zero_head_on_switch is True
    assert resolved(imagenet, "sc", "bp").zero_head_on_switch is False
    sc_cifar = resolved(cifar, "sc", "l2er")
    assert (sc_cifar.curvature_order, sc_cifar.curvature_every_tasks) == (16, 1)
    assert (sc_cifar.curvature_classes, sc_cifar.curvature_batchnorm) == (
        "new",
        "train",
    )
    lop_cifar = resolved(cifar, "lop", "bp")
    assert lop_cifar.lr_milestones == (60, 120, 160) and lop_cifar.batch_size == 90
    assert lop_cifar.curvature_batchnorm == "eval" and lop_cifar.curvature_order == 100
    assert resolved(pmnist, "lop", "bp").width == 2000
    assert resolved(pmnist, "sc", "bp").width == 1000


def test_help_says_where_protocol_defaults_come_from():
    from clenv.settings import rows

    result = subprocess.run(
        [sys.executable, str(AGENT), "--help"],
        env={**ENV, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [" ".join(line.strip("│ ").split()) for line in result.stdout.splitlines()]
    options = {
        row.option
        for benchmark in ROW_BENCHMARKS.values()
        for row in rows(benchmark)
        if row.kind == "agent"
    }
    for option in options:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(option + " ")]
        block = " ".join(lines[index : index + 4])
        assert "(default: from --protocol; docs/protocols.md)" in block, option


# Runs the agent with spies on the ER ascent, the training steps and the curvature
# report; prints the events as JSON.
SPY_DRIVER = textwrap.dedent(
    """
    import json, runpy, sys
    import torch
    import clenv.metrics
    from clenv.methods.effective_rank import EffectiveRankAscent
    from clenv.methods.resets import _TaskSwitchReset
    agent, argv = sys.argv[1], json.loads(sys.argv[2])
    events = []
    ascend, after_step, report = (EffectiveRankAscent.ascend,
        EffectiveRankAscent.after_step, clenv.metrics.curvature_report)

    def spy_ascend(self, inputs):
        events.append(["ascend", inputs.double().sum().item(), len(inputs)])
        return ascend(self, inputs)

    def spy_after_step(self, inputs=None):
        events.append(["step", inputs.double().sum().item(), len(inputs)])
        return after_step(self, inputs)

    def spy_report(model, loss_fn, data, **kwargs):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        before = [m.running_mean.clone() for m in norms]
        modes = []

        def spied_loss(net, batch):
            loss = loss_fn(net, batch)
            modes.append(all(m.training for m in norms))
            return loss

        result = report(model, spied_loss, data, **kwargs)
        events.append(["curvature", sorted(set(data[0][1].tolist())),
                       all(modes), all(torch.equal(m.running_mean, b)
                                       for m, b in zip(norms, before))])
        return result

    switch = _TaskSwitchReset.on_task_switch

    def spy_switch(self, task_id):
        momenta = lambda: sum(len(v) for v in self.optimizer.state.values())
        before = momenta()
        switch(self, task_id)
        events.append(["reset", task_id, before, momenta()])

    _TaskSwitchReset.on_task_switch = spy_switch
    EffectiveRankAscent.ascend = spy_ascend
    EffectiveRankAscent.after_step = spy_after_step
    clenv.metrics.curvature_report = spy_report
    sys.argv = [agent, *argv]
    runpy.run_path(agent, run_name="__main__")
    print("EVENTS " + json.dumps(events))
    """
)


def run_spy(data_dir: Path, runs: Path, argv: list[str]) -> list:
    driver = DRIVER.split("results = {}")[0] + (
        "sys.argv = [sys.argv[0], agent, configs]\n" + SPY_DRIVER
    )
    result = subprocess.run(
        [sys.executable, "-c", driver, str(AGENT), str(data_dir), str(runs),
         json.dumps([*argv, "--runs-dir", str(runs), "--data-dir", str(data_dir)])],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("EVENTS ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[-1][len("EVENTS ") :])


def test_sc_ascent_runs_before_the_minibatches_it_ascends_on(fake_data_dir, tmp_path):
    """SC's ImageNet/CIFAR L2-ER (imagenet/train_imagenet.py:276-284): the ascent on
    the next U minibatches' inputs, then the U training steps on them in order."""
    interval = 3
    events = run_spy(
        fake_data_dir,
        tmp_path,
        [*IMAGENET, "--reg", "l2er", "--curvature-every-tasks", "0",
         "--epochs-per-task", "2", "--method-kwargs", "er__schedule=epoch",
         "er__timing=before", f"er__interval={interval}"],
    )  # fmt: skip
    # 2 classes x 10 images / batch 5 = 4 minibatches per epoch: groups of 3 and 1
    # (a group never spans two epochs), 2 epochs, 2 tasks.
    kinds = "".join("a" if e[0] == "ascend" else "s" for e in events)
    assert kinds == "asssas" * 4, kinds
    index = 0
    while index < len(events):
        ascent = events[index]
        steps = []
        index += 1
        while index < len(events) and events[index][0] == "step":
            steps.append(events[index])
            index += 1
        assert ascent[2] == sum(step[2] for step in steps)  # the same examples
        assert ascent[1] == pytest.approx(sum(step[1] for step in steps), rel=1e-9)


def test_sc_cifar_curvature_on_new_classes_in_train_mode(fake_data_dir, tmp_path):
    """SC's CIFAR Hessian (incremental_cifar/train_incremental_cifar.py:91-98,
    402-435): the newly added classes' samples, BatchNorm on their batch statistics,
    the running statistics untouched."""
    argv = [*CIFAR, "--reg", "bp", "--curvature-every-tasks", "1",
            "--curvature-order", "3", "--epochs-per-task", "1"]  # fmt: skip
    events = [e for e in run_spy(fake_data_dir, tmp_path, argv) if e[0] == "curvature"]
    assert len(events) == 4  # start and end of 2 tasks
    (_, first, *_), _, (_, second, *_), _ = events
    # (The fixture holds no training image of some classes.)
    assert 0 < len(first) <= 5 and 0 < len(second) <= 5
    assert not set(first) & set(second)
    assert all(train and untouched for _, _, train, untouched in events)
    lop = [
        e
        for e in run_spy(fake_data_dir, tmp_path / "lop", [*argv, "--protocol", "lop"])
        if e[0] == "curvature"
    ]
    assert len(lop[2][1]) > 5  # LoP has no such setting: every class seen
    assert not any(train for _, _, train, _ in lop)


def test_resets_keep_or_recreate_the_agents_optimizer_state(fake_data_dir, tmp_path):
    """A full reset at a task switch acts on the agent's own optimizer: SC re-creates
    its state (incremental_cifar/train_incremental_cifar.py:364-378), LoP keeps the
    momentum (lop/incremental_cifar/incremental_cifar_experiment.py:466-469)."""
    argv = [*CIFAR, "--reg", "reset", "--epochs-per-task", "1"]
    sc = [e for e in run_spy(fake_data_dir, tmp_path, argv) if e[0] == "reset"]
    lop = [
        e
        for e in run_spy(fake_data_dir, tmp_path / "lop", [*argv, "--protocol", "lop"])
        if e[0] == "reset"
    ]
    for events in (sc, lop):
        assert [e[1] for e in events] == [1] and events[0][2] > 0  # momentum built
    assert sc[0][3] == 0  # SC: a fresh optimizer state
    assert lop[0][3] == lop[0][2]  # LoP: the momentum is kept


def test_resume_inside_an_ascent_group_reproduces_the_run(fake_data_dir, tmp_path):
    """A checkpoint taken while minibatches of SC's grouped ascent wait to be trained
    on (the env already stepped past them) resumes to the same run."""
    import shutil

    import torch

    from clenv.checkpoint import list_checkpoints

    argv = [*IMAGENET, "--reg", "l2er", "--curvature-every-tasks", "0",
            "--method-kwargs", "er__schedule=epoch", "er__timing=before",
            "er__interval=3", "--checkpoint-every", "5", "--keep-checkpoints",
            "100"]  # fmt: skip
    results, _ = run_driver(fake_data_dir, tmp_path / "whole", {"run": argv})
    assert results["run"] == "ok", results["run"]
    whole = only_run(tmp_path / "whole" / "run")
    copy = tmp_path / "copy"
    shutil.copytree(whole, copy)
    checkpoints = list_checkpoints(copy / "checkpoints")
    # The first checkpoint with waiting minibatches (5 examples: one of three).
    waiting = [
        step
        for step, path in checkpoints
        if not torch.load(path, weights_only=False).get("finished")
        and torch.load(path, weights_only=False)["extra"]["pending"]
    ]
    assert waiting, [step for step, _ in checkpoints]
    for step, path in checkpoints:
        if step > waiting[0]:
            path.unlink()
    resumed, _ = run_driver(
        fake_data_dir, tmp_path / "unused", {"resume": ["--resume", str(copy)]}
    )
    assert resumed["resume"] == "ok", resumed["resume"]
    for tag in ("cl/online_accuracy_per_task", "losses/train_loss_per_task",
                "eval/test_accuracy_per_task", "cl/env_reward_per_task"):  # fmt: skip
        expected, got = series(whole, tag), series(copy, tag)
        assert got["step"].tolist() == expected["step"].tolist(), tag
        assert np.array_equal(got["value"], expected["value"]), tag


# -- divergence (clenv.divergence) and bad arguments ---------------------------------
# SGD.step wrapped to put a NaN into the first weight at its 50th call (example 50,
# task 1 of PMNIST's 40-example tasks): a divergence after a checkpoint.
INJECT_NAN = textwrap.dedent(
    """
    import torch
    _step, _calls = torch.optim.SGD.step, [0]
    def _nan_step(self, *args, **kwargs):
        out = _step(self, *args, **kwargs)
        _calls[0] += 1
        if _calls[0] == 50:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out
    torch.optim.SGD.step = _nan_step
    """
)
DIVERGE = [*PMNIST, "--reg", "bp", "--checkpoint-every-tasks", "1",
           "--divergence-check-every", "1"]  # fmt: skip


def test_nan_stops_the_run_naming_it_and_resume_starts_from_a_finite_checkpoint(
    fake_data_dir, tmp_path
):
    import torch

    from clenv.checkpoint import list_checkpoints, load_latest_checkpoint

    outcomes, _ = run_driver(
        fake_data_dir,
        tmp_path,
        {"run": [*DIVERGE, "--fast-path", "off"]},
        prelude=INJECT_NAN,
    )
    outcome = outcomes["run"]
    assert outcome.startswith("exit error: training diverged: non-finite parameter "
                              "'layers.0.weight' (nan) at example 50, task 1"), outcome  # fmt: skip
    assert "--on-divergence stop" in outcome
    run_dir = only_run(tmp_path / "run")
    assert series(run_dir, "charts/diverged")["step"].tolist() == [50]
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["diverged"]["tensor"] == "layers.0.weight"
    assert saved["diverged"]["action"] == "fail"
    # The last checkpoint is the one of task 1's start (40 examples), finite.
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    assert [step for step, _ in checkpoints] == [40]
    step, state = load_latest_checkpoint(run_dir / "checkpoints")
    model = state["objects"]["model"]
    assert step == 40 and all(torch.isfinite(v).all() for v in model.values())
    # A resume keeps the saved arguments: a new learning rate is refused, not ignored;
    # --on-divergence is taken (the NaN comes again, 50 steps after the resume).
    again, result = run_driver(
        fake_data_dir,
        tmp_path / "unused",
        {"lr": ["--resume", str(run_dir), "--learning-rate", "1e-3"],
         "stop": ["--resume", str(run_dir), "--on-divergence", "stop"]},
        prelude=INJECT_NAN,
    )  # fmt: skip
    assert again["lr"].startswith("exit error: --learning-rate cannot be changed on "
                                  "--resume"), again["lr"]  # fmt: skip
    assert again["stop"] == "ok", again["stop"]
    assert "at example 90, task 2" in result.stdout
    assert json.loads((run_dir / "args.json").read_text())["diverged"]["action"] == (
        "stop"
    )
    # Resumed without the injected NaN, it finishes; the event is gone from the log.
    resumed, _ = run_driver(
        fake_data_dir, tmp_path / "unused", {"resume": ["--resume", str(run_dir)]}
    )
    assert resumed["resume"] == "ok", resumed["resume"]
    assert "diverged" not in json.loads((run_dir / "args.json").read_text())
    assert series(run_dir, "charts/diverged")["step"].size == 0  # cut at step 40
    assert series(run_dir, "cl/online_accuracy_per_task")["step"].tolist() == [
        40, 80, 120
    ]  # fmt: skip


def test_large_learning_rate_stops_cleanly_on_the_fast_path(fake_data_dir, tmp_path):
    """--on-divergence stop: exit 0, charts/diverged in metrics.h5, before any SVD of
    the task-end metrics (which would fail on NaN weights)."""
    argv = [*DIVERGE, "--learning-rate", "1e6", "--on-divergence", "stop"]
    results, result = run_driver(fake_data_dir, tmp_path, {"run": argv})
    assert results["run"] == "ok", results["run"]
    assert "stopped (--on-divergence stop): training diverged: non-finite" in (
        result.stdout
    )
    run_dir = only_run(tmp_path / "run")
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["diverged"]["action"] == "stop" and saved["fast_path_used"]
    assert series(run_dir, "charts/diverged")["value"].tolist() == [1.0]
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        assert not any(tag.startswith("plasticity/") for tag in list_series(f))
    assert not list((run_dir / "checkpoints").glob("*.pt"))


BAD_VALUES = {
    ("--learning-rate", "-0.1"): "--learning-rate must be a finite number > 0",
    ("--learning-rate", "nan"): "--learning-rate must be a finite number > 0",
    ("--momentum", "1.5"): "--momentum must be in [0, 1)",
    ("--optimizer-weight-decay", "-1"): "--optimizer-weight-decay must be",
    ("--curvature-epsilons", "-0.1", "0.1"): "--curvature-epsilons must be finite",
    ("--batch-size", str(2**63)): "--batch-size must be at most",
    (
        "--momentum",
        "0.9",
        "--fast-path",
        "on",
    ): "here: momentum 0.9 (plain SGD only), from --momentum",
    ("--num-tasks", "4", "--env-kwargs", "num_tasks=2"): (
        "--env-kwargs num_tasks=2 and --num-tasks both set the env's num_tasks"
    ),
    ("--env-kwargs", "examples_per_task=20"): "--examples-per-task both set",
    ("--divergence-check-every", "-1"): "--divergence-check-every must be >= 0",
}


@pytest.mark.parametrize("argv", list(BAD_VALUES), ids=" ".join)
def test_bad_values_are_argument_errors(argv):
    agent = load_agent_module(AGENT)
    with pytest.raises(ValueError) as error:
        agent.check_args([*argv, "--data-dir", "/nonexistent"])
    assert BAD_VALUES[argv] in str(error.value)


def test_check_args_exits_before_anything_is_built(tmp_path):
    result = subprocess.run(
        [sys.executable, str(AGENT), "--check-args", "--runs-dir", str(tmp_path),
         "--data-dir", str(tmp_path / "nothing"), "--num-tasks", "2"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-1500:]
    assert "arguments ok" in result.stdout and "'num_tasks': 2" in result.stdout
    assert not any(tmp_path.iterdir())


def test_default_interval_catches_the_nan_at_the_next_loss(fake_data_dir, tmp_path):
    """With --divergence-check-every 100 (the default) the weights are not read after
    every update, but NaN weights make the next example's loss NaN: caught there."""
    argv = [*PMNIST, "--reg", "bp", "--checkpoint-every-tasks", "1", "--fast-path",
            "off"]  # fmt: skip
    outcomes, _ = run_driver(fake_data_dir, tmp_path, {"run": argv}, prelude=INJECT_NAN)
    outcome = outcomes["run"]
    assert outcome.startswith("exit error: training diverged: non-finite loss 'loss' "
                              "(nan) at example 51, task 1"), outcome  # fmt: skip


# -- issue 14: baselines and their metrics -------------------------------------------
def test_new_options_build_what_they_name(smoke_runs):
    """Each option reaches the run: the resolved arguments, the network (CReLU doubles
    the features the metrics see), the optimizer and the loss (MSE on one-hot
    targets is far below cross-entropy's log(10) at the start)."""
    runs, _ = smoke_runs

    def saved(name):
        return json.loads((only_run(runs / name) / "args.json").read_text())

    assert saved("pmnist_layernorm_l2")["norm"] == "layer"  # from +layernorm
    # SC's laynorm_l2 tuned its own L2 (docs/protocols.md), not plain L2's 1e-3.
    assert "L2(weight_decay=0.001," in saved("pmnist_spectral_l2")["method"]
    assert "L2(weight_decay=1e-05," in saved("pmnist_layernorm_l2")["method"]
    assert (
        saved("pmnist_nap")["norm"] == "layer" and saved("pmnist_bp")["norm"] == "none"
    )
    units = {
        name: series(only_run(runs / name), "plasticity/layer0/units")["value"][0]
        for name in ("pmnist_bp", "pmnist_crelu", "pmnist_fourier")
    }
    assert units == {"pmnist_bp": 16, "pmnist_crelu": 32, "pmnist_fourier": 32}
    for name, optimizer in (("pmnist_adam", "adam"), ("pmnist_muon", "muon"),
                            ("pmnist_trac", "trac")):  # fmt: skip
        assert (
            saved(name)["optimizer"] == optimizer and not saved(name)["fast_path_used"]
        )
    losses = {
        name: series(only_run(runs / name), "losses/train_loss_per_task")["value"]
        for name in ("pmnist_bp_autograd", "pmnist_mse", "pmnist_adam")
    }
    assert losses["pmnist_mse"][0] < 0.2 < 1.5 < losses["pmnist_bp_autograd"][0]
    assert not np.allclose(losses["pmnist_adam"], losses["pmnist_bp_autograd"])
    # The conv nets take them too (ConvNet FC layers, ResNet with masked logits).
    imagenet = saved("imagenet_layernorm_crelu")
    assert (imagenet["norm"], imagenet["activation"]) == ("layer", "crelu")
    cifar = only_run(runs / "cifar_mse_adam")
    cifar_losses = series(cifar, "losses/train_loss_per_task")["value"]
    cifar_lop = series(only_run(runs / "cifar_lop_bp"), "losses/train_loss_per_task")
    assert np.all(cifar_losses < 0.5) and np.all(cifar_lop["value"] > 1.0)
    for name in ("spectral_l2", "parseval", "l2init", "upgd", "nap", "layer_reset",
                 "inject"):  # fmt: skip
        method = saved(f"pmnist_{name}")["method"]
        assert saved(f"pmnist_{name}")["reg"] in ("spectral+l2", name), method
        assert method.split("(")[0] in ("Compose", *METHOD_CLASSES), method


METHOD_CLASSES = ("SpectralRegularization", "Parseval", "L2Init", "UPGD",
                  "NormalizeAndProject", "LayerReset", "PlasticityInjection")  # fmt: skip


def test_the_fast_path_says_once_why_it_does_not_run(smoke_runs):
    """auto falls back to the autograd loop with its reason, printed once; on refuses
    the run naming the option."""
    runs, _ = smoke_runs
    for name, reason in (
        ("pmnist_adam", "--optimizer adam (plain SGD only)"),
        ("pmnist_fourier", "--activation fourier (the kernel trains ReLU and CReLU"),
        ("pmnist_parseval", "the fast path cannot run 'parseval' exactly"),
    ):
        output = run_output(runs, name)
        assert output.count("not the fast path") == 1, output
        assert f"autograd (not the fast path: {reason}" in output, output
    assert "not the fast path" not in run_output(runs, "pmnist_bp")
    # layer_reset (a task-switch reset), --loss mse (SC's bp_mse), LayerNorm (SC's
    # laynorm_l2), L2 Init, NaP and CReLU run on it too.
    for name in (
        "pmnist_layer_reset",
        "pmnist_mse",
        "pmnist_layernorm_l2",
        "pmnist_l2init",
        "pmnist_nap",
        "pmnist_crelu",
    ):
        assert "not the fast path" not in run_output(runs, name)
        saved = json.loads((only_run(runs / name) / "args.json").read_text())
        assert saved["fast_path_used"] is True, name
    agent = load_agent_module(AGENT)
    for argv, reason in ((("--optimizer", "muon"), "--optimizer muon"),
                         (("--norm", "layer", "--num-seeds", "2"),
                          "--norm layer \\(the lockstep trainer")):  # fmt: skip
        with pytest.raises(ValueError, match=f"here: {reason}"):
            agent.check_args([*argv, "--fast-path", "on"])
    # One seed with LayerNorm (SC's laynorm_l2, spelled either way) is accepted.
    agent.check_args(["--reg", "l2+layernorm", "--fast-path", "on"])
    with pytest.raises(ValueError, match="names a LayerNorm setting but --norm"):
        agent.check_args(["--reg", "l2+layernorm", "--norm", "none"])


def test_plasticity_and_curvature_series_of_issue_14(smoke_runs):
    """plasticity/: active-unit fraction (1 - the dead fraction), feature norm, the
    loss's gradient norm per layer (adding up to the whole), weight change since the
    task start; curvature/: SC's Hessian variance; per-layer spectra behind
    --partial-spectra only."""
    runs, _ = smoke_runs
    run_dir = only_run(runs / "pmnist_bp")

    def values(tag, run=run_dir):
        logged = series(run, tag)
        return logged["value"], logged["task_id"].tolist()

    active, tasks = values("plasticity/layer1/active_unit_fraction")
    dead, _ = values("plasticity/layer1/dead_units")
    units, _ = values("plasticity/layer1/units")
    assert tasks == [0, 1, 2] and np.allclose(active, 1 - dead / units)
    assert np.all(values("plasticity/layer1/feature_norm")[0] > 0)
    layers = [values(f"plasticity/layers.{i}/grad_norm")[0] for i in (0, 2, 4, 6)]
    total, _ = values("plasticity/grad_norm")
    assert np.all(total > 0)
    assert np.allclose(np.sqrt(sum(g**2 for g in layers)), total, rtol=1e-6)
    change, _ = values("plasticity/weight_change")
    assert np.all(change > 0)
    for when in ("task_start", "task_end"):
        variance, tasks = values(f"curvature/{when}/hessian_variance")
        assert tasks == [0, 2] and np.all(variance >= 0)
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        assert not any("/partial/" in tag for tag in list_series(f))
    partial = only_run(runs / "pmnist_partial_spectra")
    with h5py.File(partial / "metrics.h5", "r") as f:
        tags = list_series(f)
    for layer in ("layers.0", "layers.6"):
        assert f"curvature/task_end/partial/{layer}/top_eigenvalue" in tags, tags


# Every task's checkpoint kept: the weights at each task start, to check the weight
# change against, and the points to resume from.
TRACKED = [*PMNIST, "--reg", "l2init", "--curvature-every-tasks", "0",
           "--checkpoint-every-tasks", "1", "--keep-checkpoints", "100"]  # fmt: skip


def test_weight_change_and_resume_with_its_tracker_are_exact(fake_data_dir, tmp_path):
    """plasticity/weight_change of task 1 is ||theta(end of task 1) - theta(start)||
    from the checkpoints; a run resumed from task 1's start (the tracker's snapshot
    in the checkpoint) logs every series bit for bit as the uninterrupted run."""
    import shutil

    import torch

    from clenv.checkpoint import list_checkpoints

    results, _ = run_driver(fake_data_dir, tmp_path / "whole", {"run": TRACKED})
    assert results["run"] == "ok", results["run"]
    whole = only_run(tmp_path / "whole" / "run")
    checkpoints = dict(list_checkpoints(whole / "checkpoints"))
    assert {40, 80} <= set(checkpoints)

    def weights(step):
        state = torch.load(checkpoints[step], weights_only=False)
        return state["objects"]["model"], state["objects"]["weight_change"]

    start, tracker = weights(40)
    end, _ = weights(80)
    assert all(torch.equal(tracker["snapshot"][k], start[k]) for k in start)
    distance = sum(float((end[k] - start[k]).double().pow(2).sum()) for k in start)
    change = series(whole, "plasticity/weight_change")
    assert change["step"].tolist() == [40, 80, 120]
    assert change["value"][1] == pytest.approx(distance**0.5, rel=1e-6)

    copy = tmp_path / "copy"
    shutil.copytree(whole, copy)
    for step, path in list_checkpoints(copy / "checkpoints"):
        if step > 40:
            path.unlink()
    resumed, _ = run_driver(
        fake_data_dir, tmp_path / "unused", {"resume": ["--resume", str(copy)]}
    )
    assert resumed["resume"] == "ok", resumed["resume"]
    with h5py.File(whole / "metrics.h5", "r") as f:
        tags = [t for t in list_series(f) if not t.startswith("charts/")]
    assert "plasticity/layers.0/weight_change" in tags
    for tag in tags:
        expected, got = series(whole, tag), series(copy, tag)
        assert got["step"].tolist() == expected["step"].tolist(), tag
        assert np.array_equal(got["value"], expected["value"], equal_nan=True), tag
