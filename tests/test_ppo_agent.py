"""agents/ppo_l2er.py: smoke runs per --reg, SIGKILL + resume, logged series, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from conftest import load_agent_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clenv.logger import list_series, read_series
from clenv.methods import split_name
from clenv.metrics.spectral import log_spaced_grid, rebin_density
from clenv.settings import PAPERS, rows

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agents" / "ppo_l2er.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
REGS = ["bp", "l2", "er", "l2er", "cbp", "snp", "redo", "cbp+l2"]

# Tiny but complete: 2 updates, every hook and metric runs.
SMOKE = [
    "--env-id", "Pendulum-v1", "--total-timesteps", "256", "--num-steps", "128",
    "--num-minibatches", "2", "--update-epochs", "2", "--hidden-sizes", "16", "16",
    "--plasticity-every", "1", "--curvature-every-tasks", "0", "--no-progress",
    "--no-plot",
]  # fmt: skip
# Slippery Ant with friction switches every 300 steps, exactly (4 tasks in 1024 steps,
# with rollouts of 128 wholly in each), checkpoints every 512 steps and every metric at a cheap setting.
ANT = [
    "--total-timesteps", "1024", "--num-steps", "128", "--num-minibatches", "4",
    "--update-epochs", "2", "--hidden-sizes", "16", "16",
    "--env-kwargs", "switch_every=300", "switch_at=step", "--checkpoint-every", "512",
    "--plasticity-every", "2", "--curvature-order", "5",
    "--curvature-trace-matvecs", "3", "--curvature-samples", "64",
    "--reg", "l2er+cchain", "--method-kwargs", "cchain__warmup_iterations=2",
    "--no-progress", "--no-plot",
]  # fmt: skip


def run_agent(args, **kwargs):
    return subprocess.run(
        [sys.executable, str(AGENT), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def only_run(runs_dir: Path) -> Path:
    (run_dir,) = runs_dir.iterdir()
    return run_dir


# -- smoke runs: one subprocess runs the agent once per --reg ------------------------
SMOKE_DRIVER = textwrap.dedent(
    """
    import json, runpy, sys, traceback
    agent, runs, common, regs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
    results = {}
    for reg in regs:
        plot = ["--plot"] if reg == "bp" else []  # one run draws its plots.png
        sys.argv = [agent, *common, *plot, "--reg", reg, "--runs-dir", f"{runs}/{reg}"]
        try:
            runpy.run_path(agent, run_name="__main__")
            results[reg] = "ok"
        except SystemExit as exit:  # the agent's clean CLI error
            results[reg] = f"SystemExit: {exit.code}"
        except BaseException:
            results[reg] = traceback.format_exc()
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("smoke")
    done = subprocess.run(
        [sys.executable, "-c", SMOKE_DRIVER, str(AGENT), str(runs), json.dumps(SMOKE)]
        + REGS
        + ["nope"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULTS")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    return runs, json.loads(lines[0][len("RESULTS") :])


@pytest.mark.parametrize("reg", REGS)
def test_smoke_run_per_reg(smoke_runs, reg):
    runs, results = smoke_runs
    assert results[reg] == "ok", results[reg]
    run_dir = only_run(runs / reg)
    metrics = run_dir / "metrics.h5"
    with h5py.File(metrics, "r") as f:
        assert f.attrs["reg"] == reg and f.attrs["agent"] == "ppo"
        tags = list_series(f)
    assert read_series(metrics, "losses/value_loss")["step"].tolist() == [128, 256]
    assert np.isfinite(read_series(metrics, "losses/policy_loss")["value"]).all()
    assert "plasticity/actor/layer0/effective_rank" in tags
    assert "plasticity/critic/layer1/dead_units" in tags
    assert "cl/task_id" in tags and "cl/friction" not in tags  # not a clenv env
    assert (run_dir / "checkpoints" / "ckpt_000000000256.pt").exists()
    assert json.loads((run_dir / "args.json").read_text())["reg"] == reg


# -- issue 14's baselines: --norm, --activation, --optimizer and the new methods ------
CONFIG_DRIVER = textwrap.dedent(
    """
    import json, runpy, sys, traceback
    agent, runs, configs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    results = {}
    for name, argv in configs.items():
        sys.argv = [agent, *argv, "--runs-dir", f"{runs}/{name}"]
        try:
            runpy.run_path(agent, run_name="__main__")
            results[name] = "ok"
        except SystemExit as exit:
            results[name] = f"SystemExit: {exit.code}"
        except BaseException:
            results[name] = traceback.format_exc()
    print("RESULTS" + json.dumps(results))
    """
)
OPTIONS = {
    "norm_layer": ["--norm", "layer", "--reg", "l2"],
    "crelu": ["--activation", "crelu", "--reg", "cbp"],
    "fourier": ["--activation", "fourier", "--reg", "redo"],
    "sgd": ["--optimizer", "sgd", "--reg", "bp"],
    "muon": ["--optimizer", "muon", "--protocol", "sc", "--reg", "bp"],
    "trac": ["--optimizer", "trac", "--reg", "bp", "--anneal-lr", "True"],
}
METHODS = {
    "l2init": ["--reg", "l2init"],
    "spectral+l2": ["--reg", "spectral+l2"],
    "parseval": ["--reg", "parseval"],
    "upgd": ["--reg", "upgd", "--optimizer", "sgd"],
    "nap": ["--reg", "nap", "--norm", "layer"],
    # lambda adapts from the first iteration on; checkpoints after each update.
    "cchain": ["--reg", "cchain", "--method-kwargs", "cchain__warmup_iterations=1",
               "--total-timesteps", "384", "--checkpoint-every", "128"],
}  # fmt: skip
# Task switches every 300 steps (as ANT): injection and layer resets act on them.
SWITCHING = {
    "inject": ["--reg", "inject"],
    "layer_reset": ["--reg", "layer_reset", "--partial-spectra"],
}
SWITCHING_COMMON = [
    "--total-timesteps", "768", "--num-steps", "128", "--num-minibatches", "2",
    "--update-epochs", "2", "--hidden-sizes", "16", "16",
    "--env-kwargs", "switch_every=300", "switch_at=step", "--plasticity-every", "1",
    "--curvature-order", "5", "--curvature-trace-matvecs", "0",
    "--curvature-samples", "64", "--checkpoint-every", "128", "--no-progress",
    "--no-plot",
]  # fmt: skip


def run_configs(runs: Path, configs: dict[str, list[str]], common: list[str]):
    argvs = {name: [*common, *argv] for name, argv in configs.items()}
    done = subprocess.run(
        [sys.executable, "-c", CONFIG_DRIVER, str(AGENT), str(runs), json.dumps(argvs)],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULTS")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    return runs, json.loads(lines[0][len("RESULTS") :])


@pytest.fixture(scope="module")
def option_runs(tmp_path_factory):
    configs = dict(OPTIONS)
    try:
        import trac_optimizer  # noqa: F401
    except ImportError:
        configs.pop("trac")  # an optional extra
    return run_configs(tmp_path_factory.mktemp("options"), configs, SMOKE)


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    return run_configs(tmp_path_factory.mktemp("methods"), METHODS, SMOKE)


@pytest.fixture(scope="module")
def switching_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("switching")
    return run_configs(runs, SWITCHING, SWITCHING_COMMON)


def final_checkpoint(run_dir: Path) -> dict:
    path = max((run_dir / "checkpoints").glob("ckpt_*.pt"))
    return torch.load(path, weights_only=False)


def assert_plasticity_series(run_dir: Path, updates: int, moves: bool = True):
    """The issue 14 series are logged at every update (--plasticity-every 1), finite."""
    metrics = run_dir / "metrics.h5"
    with h5py.File(metrics, "r") as f:
        tags = list_series(f)
    for tag in (
        "plasticity/actor/weight_change", "plasticity/critic/layer0/feature_norm",
        "plasticity/actor/active_unit_fraction", "plasticity/critic/0/grad_norm",
        "plasticity/actor/0/weight_change", "plasticity/critic/mean_feature_norm",
    ):  # fmt: skip
        assert tag in tags, tag
        values = read_series(metrics, tag)["value"]
        assert len(values) == updates and np.isfinite(values).all(), tag
    # Churn between consecutive updates: one per update, positive if the policy moved.
    churn = read_series(metrics, "plasticity/policy_churn")["value"]
    assert len(churn) == updates and np.isfinite(churn).all() and (churn >= 0).all()
    assert (churn > 0).all() or not moves, churn
    return tags


@pytest.mark.parametrize("name", OPTIONS)
def test_network_and_optimizer_options_run(option_runs, name):
    runs, results = option_runs
    if name not in results:
        pytest.skip("trac-optimizer is not installed (pip install clenv[trac])")
    assert results[name] == "ok", results[name]
    run_dir = only_run(runs / name)
    # TRAC's scale starts at 1e-8: its first updates move no float32 weight.
    assert_plasticity_series(run_dir, updates=2, moves=name != "trac")
    saved = json.loads((run_dir / "args.json").read_text())
    model = final_checkpoint(run_dir)["objects"]["model"]
    # The first hidden layer reads the observations, the second the first's features.
    second = model[
        "actor_mean.3.weight" if name == "norm_layer" else "actor_mean.2.weight"
    ]
    assert second.shape == (16, 32 if name in ("crelu", "fourier") else 16)
    assert ("actor_mean.1.weight" in model) == (name == "norm_layer")  # LayerNorm
    argv = OPTIONS[name]
    optimizer = argv[argv.index("--optimizer") + 1] if "--optimizer" in argv else "adam"
    assert saved["optimizer"] == optimizer
    state = final_checkpoint(run_dir)["objects"]["optimizer"]
    assert (set(state) == {"muon", "adam"}) == (name == "muon")


@pytest.mark.parametrize("name", METHODS)
def test_new_methods_run_in_ppo(method_runs, name):
    runs, results = method_runs
    assert results[name] == "ok", results[name]
    run_dir = only_run(runs / name)
    assert_plasticity_series(run_dir, updates=3 if name == "cchain" else 2)
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        assert f.attrs["reg"] == METHODS[name][1]


def test_cchain_coefficient_adapts_over_the_run(method_runs):
    runs, results = method_runs
    assert results["cchain"] == "ok", results["cchain"]
    checkpoints = sorted((only_run(runs / "cchain") / "checkpoints").glob("*.pt"))
    assert [p.name[5:-3] for p in checkpoints] == ["000000000128", "000000000256",
                                                    "000000000384"]  # fmt: skip
    coefficients = [
        torch.load(p, weights_only=False)["objects"]["method"]["coefficient"]
        for p in checkpoints
    ]
    # lambda = 0.05 |policy loss| / churn loss, once the first iteration has ended
    # (agent.after_loss feeds it the policy loss); 100 before.
    assert coefficients[0] == 100.0
    assert all(math.isfinite(c) and c > 0 for c in coefficients)
    assert len(set(coefficients)) == 3, coefficients


@pytest.mark.slow
@pytest.mark.parametrize("name", SWITCHING)
def test_task_switch_methods_and_partial_spectra(switching_runs, name):
    runs, results = switching_runs
    assert results[name] == "ok", results[name]
    run_dir = only_run(runs / name)
    metrics = run_dir / "metrics.h5"
    tags = assert_plasticity_series(run_dir, updates=6)
    # The weight change restarts at each task switch: its task-start weights in the
    # last checkpoint are those the switch at step 600 found (the weights after the
    # update at 512; a hidden layer, which neither method resets), and the logged
    # distance is from them.
    assert read_series(metrics, "plasticity/actor/weight_change")["task_id"].tolist() == [
        0, 0, 1, 1, 2, 2
    ]  # fmt: skip
    at_512, at_768 = (
        torch.load(run_dir / "checkpoints" / f"ckpt_{step:012d}.pt", weights_only=False)
        for step in (512, 768)
    )
    snapshot = at_768["extra"]["trackers"]["weight_change"]["snapshot"]
    before, model = at_512["objects"]["model"], at_768["objects"]["model"]
    for param in ("weight", "bias"):
        assert torch.equal(
            snapshot[f"actor/0.{param}"], before[f"actor_mean.0.{param}"]
        )
    distance = math.sqrt(
        sum(
            (model[f"actor_mean.0.{p}"] - snapshot[f"actor/0.{p}"]).square().sum()
            for p in ("weight", "bias")
        )
    )
    logged = read_series(metrics, "plasticity/actor/0/weight_change")["value"][-1]
    assert logged == pytest.approx(distance, rel=1e-5) and distance > 0
    for when in ("task_start", "task_end"):
        variance = read_series(metrics, f"curvature/{when}/hessian_variance")["value"]
        assert np.isfinite(variance).all() and (variance >= 0).all()
    partial = [t for t in tags if "/partial/" in t]
    assert bool(partial) == (name == "layer_reset"), partial[:3]
    if partial:
        assert "curvature/task_start/partial/actor_mean.0/top_eigenvalue" in tags


def test_muon_puts_hidden_weights_on_muon(agent_module):
    args = agent_module.resolve_args(
        agent_module.Args(optimizer="muon", protocol="sc", hidden_sizes=(8, 8))
    )
    agent = agent_module.Agent(box_envs(), args.hidden_sizes)
    optimizer = agent_module.make_agent_optimizer(
        args, agent, vectors=[agent.actor_logstd]
    )
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    adam = {id(p) for g in optimizer.adam.param_groups for p in g["params"]}
    for name, param in agent.named_parameters():
        # Every weight matrix on Muon (SC's optax muon: every 2-D parameter), the
        # biases and the policy's log-std (SC's is a vector) on Adam.
        on_muon = name.endswith(".weight")
        assert (id(param) in muon, id(param) in adam) == (on_muon, not on_muon), name
    # SC's bp_muon rows (docs/protocols.md): Nesterov 0.95, Adam betas 0.9, 0.999.
    assert optimizer.muon.param_groups[0]["momentum"] == 0.95
    assert optimizer.adam.param_groups[0]["betas"] == (0.9, 0.999)
    agent_module.set_learning_rate(optimizer, 1e-5)  # annealing moves both parts
    assert {g["lr"] for g in optimizer.param_groups} == {1e-5}
    # --optimizer adam is Adam with the protocol's betas, as the agent always built.
    adam_args = agent_module.resolve_args(agent_module.Args(protocol="sc"))
    default = agent_module.make_agent_optimizer(adam_args, agent)
    assert type(default) is torch.optim.Adam
    assert default.param_groups[0]["betas"] == (0.99, 0.99)


def test_make_mlp_draws_the_weights_of_the_hand_written_networks(agent_module):
    """The agent builds its nets with clenv.models.layers.make_mlp; with the default
    options they are the Linear/ReLU stacks it built by hand, weight for weight."""

    def hand_written(in_features, hidden, out_features, init, out_std):
        layers = []
        for width in hidden:
            linear = torch.nn.Linear(in_features, width)
            layers += [agent_module.layer_init(linear, init), torch.nn.ReLU()]
            in_features = width
        head = torch.nn.Linear(in_features, out_features)
        layers.append(agent_module.layer_init(head, init, std=out_std))
        return torch.nn.Sequential(*layers)

    for init in ("lecun_uniform", "orthogonal"):
        torch.manual_seed(3)
        agent = agent_module.Agent(box_envs(5, 2), (16, 8), init)
        torch.manual_seed(3)
        critic = hand_written(5, (16, 8), 1, init, 1.0)
        actor = hand_written(5, (16, 8), 2, init, 0.01)
        for mine, theirs in ((agent.critic, critic), (agent.actor_mean, actor)):
            assert [type(m) for m in mine] == [type(m) for m in theirs]
            for a, b in zip(
                mine.state_dict().values(), theirs.state_dict().values(), strict=True
            ):
                assert torch.equal(a, b)


def test_method_needs_are_argument_errors(agent_module):
    resolve = agent_module.resolve_args
    with pytest.raises(ValueError, match="nap needs --norm layer"):
        resolve(agent_module.Args(reg="nap"))
    with pytest.raises(ValueError, match="upgd needs --optimizer sgd"):
        resolve(agent_module.Args(reg="upgd+l2"))
    assert resolve(agent_module.Args(reg="nap", norm="layer")).norm == "layer"


# -- SIGKILL and resume on Slippery Ant ----------------------------------------------
def _logged_after(runs_dir: Path, step: int) -> bool:
    """Whether the run under ``runs_dir`` has logged an episode after ``step``."""
    try:
        series = read_series(
            only_run(runs_dir) / "metrics.h5", "charts/episodic_return"
        )
    except (KeyError, OSError, ValueError):  # nothing logged yet, or mid-write
        return False
    return bool(len(series["step"]) and series["step"].max() > step)


@pytest.fixture(scope="module")
def ant_runs(tmp_path_factory):
    """An uninterrupted run, and the same run SIGKILLed after a checkpoint, resumed."""
    base = tmp_path_factory.mktemp("ant")
    # Both runs at once (two cores); the first is left alone, the second killed.
    whole = subprocess.Popen(
        [sys.executable, str(AGENT), *ANT, "--runs-dir", str(base / "whole")],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed_dir = base / "killed"
    process = subprocess.Popen(
        [sys.executable, str(AGENT), *ANT, "--runs-dir", str(killed_dir)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while not list(killed_dir.glob("*/checkpoints/ckpt_000000000512.pt")):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # Let it log past the checkpoint (resume must drop that), and kill it as soon
        # as it has: a fixed wait let a fast, or a descheduled, poll reach the next
        # checkpoint first.
        logged_past = time.monotonic() + 0.5
        while time.monotonic() < logged_past and not _logged_after(killed_dir, 512):
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    run_dir = only_run(killed_dir)
    assert not (run_dir / "checkpoints" / "ckpt_000000001024.pt").exists()
    resumed = run_agent(["--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]
    assert "resumed" in resumed.stdout
    return only_run(base / "whole"), run_dir


def test_killed_and_resumed_run_reproduces_the_uninterrupted_run(ant_runs):
    whole, resumed = ant_runs
    with h5py.File(whole / "metrics.h5", "r") as f:
        tags = list_series(f)
    with h5py.File(resumed / "metrics.h5", "r") as f:
        assert list_series(f) == tags
    timing = ("charts/SPS", "/seconds")
    for tag in tags:
        a = read_series(whole / "metrics.h5", tag)
        b = read_series(resumed / "metrics.h5", tag)
        # Same final step, no gap, no duplicate: identical step and task columns.
        np.testing.assert_array_equal(a["step"], b["step"], err_msg=tag)
        np.testing.assert_array_equal(a["task_id"], b["task_id"], err_msg=tag)
        if not any(t in tag for t in timing):
            np.testing.assert_array_equal(a["value"], b["value"], err_msg=tag)
    assert read_series(resumed / "metrics.h5", "losses/value_loss")["step"][-1] == 1024


def tensorboard(run_dir: Path) -> EventAccumulator:
    guidance = {"scalars": 0, "histograms": 0, "tensors": 0}
    accumulator = EventAccumulator(str(run_dir), size_guidance=guidance)
    accumulator.Reload()
    return accumulator


def test_resumed_tensorboard_log_has_no_gap_or_duplicate(ant_runs):
    whole, resumed = ant_runs
    a, b = tensorboard(whole), tensorboard(resumed)
    for tag in ("losses/value_loss", "charts/episodic_return", "cl/friction"):
        steps_a = [e.step for e in a.Scalars(tag)]
        steps_b = [e.step for e in b.Scalars(tag)]
        assert steps_b == steps_a, tag
    values_a = [e.value for e in a.Scalars("charts/episodic_return")]
    assert [e.value for e in b.Scalars("charts/episodic_return")] == values_a


def test_series_are_in_both_event_files_and_hdf5(ant_runs):
    whole, _ = ant_runs
    events = tensorboard(whole)
    scalars = set(events.Tags()["scalars"])
    histograms = set(events.Tags()["histograms"])
    metrics = whole / "metrics.h5"
    expected_scalars = [
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/SPS",
        "losses/value_loss",
        "losses/policy_loss",
        "cl/task_id",
        "cl/friction",
        "cl/mean_return_per_task",
        "plasticity/actor/layer0/effective_rank",
        "plasticity/critic/layer1/dead_units",
        "plasticity/actor/dormant_units",
        "plasticity/critic/weight_magnitude",
        "curvature/task_start/top_eigenvalue",
        "curvature/task_start/trace",
        "curvature/task_start/epsilon_rank/0.01",
        "curvature/task_end/top_eigenvalue",
    ]
    for tag in expected_scalars:
        assert tag in scalars, tag
        series = read_series(metrics, tag)
        tb = events.Scalars(tag)
        assert [e.step for e in tb] == series["step"].tolist(), tag
        np.testing.assert_allclose(
            [e.value for e in tb], series["value"], rtol=1e-6, err_msg=tag
        )
    for tag in (
        "curvature/task_start/spectral_density",
        "curvature/task_end/ritz_values",
    ):
        assert tag in histograms
    density = read_series(metrics, "curvature/task_start/spectral_density")
    assert density["value"].shape == (len(density["step"]), len(density["grid"]))


def test_run_ends_with_a_plot(smoke_runs):
    runs, results = smoke_runs
    assert results["bp"] == "ok"
    plot = only_run(runs / "bp") / "plots.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (only_run(runs / "l2") / "plots.png").exists()  # --no-plot


def test_task_bookkeeping_follows_the_env(ant_runs):
    whole, _ = ant_runs
    metrics = whole / "metrics.h5"
    task_ids = read_series(metrics, "cl/task_id")["value"]
    steps = read_series(metrics, "cl/task_id")["step"]
    np.testing.assert_array_equal(task_ids, steps // 300)  # exactly every 300 steps
    tasks = read_series(metrics, "cl/friction")["task_id"]
    np.testing.assert_array_equal(tasks, steps // 300)
    per_task = read_series(metrics, "cl/mean_return_per_task")
    assert np.all(np.diff(per_task["task_id"]) > 0)  # once per finished task
    friction = read_series(metrics, "cl/friction")
    assert np.all((friction["value"] >= 0.02) & (friction["value"] <= 2.0))
    # Each episode's return is stamped with the task it was played in.
    returns = read_series(metrics, "charts/episodic_return")
    assert set(returns["task_id"]) <= set(task_ids.astype(int))
    starts = read_series(metrics, "curvature/task_start/top_eigenvalue")
    # Task start: the first rollout wholly in the task; task end: at the switch.
    # (task 3 begins at step 900, inside the last rollout 896..1024: no whole rollout)
    assert starts["task_id"].tolist() == [0, 1, 2]
    assert starts["step"].tolist() == [128, 512, 768]
    ends = read_series(metrics, "curvature/task_end/top_eigenvalue")
    assert ends["task_id"].tolist() == [0, 1, 2] and ends["step"].tolist() == [
        300,
        600,
        900,
    ]


# -- arguments ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent_module():
    return load_agent_module(AGENT)


def test_env_kwargs_are_parsed_as_literals(agent_module):
    parsed = agent_module.parse_kwargs(
        ["switch_every=5000", "switch_at=step", "value_range=(0.1, 1.0)"],
        "--env-kwargs",
    )
    assert parsed == {
        "switch_every": 5000,
        "switch_at": "step",
        "value_range": (0.1, 1.0),
    }
    with pytest.raises(ValueError, match="key=value"):
        agent_module.parse_kwargs(["switch_every"], "--env-kwargs")


def test_bad_env_arguments_raise_clear_errors(agent_module):
    args = agent_module.resolve_args(agent_module.Args(env_kwargs=["not_a_kwarg=1"]))
    with pytest.raises(ValueError, match="not_a_kwarg"):
        agent_module.env_kwargs_for(args)
    args = agent_module.resolve_args(agent_module.Args(env_id="CartPole-v1"))
    with pytest.raises(ValueError, match="continuous"):
        agent_module.env_kwargs_for(args)
    args = agent_module.resolve_args(agent_module.Args(env_id="NoSuchEnv-v0"))
    with pytest.raises(ValueError, match="NoSuchEnv"):
        agent_module.env_kwargs_for(args)


def test_protocol_defaults_and_validation(agent_module):
    lop = agent_module.resolve_args(agent_module.Args())
    assert (lop.num_minibatches, lop.minibatch_size, lop.ent_coef) == (16, 128, 0.0)
    assert lop.hidden_sizes == (256, 256) and lop.total_timesteps == 20_000_000
    sc = agent_module.resolve_args(agent_module.Args(protocol="sc"))
    assert (sc.num_minibatches, sc.minibatch_size, sc.ent_coef) == (128, 16, 0.01)
    assert sc.hidden_sizes == (256,) and sc.total_timesteps == 10_000_000
    explicit = agent_module.resolve_args(agent_module.Args(protocol="sc", ent_coef=0.0))
    assert explicit.ent_coef == 0.0
    with pytest.raises(ValueError, match="divisible"):
        agent_module.resolve_args(agent_module.Args(num_minibatches=3))
    with pytest.raises(ValueError, match="trace"):
        agent_module.resolve_args(agent_module.Args(curvature_trace_matvecs=2))
    with pytest.raises(ValueError, match="num-steps"):
        agent_module.resolve_args(agent_module.Args(num_steps=0))


# -- protocol rows (clenv/settings/slippery_ant.py, docs/protocols.md) --------------
def agent_rows(kind="agent"):
    return [row for row in rows("slippery_ant") if row.kind == kind]


def test_protocol_rows_fill_unset_options(agent_module):
    """Every agent row's value lands in Args; an explicit option wins; --help says so."""
    for paper in PAPERS:
        for reg in ("bp", "cbp", "l2er"):
            args = agent_module.resolve_args(agent_module.Args(protocol=paper, reg=reg))
            components = set(split_name(reg))
            for row in agent_rows():
                if (
                    row.value(paper) is None
                    or not set(filter(None, row.when.split("+"))) <= components
                ):
                    continue
                if row.when or not any(
                    other.name == row.name
                    and other.when
                    and set(other.when.split("+")) <= components
                    for other in agent_rows()
                ):
                    assert getattr(args, row.name) == row.value(paper).value, (
                        paper,
                        reg,
                        row.name,
                    )
    assert agent_module.resolve_args(agent_module.Args()).protocol == "lop"
    explicit = agent_module.resolve_args(
        agent_module.Args(protocol="sc", ent_coef=0.5, norm_adv="none", gamma=0.9)
    )
    assert (explicit.ent_coef, explicit.norm_adv, explicit.gamma) == (0.5, "none", 0.9)
    fields = {f.name for f in dataclasses.fields(agent_module.Args)}
    assert {row.name for row in agent_rows()} <= fields
    # Every protocol-dependent option is unset by default and says where it comes from.
    wide = subprocess.run(
        [sys.executable, str(AGENT), "--help"],
        env={**ENV, "COLUMNS": "1000"},  # one line per option
        capture_output=True,
        text=True,
    )
    help_text = re.sub(r"[│\s]+", " ", wide.stdout)
    for row in agent_rows():
        assert getattr(agent_module.Args(), row.name) is None, row.name
        pattern = (
            # the option's header, then its help up to the next header
            re.escape(row.option) + r" \{None[^ ]* (?:(?!--[a-z-]+ \{).)*?"
            r"\(default: from --protocol; "
            r"docs/protocols\.md: lop [^,]+, sc "
        )
        assert re.search(pattern, help_text), row.option


def test_protocol_env_rows_reach_gym_make(agent_module):
    for paper in PAPERS:
        args = agent_module.resolve_args(agent_module.Args(protocol=paper))
        kwargs, continual = agent_module.env_kwargs_for(args)
        assert continual and kwargs["task_seed"] == args.seed
        for row in agent_rows("env"):
            assert kwargs[row.name] == row.value(paper).value, (paper, row.name)
        env = gym.make(args.env_id, **kwargs)
        expected = (105,) if paper == "lop" else (27,)  # SC: Brax's ant, no contacts
        assert env.observation_space.shape == expected
    # --env-kwargs wins over the protocol; other continual envs get switch_at only.
    args = agent_module.resolve_args(
        agent_module.Args(protocol="sc", env_kwargs=["switch_at='episode_end'"])
    )
    assert agent_module.env_kwargs_for(args)[0]["switch_at"] == "episode_end"
    args = agent_module.resolve_args(
        agent_module.Args(env_id="clenv/SlipperyHalfCheetah-v0")
    )
    kwargs = agent_module.env_kwargs_for(args)[0]
    assert kwargs["switch_at"] == "episode_end" and "use_contact_forces" not in kwargs


class RecordingEnv(gym.Env):
    """Box(-1, 1) actions; records what env.step receives; reward 1 per step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    received: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        RecordingEnv.received.append(np.array(action))
        return np.ones(2, np.float32), 1.0, False, False, {}


gym.register("test/Recording-v0", entry_point=RecordingEnv, max_episode_steps=2)


def recording_envs(agent_module, clip_actions):
    envs = gym.vector.SyncVectorEnv(
        [agent_module.make_env("test/Recording-v0", 0, {}, clip_actions)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs.reset(seed=0)
    return envs


def step(agent_module, envs, action, agent, args):
    """The agent's env step (clenv.rollout.step_envs, as the loop calls it)."""
    return agent_module.step_envs(
        envs, action, value_fn=agent.get_value, device="cpu", gamma=args.gamma,
        bootstrap_truncated=args.bootstrap_truncated,
    )  # fmt: skip


def test_unclipped_action_reaches_env_step(agent_module):
    for clip_actions, expected in ((False, 5.0), (True, 1.0)):
        args = agent_module.resolve_args(agent_module.Args(clip_actions=clip_actions))
        envs = recording_envs(agent_module, clip_actions)
        agent = agent_module.Agent(envs, (4,))
        RecordingEnv.received.clear()
        step(agent_module, envs, np.array([[5.0]], np.float32), agent, args)
        assert RecordingEnv.received[-1].tolist() == [expected]
    assert agent_module.resolve_args(agent_module.Args()).clip_actions is False


def test_truncation_is_terminal_unless_bootstrapped(agent_module):
    action = np.zeros((1, 1), np.float32)
    for bootstrap in (False, True):
        args = agent_module.resolve_args(
            agent_module.Args(bootstrap_truncated=bootstrap)
        )
        envs = recording_envs(agent_module, False)
        agent = agent_module.Agent(envs, (4,))
        torch.nn.init.constant_(agent.critic[-1].bias, 3.0)  # V(s) != 0
        _, reward, done, _ = step(agent_module, envs, action, agent, args)
        assert reward.tolist() == [1.0] and done.tolist() == [False]
        _, reward, done, _ = step(agent_module, envs, action, agent, args)
        assert done.tolist() == [True]  # the time limit ends the episode either way
        value = agent.get_value(torch.ones(1, 2)).item()
        expected = 1.0 + args.gamma * value if bootstrap else 1.0
        assert reward[0] == pytest.approx(expected)
    assert agent_module.resolve_args(agent_module.Args()).bootstrap_truncated is False


def make_batch(agent, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(size, 3, generator=generator)
    with torch.no_grad():
        actions, logprobs, _, values = agent.get_action_and_value(obs)
    return {
        "obs": obs,
        "actions": actions,
        "logprobs": logprobs + 0.1 * torch.randn(size, generator=generator),
        "advantages": 3.0 + 2.0 * torch.randn(size, generator=generator),
        "returns": values.view(-1) + torch.randn(size, generator=generator),
        "values": values.view(-1),
    }


def box_envs(obs_dim=3, act_dim=2):
    return SimpleNamespace(
        single_observation_space=gym.spaces.Box(-1, 1, (obs_dim,)),
        single_action_space=gym.spaces.Box(-1, 1, (act_dim,)),
    )


def test_value_loss_is_mean_squared_error_without_half(agent_module):
    torch.manual_seed(0)
    agent = agent_module.Agent(box_envs(), (8,))
    batch = make_batch(agent)
    values = agent.get_value(batch["obs"]).view(-1).detach()
    mse = ((values - batch["returns"]) ** 2).mean()
    for paper in PAPERS:
        args = agent_module.resolve_args(agent_module.Args(protocol=paper))
        assert args.vf_coef == 1.0
        _, (_, v_loss, *_) = agent_module.ppo_loss(agent, batch, args)
        if args.clip_vloss:  # SC: the values have not moved, so clipping is inert
            assert paper == "sc"
        assert v_loss.item() == pytest.approx(mse.item(), rel=1e-6)  # no 1/2
    # Clipped: once the values move beyond --clip-coef, the larger error counts.
    with torch.no_grad():
        agent.critic[-1].bias += 1.0
    moved = agent.get_value(batch["obs"]).view(-1).detach()
    clipped = batch["values"] + (moved - batch["values"]).clamp(-0.2, 0.2)
    expected = torch.max(
        (moved - batch["returns"]) ** 2, (clipped - batch["returns"]) ** 2
    ).mean()
    sc = agent_module.resolve_args(agent_module.Args(protocol="sc"))
    _, (_, v_loss, *_) = agent_module.ppo_loss(agent, batch, sc)
    assert v_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    lop = agent_module.resolve_args(agent_module.Args())
    _, (_, v_loss, *_) = agent_module.ppo_loss(agent, batch, lop)
    assert v_loss.item() == pytest.approx(((moved - batch["returns"]) ** 2).mean())


def test_init_lecun_uniform_bounds_and_zero_bias(agent_module):
    torch.manual_seed(0)
    args = agent_module.resolve_args(agent_module.Args())
    assert (args.init, args.log_std_init) == ("lecun_uniform", 0.0)
    agent = agent_module.Agent(box_envs(40, 6), (300, 200), args.init, 0.0)
    for net in (agent.actor_mean, agent.critic):
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        assert len(linears) == 3  # the output layer too
        for layer in linears:
            bound = math.sqrt(3 / layer.in_features)
            weight = layer.weight.detach()
            assert weight.abs().max() <= bound
            assert weight.abs().max() > 0.95 * bound  # uniform up to the bound
            assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
            assert torch.all(layer.bias == 0)
    assert torch.all(agent.actor_logstd == 0)
    assert torch.all(
        agent_module.Agent(box_envs(), (8,), log_std_init=-0.5).actor_logstd == -0.5
    )
    # CleanRL's orthogonal init stays available: orthonormal rows, small actor output.
    agent = agent_module.Agent(box_envs(40, 6), (300, 200), "orthogonal")
    out = agent.actor_mean[-1].weight.detach()
    assert torch.allclose(out @ out.T, 1e-4 * torch.eye(6), atol=1e-6)


def test_advantage_normalisation_batch_minibatch_none(agent_module):
    torch.manual_seed(0)
    agent = agent_module.Agent(box_envs(), (8,))
    batch = make_batch(agent)
    normalised = {
        **batch,
        "advantages": agent_module.normalize_advantages(batch["advantages"]),
    }
    assert normalised["advantages"].mean().abs() < 1e-6
    assert normalised["advantages"].std().item() == pytest.approx(1.0, abs=1e-6)
    loss = {}
    for mode in ("batch", "minibatch", "none"):
        args = agent_module.resolve_args(agent_module.Args(norm_adv=mode))
        loss[mode, "raw"] = agent_module.ppo_loss(agent, batch, args)[1][0].item()
        loss[mode, "norm"] = agent_module.ppo_loss(agent, normalised, args)[1][0].item()
    # minibatch: ppo_loss normalises the advantages it is given...
    assert loss["minibatch", "raw"] == pytest.approx(loss["none", "norm"], rel=1e-5)
    # ...batch: the loop normalised the rollout once, ppo_loss leaves them be.
    assert loss["batch", "raw"] == pytest.approx(loss["none", "raw"], rel=1e-6)
    assert loss["batch", "raw"] != pytest.approx(loss["minibatch", "raw"], rel=1e-3)
    lop = agent_module.resolve_args(agent_module.Args(protocol="lop"))
    sc = agent_module.resolve_args(agent_module.Args(protocol="sc"))
    assert (lop.norm_adv, sc.norm_adv) == ("batch", "minibatch")
    # The loop normalises b_advantages before minibatching only in "batch" mode.
    source = AGENT.read_text()
    assert 'if args.norm_adv == "batch":\n' in source


def test_weight_decay_is_adams_coupled_decay_with_cbp(agent_module):
    resolve = agent_module.resolve_args
    assert resolve(agent_module.Args(reg="bp")).weight_decay == 0.0
    assert resolve(agent_module.Args(reg="cbp")).weight_decay == 1e-4  # LoP's CBP
    assert resolve(agent_module.Args(reg="cbp+l2")).weight_decay == 1e-4
    assert resolve(agent_module.Args(reg="cbp", protocol="sc")).weight_decay == 0.0
    assert resolve(agent_module.Args(reg="cbp", weight_decay=0.0)).weight_decay == 0.0
    # LoP's ReDo (lop/rl/cfg/ant/redo.yml:21) also decays; SC has no ReDo row.
    assert resolve(agent_module.Args(reg="redo")).weight_decay == 1e-4
    assert resolve(agent_module.Args(reg="redo+l2")).weight_decay == 1e-4
    assert resolve(agent_module.Args(reg="redo", protocol="sc")).weight_decay == 0.0
    # Coupled: Adam's step is the same as with lambda*theta added to the gradient.
    torch.manual_seed(0)
    weights = torch.randn(5)
    decayed = weights.clone().requires_grad_()
    coupled = weights.clone().requires_grad_()
    gradient = torch.randn(5)
    opt_decay = torch.optim.Adam([decayed], lr=0.1, weight_decay=1e-2)
    opt_coupled = torch.optim.Adam([coupled], lr=0.1)
    decayed.grad, coupled.grad = gradient.clone(), gradient + 1e-2 * weights
    opt_decay.step()
    opt_coupled.step()
    assert torch.allclose(decayed, coupled)


def test_unknown_reg_is_a_clear_error(smoke_runs):
    runs, results = smoke_runs
    # sys.exit("error: ...") prints one line, no traceback, before any run directory.
    assert results["nope"].startswith("SystemExit: error: unknown method 'nope'")
    assert not (runs / "nope").exists()


def test_resume_takes_display_total_timesteps_and_divergence_flags_only(
    agent_module, smoke_runs
):
    runs, _ = smoke_runs
    run_dir = str(only_run(runs / "l2"))  # saved with --no-progress --no-plot
    saved = agent_module.parse_args(["--resume", run_dir])
    assert (saved.progress, saved.plot, saved.seed) == (False, False, 1)
    with pytest.raises(ValueError, match="--seed cannot be changed on --resume"):
        agent_module.parse_args(["--resume", run_dir, "--seed", "7"])
    shown = agent_module.parse_args(
        ["--resume", run_dir, "--progress", "--plot", "--on-divergence", "stop"]
    )
    assert shown.progress and shown.plot and shown.total_timesteps == 256
    assert shown.on_divergence == "stop" and saved.on_divergence == "fail"
    extended = agent_module.parse_args(["--resume", run_dir, "--total-timesteps=512"])
    assert extended.total_timesteps == 512 and not extended.progress


def test_resume_of_a_missing_directory_is_a_clear_error(agent_module, tmp_path):
    with pytest.raises(FileNotFoundError, match="args.json"):
        agent_module.parse_args(["--resume", str(tmp_path / "absent")])


# -- spectral density storage (clenv.metrics.spectral, which the agent logs with) -----
def test_rebinned_density_keeps_mass_and_narrow_peaks():
    fine = np.linspace(-50.0, 50.0, 200_001)
    # Mass 0.7 in a broad bump at 0, 0.3 in a narrow spike at 12.34 (between points
    # of the coarse grid, which interpolation would miss).
    density = 0.7 * np.exp(-(fine**2) / 2) / np.sqrt(2 * np.pi)
    density += 0.3 * np.exp(-((fine - 12.34) ** 2) / (2 * 1e-4)) / np.sqrt(2e-4 * np.pi)
    grid = log_spaced_grid(1e-3, 1e3, 20)
    rebinned = rebin_density(fine, density, grid)
    widths = np.diff(
        np.concatenate([[grid[0]], (grid[1:] + grid[:-1]) / 2, [grid[-1]]])
    )
    mass = rebinned * widths
    assert mass.sum() == pytest.approx(1.0, abs=1e-6)
    assert mass[np.abs(grid - 12.34) < 1.0].sum() == pytest.approx(0.3, abs=1e-3)
    # The cells of the points in [-1, 1] reach to the midpoint after 1.
    edge = (1.0 + grid[grid > 1.0][0]) / 2
    inner = 0.7 * math.erf(edge / math.sqrt(2))
    assert mass[np.abs(grid) <= 1.0].sum() == pytest.approx(inner, abs=1e-4)
    assert np.all(np.diff(grid) > 0) and grid[0] == -1e3 and 0.0 in grid


# -- divergence (clenv.divergence) and bad arguments ---------------------------------
# Runs the agent in-process after wrapping Adam.step to put a NaN into the first
# parameter (actor_logstd) at its 6th call: the second update, after the
# checkpoint of step 128.
NAN_DRIVER = textwrap.dedent(
    """
    import runpy, sys, torch
    _step, _calls = torch.optim.Adam.step, [0]
    def _nan_step(self, *args, **kwargs):
        out = _step(self, *args, **kwargs)
        _calls[0] += 1
        if _calls[0] == 6:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out
    torch.optim.Adam.step = _nan_step
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)
DIVERGE = [*SMOKE, "--total-timesteps", "512", "--checkpoint-every", "128",
           "--divergence-check-every", "1",
           "--plasticity-every", "0"]  # fmt: skip


def test_nan_stops_the_run_naming_it_and_resume_starts_from_a_finite_checkpoint(
    tmp_path,
):
    from clenv.checkpoint import list_checkpoints, load_latest_checkpoint

    done = subprocess.run(
        [sys.executable, "-c", NAN_DRIVER, str(AGENT), *DIVERGE,
         "--runs-dir", str(tmp_path)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    message = "training diverged: non-finite parameter 'actor_logstd' (nan) at step 256"
    assert f"error: {message}, task 0" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    run_dir = only_run(tmp_path)
    assert read_series(run_dir / "metrics.h5", "charts/diverged")["step"].tolist() == [
        256
    ]
    diverged = json.loads((run_dir / "args.json").read_text())["diverged"]
    assert (diverged["kind"], diverged["tensor"], diverged["action"]) == (
        "parameter", "actor_logstd", "fail"
    )  # fmt: skip
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [128]
    step, state = load_latest_checkpoint(run_dir / "checkpoints")
    assert step == 128
    assert all(torch.isfinite(v).all() for v in state["objects"]["model"].values())
    # Resumed without the injected NaN from the finite checkpoint, it finishes.
    resumed = run_agent(["--resume", str(run_dir), "--no-progress", "--no-plot"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stdout and "at step 128" in resumed.stdout
    assert "diverged" not in json.loads((run_dir / "args.json").read_text())
    steps = read_series(run_dir / "metrics.h5", "losses/value_loss")["step"]
    assert steps.tolist() == [128, 256, 384, 512]


def test_a_non_finite_optimizer_state_is_a_divergence_too(tmp_path):
    """Weights finite, an Adam moment NaN at the checkpoint of step 128: Run.save
    refuses it (clenv.run.NonFiniteStateError) and the guard reports it by name."""
    driver = NAN_DRIVER.replace("_calls[0] == 6", "_calls[0] == 4").replace(
        'self.param_groups[0]["params"][0].fill_',
        'self.state[self.param_groups[0]["params"][0]]["exp_avg"].fill_',
    )
    done = subprocess.run(
        [sys.executable, "-c", driver, str(AGENT), *DIVERGE,
         "--runs-dir", str(tmp_path)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "training diverged: non-finite state 'optimizer" in done.stderr
    assert "at step 128, task 0" in done.stderr, done.stderr[-2000:]
    run_dir = only_run(tmp_path)
    assert not list((run_dir / "checkpoints").glob("*.pt"))
    diverged = json.loads((run_dir / "args.json").read_text())["diverged"]
    assert diverged["kind"] == "state" and diverged["step"] == 128


def test_large_learning_rate_stops_cleanly(tmp_path):
    """--learning-rate 1e3: the first update sends the log-std to +-1000, the next
    loss is NaN; --on-divergence stop ends the run with exit 0 and logs it."""
    done = run_agent(
        [*DIVERGE, "--learning-rate", "1e3", "--on-divergence", "stop",
         "--runs-dir", str(tmp_path)]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    message = "training diverged: non-finite loss 'loss' (nan) at step 128, task 0"
    assert f"stopped (--on-divergence stop): {message}" in done.stdout, done.stdout
    run_dir = only_run(tmp_path)
    metrics = run_dir / "metrics.h5"
    assert read_series(metrics, "charts/diverged")["value"].tolist() == [1.0]
    assert json.loads((run_dir / "args.json").read_text())["diverged"]["action"] == (
        "stop"
    )
    assert not list((run_dir / "checkpoints").glob("*.pt"))


# The disk fills at the first checkpoint: its write fails with ENOSPC.
FULL_DISK_DRIVER = textwrap.dedent(
    """
    import errno, runpy, sys
    import clenv.run
    def _full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    clenv.run.save_checkpoint = _full
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def test_damaged_checkpoints_and_a_full_disk_end_with_one_clear_line(tmp_path):
    """clenv.run.CheckpointError (--resume, every checkpoint damaged) and
    clenv.run.StorageError (the disk full at a checkpoint) exit 1 with
    `error: <message>` and no traceback."""
    from clenv.checkpoint import list_checkpoints

    short = [*DIVERGE, "--total-timesteps", "256"]
    done = run_agent([*short, "--runs-dir", str(tmp_path / "damaged")])
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = only_run(tmp_path / "damaged")
    files = [path for _, path in list_checkpoints(run_dir / "checkpoints")]
    assert len(files) == 2
    for path in files:
        path.write_bytes(b"\0" * 100)
    resumed = run_agent(["--resume", str(run_dir), "--no-progress", "--no-plot"])
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr, resumed.stderr[-2000:]
    assert resumed.stderr.startswith(f"error: --resume {run_dir} cannot resume")
    assert all(str(path) in resumed.stderr for path in files)

    full = subprocess.run(
        [sys.executable, "-c", FULL_DISK_DRIVER, str(AGENT), *short,
         "--runs-dir", str(tmp_path / "full")],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert full.returncode == 1, full.stderr[-2000:]
    assert "Traceback" not in full.stderr, full.stderr[-2000:]
    message = full.stderr[full.stderr.index("error: ") :]
    assert message.startswith("error: checkpointing step 128 failed at "), message
    assert "The disk is full" in message and "--resume" in message


BAD_VALUES = {
    ("--learning-rate", "-1e-3"): "--learning-rate must be a finite number > 0",
    ("--learning-rate", "nan"): "--learning-rate must be a finite number > 0",
    ("--adam-betas", "0.9", "1.5"): "--adam-betas takes two numbers in [0, 1)",
    ("--gamma", "5"): "--gamma must be in [0, 1], got 5.0",
    ("--gae-lambda", "-0.1"): "--gae-lambda must be in [0, 1]",
    ("--adam-eps", "-1"): "--adam-eps must be a finite number >= 0",
    ("--max-grad-norm", "0"): "--max-grad-norm must be a finite number > 0",
    ("--curvature-epsilons", "-0.01", "0.1"): "--curvature-epsilons must be finite",
    ("--num-steps", str(2**40)): "samples per rollout; at most",
    ("--divergence-check-every", "-1"): "--divergence-check-every must be >= 0",
}


@pytest.mark.parametrize("argv", list(BAD_VALUES), ids=" ".join)
def test_bad_values_are_argument_errors(agent_module, argv):
    with pytest.raises(ValueError) as error:
        agent_module.check_args([*argv, "--env-id", "Pendulum-v1"])
    assert BAD_VALUES[argv] in str(error.value)
