"""clenv.run: start, save, restore into new objects, resume a run directory."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import random
import subprocess
import sys
import tempfile

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from torch import nn

import clenv
import clenv.run
from clenv.checkpoint import RestorableEnv, list_checkpoints, save_checkpoint
from clenv.logger import read_series
from clenv.methods import make_method
from clenv.run import CheckpointError, NonFiniteStateError, StorageError
from clenv.settings import protocol_defaults

gym.register_envs(clenv)

ENV_ID = "clenv/SlipperyHopper-v0"


@dataclasses.dataclass
class Args:
    runs_dir: str = "runs"
    exp_name: str = "test_run"
    seed: int = 3
    resume: str | None = None
    env_id: str = ENV_ID
    reg: str = "cbp"
    total_timesteps: int = 100
    hidden_sizes: tuple[int, ...] = (16,)
    betas: tuple[float, float] | None = (0.9, 0.999)
    keep_checkpoints: int = 2
    progress: bool = True


class Parts:
    """Everything a training loop holds, freshly built (same seed, same config)."""

    def __init__(self, args: Args) -> None:
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        self.envs = gym.wrappers.vector.RecordEpisodeStatistics(
            gym.vector.SyncVectorEnv(
                [
                    lambda i=i: RestorableEnv(
                        gym.make(args.env_id, switch_every=15), index=i
                    )
                    for i in range(2)
                ],
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            )
        )
        obs_dim = self.envs.single_observation_space.shape[0]
        act_dim = self.envs.single_action_space.shape[0]
        self.model = nn.Sequential(
            nn.Linear(obs_dim, args.hidden_sizes[0]),
            nn.ReLU(),
            nn.Linear(args.hidden_sizes[0], act_dim),
        ).double()
        self.optimizer = torch.optim.Adam(self.model.parameters(), betas=args.betas)
        # a high replacement rate: the method's own RNG and counters matter
        self.method = make_method(
            "cbp",
            self.model,
            self.optimizer,
            replacement_rate=0.05,
            maturity_threshold=2,
        )

    def steps(self, obs: np.ndarray, count: int) -> tuple[list, np.ndarray]:
        """``count`` env steps with a noisy policy and one update each; a trace."""
        trace = []
        for _ in range(count):
            inputs = torch.as_tensor(obs)
            action = self.model(inputs) + 0.1 * torch.randn(2, 3, dtype=torch.float64)
            loss = (action**2).mean() + float(np.random.rand()) + random.random()
            self.optimizer.zero_grad()
            loss.backward()
            self.method.after_backward()
            self.optimizer.step()
            self.method.after_step(inputs)
            obs, reward, _, _, infos = self.envs.step(
                action.detach().clamp(-1, 1).numpy()
            )
            trace.append((obs.copy(), reward.copy(), infos["task_id"].copy()))
            if "episode" in infos:
                trace.append(infos["episode"]["r"][infos["_episode"]].copy())
        trace.append([p.detach().clone() for p in self.model.parameters()])
        return trace, obs


def assert_same(first, second) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        if isinstance(a, tuple | list):
            assert_same(a, b)
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            np.testing.assert_array_equal(a, b)


def test_fresh_start_save_restore_continues_bit_identically(tmp_path, capsys):
    args = Args(runs_dir=str(tmp_path))
    parts = Parts(args)
    run = clenv.run.start(
        args, agent="test", extra_args={"note": "x"}, tensorboard=False
    )
    assert run.restore(model=parts.model, envs=parts.envs) is None  # fresh
    assert run.run_dir.parent == tmp_path and not run.resumed
    saved_args = json.loads((run.run_dir / "args.json").read_text())
    assert saved_args["hidden_sizes"] == [16] and saved_args["note"] == "x"
    obs, _ = parts.envs.reset(seed=args.seed)
    _, obs = parts.steps(obs, 25)  # crosses a task switch and some episodes
    path = run.save(
        25,
        model=parts.model,
        optimizer=parts.optimizer,
        method=parts.method,
        envs=parts.envs,
        extra={"obs": obs, "note": [1, 2]},
    )
    assert path.exists() and run.global_step == 0
    expected, _ = parts.steps(obs, 40)
    parts.envs.close()

    # a resumed run: new objects (their RNGs advanced differently), the same future
    resumed_args = clenv.run.resume_args(Args(resume=str(run.run_dir)), argv=[])
    assert resumed_args == dataclasses.replace(args, resume=str(run.run_dir))
    assert isinstance(resumed_args.hidden_sizes, tuple)
    fresh = Parts(resumed_args)
    fresh.envs.reset(seed=99)
    torch.rand(5), np.random.rand(), random.random()
    resumed = clenv.run.start(resumed_args, agent="test", tensorboard=False)
    assert resumed.resumed and resumed.global_step == 25 and not resumed.finished
    extra = resumed.restore(
        model=fresh.model,
        optimizer=fresh.optimizer,
        method=fresh.method,
        envs=fresh.envs,
    )
    assert extra["note"] == [1, 2]
    actual, _ = fresh.steps(extra["obs"], 40)
    assert_same(actual, expected)
    fresh.envs.close()
    out = capsys.readouterr().out
    assert f"resumed {run.run_dir} at step 25" in out


def test_restore_into_new_objects_gives_identical_state(tmp_path):
    args = Args(runs_dir=str(tmp_path))
    parts = Parts(args)
    run = clenv.run.start(args, agent="test", tensorboard=False)
    obs, _ = parts.envs.reset(seed=args.seed)
    _, obs = parts.steps(obs, 5)
    run.save(5, model={"net": parts.model}, optimizer=parts.optimizer, envs=parts.envs)
    draws = (torch.rand(3), np.random.rand(2), random.random())
    stats = {k: getattr(parts.envs, k) for k in ("episode_returns", "episode_count")}
    run.close()

    resumed = clenv.run.start(
        Args(runs_dir=str(tmp_path), resume=str(run.run_dir)),
        agent="test",
        tensorboard=False,
    )
    fresh = Parts(args)
    fresh.envs.reset(seed=7)
    resumed.restore(
        model={"net": fresh.model}, optimizer=fresh.optimizer, envs=fresh.envs
    )
    for a, b in zip(parts.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        parts.optimizer.state.values(), fresh.optimizer.state.values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.rand(3), draws[0])
    np.testing.assert_array_equal(np.random.rand(2), draws[1])
    assert random.random() == draws[2]
    np.testing.assert_array_equal(fresh.envs.episode_returns, stats["episode_returns"])
    assert fresh.envs.episode_count == stats["episode_count"]
    # the env's next step is the same
    action = np.zeros((2, 3))
    first, second = parts.envs.step(action), fresh.envs.step(action)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    # the checkpoint lacks the method: a clear error
    with pytest.raises(ValueError, match="'method'"):
        resumed.restore(method=fresh.method)
    parts.envs.close()
    fresh.envs.close()


def test_resume_args_overrides_and_logs(tmp_path, capsys):
    args = Args(runs_dir=str(tmp_path), hidden_sizes=(8, 8), betas=None)
    run = clenv.run.start(args, agent="test", tensorboard=False)
    run.logger.log_scalar("charts/x", 1.0, step=1)
    run.logger.log_scalar("charts/x", 2.0, step=9)
    run.save(5, extra={"a": 1})
    run.save(9, extra={"a": 2}, finished=True)
    run.save(7, extra={"a": 3})
    assert [s for s, _ in list_checkpoints(run.checkpoint_dir)] == [7, 9]  # keep 2
    run.close()
    # the command line: only listed overrides given as flags change saved values
    argv = ["--resume", str(run.run_dir), "--total-timesteps", "500"]
    resumed_args = clenv.run.parse_args(Args, overrides=("total_timesteps",), argv=argv)
    assert resumed_args.total_timesteps == 500 and resumed_args.seed == 3
    # any other flag is refused, naming it, rather than silently ignored
    for flags, refused in ((["--seed", "9"], "--seed"),
                           (["--seed=9", "--no-progress"], "--seed, --no-progress")):  # fmt: skip
        with pytest.raises(
            ValueError, match=f"^{refused} cannot be changed on --resume"
        ):
            clenv.run.parse_args(
                Args, overrides=("total_timesteps",), argv=argv + flags
            )
    assert resumed_args.hidden_sizes == (8, 8) and resumed_args.betas is None
    with pytest.raises(ValueError, match="not fields"):
        clenv.run.resume_args(resumed_args, overrides=("no_such",))
    # a boolean override in its --no-<flag> form, and only when it is given
    for flags, progress in (["--no-progress"], False), ([], True):
        resumed_args = clenv.run.parse_args(
            Args, overrides=("total_timesteps", "progress"), argv=argv + flags
        )
        assert resumed_args.progress is progress
        assert resumed_args.total_timesteps == 500 and resumed_args.seed == 3
    # a copied run resumes where it lives now and prints its own paths
    copy = tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    run.run_dir.rename(copy)
    resumed_args = dataclasses.replace(resumed_args, resume=str(copy))
    resumed = clenv.run.start(resumed_args, agent="test", tensorboard=False)
    assert resumed.run_dir == copy and resumed.global_step == 9 and resumed.finished
    assert resumed.restore() == {"a": 2}
    assert json.loads((copy / "args.json").read_text())["total_timesteps"] == 500
    assert all(str(copy) in line for line in resumed.paths().values())
    resumed.print_paths()
    assert f"logs:        {copy}  (metrics.h5" in capsys.readouterr().out
    resumed.close()
    with pytest.raises(FileNotFoundError, match="args.json"):
        clenv.run.start(Args(resume=str(tmp_path)), agent="test", tensorboard=False)


def test_restore_of_an_older_checkpoint_layout_is_a_clear_error(tmp_path):
    args = Args(runs_dir=str(tmp_path))
    run = clenv.run.start(args, agent="test", tensorboard=False)
    # what the agents saved before clenv.run: their objects at the top level
    model = nn.Linear(2, 1)
    save_checkpoint(run.checkpoint_dir, {"agent": model.state_dict()}, 4)
    run.close()
    resumed = clenv.run.start(
        Args(runs_dir=str(tmp_path), resume=str(run.run_dir)),
        agent="test",
        tensorboard=False,
    )
    with pytest.raises(ValueError) as error:
        resumed.restore(model=model)
    message = str(error.value)
    assert "ckpt_000000000004.pt is not a clenv.run checkpoint" in message
    assert "['agent', 'global_step']" in message
    assert "afresh (without --resume)" in message
    resumed.close()


def test_vector_env_resets_in_the_step_that_ends_an_episode():
    envs = clenv.run.vector_env([lambda: gym.make("Pendulum-v1")] * 2)
    assert isinstance(envs.env, gym.vector.SyncVectorEnv)
    obs, _ = envs.reset(seed=0)
    for _ in range(200):  # Pendulum truncates after 200 steps
        obs, _, _, truncations, infos = envs.step(np.zeros((2, 1), np.float32))
    # SAME_STEP: the step that ends the episodes returns the reset observations and
    # carries the final ones, and the episode statistics
    assert truncations.all() and infos["_final_obs"].all()
    assert not np.array_equal(np.stack(infos["final_obs"]), obs)
    assert infos["_episode"].all() and (infos["episode"]["l"] == 200).all()
    assert envs.episode_count == 2
    envs.close()


def test_crossed_multiple_is_due_once_per_interval():
    # a loop advancing 64 steps at a time, an interval of 100: due after the batch
    # that reaches or passes 100, 200, ...
    due = [
        step for step in range(64, 641, 64) if clenv.run.crossed_multiple(step, 100, 64)
    ]
    assert due == [128, 256, 320, 448, 512, 640]
    # what the PPO loop tested before: step % every < batch
    for every, batch in ((100, 64), (64, 64), (50, 128), (7, 3)):
        for step in range(batch, 20 * batch, batch):
            expected = step % every < batch
            assert clenv.run.crossed_multiple(step, every, batch) == expected
    assert not clenv.run.crossed_multiple(640, 0, 64)  # 0: never


def test_fill_unset_and_check_counts_name_the_flag():
    args = Args(betas=None, keep_checkpoints=0)
    clenv.run.fill_unset(args, {"betas": (0.5, 0.6), "seed": 99})
    assert args.betas == (0.5, 0.6) and args.seed == 3  # only unset fields
    clenv.run.check_counts(args, positive=("seed",), non_negative=("keep_checkpoints",))
    with pytest.raises(ValueError, match=r"^--keep-checkpoints must be >= 1, got 0$"):
        clenv.run.check_counts(args, positive=("seed", "keep_checkpoints"))
    args.total_timesteps = -1
    with pytest.raises(ValueError, match=r"--total-timesteps must be >= 0 \(0 turns"):
        clenv.run.check_counts(
            args, non_negative=("keep_checkpoints", "total_timesteps")
        )


def test_check_ranges_names_the_flag_and_what_it_allows():
    from types import SimpleNamespace

    ranges = {
        "learning_rate": "> 0", "eps": ">= 0", "gamma": "[0, 1]",
        "momentum": "[0, 1)", "ent_coef": "finite",
        "max_grad_norm": "> 0 (or unset: no clipping)",
        "epsilons": "> 0 (thresholds on |eigenvalue|)", "batch_size": "<= 100",
    }  # fmt: skip
    good = dict(learning_rate=1e-3, eps=0.0, gamma=1.0, momentum=0.0, ent_coef=-5.0,
                max_grad_norm=None, epsilons=(0.1, 1.0), batch_size=100)  # fmt: skip
    clenv.run.check_ranges(SimpleNamespace(**good), ranges)
    bad = {
        "learning_rate": (0.0, "--learning-rate must be a finite number > 0, got 0.0"),
        "eps": (-1e-9, "--eps must be a finite number >= 0, got -1e-09"),
        "gamma": (1.5, "--gamma must be in [0, 1], got 1.5"),
        "momentum": (1.0, "--momentum must be in [0, 1), got 1.0"),
        "ent_coef": (float("inf"), "--ent-coef must be a finite number, got inf"),
        "max_grad_norm": (
            0.0, "--max-grad-norm must be a finite number > 0 (or unset: no "
            "clipping), got 0.0",
        ),
        "epsilons": (
            (0.1, float("nan")), "--epsilons must be finite numbers > 0 (thresholds "
            "on |eigenvalue|), got (0.1, nan)",
        ),
        "batch_size": (2**70, f"--batch-size must be at most 100, got {2**70:,}"),
    }  # fmt: skip
    for key, (value, message) in bad.items():
        with pytest.raises(ValueError) as caught:
            clenv.run.check_ranges(SimpleNamespace(**{**good, key: value}), ranges)
        assert str(caught.value) == message
    with pytest.raises(ValueError, match="--gamma must be in"):  # nan: out of range
        clenv.run.check_ranges(SimpleNamespace(**{**good, "gamma": float("nan")}),
                               ranges)  # fmt: skip


def test_exit_on_error_turns_run_errors_into_one_line():
    with pytest.raises(SystemExit) as caught, clenv.run.exit_on_error():
        raise CheckpointError("every checkpoint damaged: a.pt, b.pt", [])
    assert caught.value.code == "error: every checkpoint damaged: a.pt, b.pt"
    with pytest.raises(SystemExit) as caught, clenv.run.exit_on_error():
        raise StorageError("the disk is full")
    assert caught.value.code == "error: the disk is full"
    with pytest.raises(SystemExit), clenv.run.exit_on_error(FileNotFoundError):
        raise FileNotFoundError("no args.json")
    with pytest.raises(KeyError), clenv.run.exit_on_error():
        raise KeyError("not a run error")


def test_probe_env_and_protocol_env_kwargs():
    env = clenv.run.probe_env(ENV_ID, {"switch_every": 15})
    assert isinstance(env.unwrapped, clenv.ContinualEnv)
    assert isinstance(env.action_space, gym.spaces.Box)
    with pytest.raises(ValueError, match="not_a_kwarg"):
        clenv.run.probe_env(ENV_ID, {"not_a_kwarg": 1})
    with pytest.raises(ValueError, match="NoSuchEnv"):
        clenv.run.probe_env("NoSuchEnv-v0", {})
    for paper in ("lop", "sc"):
        rows = protocol_defaults("slippery_ant", paper, kind="env")
        assert rows  # the benchmark has env rows
        given = {"switch_at": "given", "extra": 1}
        kwargs = clenv.run.protocol_env_kwargs("slippery_ant", paper, given, seed=7)
        assert kwargs == {"task_seed": 7, **rows, **given}
        only = clenv.run.protocol_env_kwargs(
            "slippery_ant", paper, {}, seed=7, names=["switch_at"]
        )
        assert only == {"task_seed": 7, "switch_at": rows["switch_at"]}


def test_plot_draws_plots_png_and_never_raises(tmp_path, capsys):
    empty = clenv.run.start(Args(runs_dir=str(tmp_path / "a")), agent="test")
    empty.close()
    empty.plot()  # nothing logged: reported, not raised
    assert "plots.png:   not drawn (" in capsys.readouterr().out
    run = clenv.run.start(Args(runs_dir=str(tmp_path / "b")), agent="test")
    for step in range(1, 4):
        run.logger.log_scalar("charts/episodic_return", float(step), step)
    run.close()
    run.plot()
    assert (run.run_dir / "plots.png").stat().st_size > 0
    assert f"plots.png:   {run.run_dir / 'plots.png'}" in capsys.readouterr().out


# -- faults: damaged checkpoints, divergence, full or unwritable disks -----------------


def started_run(tmp_path, steps=(5, 9)):
    run = clenv.run.start(Args(runs_dir=str(tmp_path)), agent="test", tensorboard=False)
    for step in range(1, 11):
        run.logger.log_scalar("charts/x", float(step), step=step)
    for step in steps:
        run.save(step, model=nn.Linear(2, 1), extra={"step": step})
    run.close()
    return run.run_dir


def resume(run_dir, **changes):
    args = Args(runs_dir=str(run_dir.parent), resume=str(run_dir), **changes)
    return clenv.run.start(args, agent="test", tensorboard=False)


def test_resume_with_every_checkpoint_damaged_stops_and_keeps_the_logs(tmp_path):
    run_dir = started_run(tmp_path)
    files = [path for _, path in list_checkpoints(run_dir / "checkpoints")]
    for path in files:  # what a new user tried: corrupt every file, then --resume
        path.write_bytes(b"\0" * 100)
    before = (run_dir / "metrics.h5").read_bytes()
    with pytest.raises(CheckpointError) as caught:
        resume(run_dir)
    message = str(caught.value)
    assert message.startswith(f"--resume {run_dir} cannot resume")
    assert all(str(path) in message for path in files)
    assert "without --resume" in message and "start this run over" in message
    # nothing was started over: the log is untouched
    assert (run_dir / "metrics.h5").read_bytes() == before


def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, capsys):
    run_dir = started_run(tmp_path)
    newest = list_checkpoints(run_dir / "checkpoints")[-1][1]
    newest.write_bytes(newest.read_bytes()[:-200])  # truncated by a full disk
    with pytest.warns(UserWarning, match=f"skipping unreadable checkpoint {newest}"):
        resumed = resume(run_dir)
    assert resumed.global_step == 5 and resumed.restore(model=nn.Linear(2, 1)) == {
        "step": 5
    }
    assert read_series(run_dir / "metrics.h5", "charts/x")["step"].tolist() == [
        1, 2, 3, 4, 5
    ]  # fmt: skip
    resumed.close()


@pytest.mark.parametrize("where", ["model", "optimizer", "method"])
def test_save_refuses_a_non_finite_state_and_keeps_the_checkpoints(tmp_path, where):
    parts = Parts(Args())
    run = clenv.run.start(Args(runs_dir=str(tmp_path)), agent="test", tensorboard=False)
    save = functools.partial(
        run.save, model=parts.model, optimizer=parts.optimizer, method=parts.method
    )
    parts.steps(parts.envs.reset(seed=0)[0], 3)
    save(3)
    with torch.no_grad():
        if where == "model":
            parts.model[2].bias[1] = float("nan")
            name = "model/2.bias"
        elif where == "optimizer":
            parts.optimizer.state[parts.model[0].weight]["exp_avg"][0, 0] = float("inf")
            name = "optimizer/state/0/exp_avg"
        else:
            state = parts.method.state_dict()  # CBP: per-layer unit utilities
            state["utilities"][0][0] = float("nan")
            parts.method.load_state_dict(state)
            name = "method/utilities/0"
    with pytest.raises(NonFiniteStateError) as caught:
        save(6)
    assert caught.value.name.startswith(name) and caught.value.step == 6
    assert "Nothing was written" in str(caught.value)
    assert [step for step, _ in list_checkpoints(run.checkpoint_dir)] == [3]
    run.close()


def test_unwritable_runs_dir_fails_at_start_with_the_path_and_fix(
    tmp_path, monkeypatch
):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", denied)
        with pytest.raises(StorageError) as caught:
            clenv.run.start(Args(runs_dir=str(tmp_path / "runs")), agent="test")
    assert caught.value.errno == errno.EACCES
    assert str(tmp_path / "runs") in str(caught.value)
    assert "--runs-dir" in str(caught.value) and "chmod" in str(caught.value)
    assert not list((tmp_path / "runs").iterdir())  # no half-made run


READ_ONLY_START = """
import dataclasses, sys
import clenv.run
@dataclasses.dataclass
class Args:
    runs_dir: str = sys.argv[1]
    exp_name: str = "x"
    seed: int = 0
    resume: str | None = None
    env_id: str = "Pendulum-v1"
    reg: str = "bp"
try:
    clenv.run.start(Args(), agent="test", tensorboard=False)
except clenv.run.StorageError as error:
    print("STORAGE", error.errno, error)
"""


def test_read_only_runs_dir_fails_at_start(tmp_path):
    """A directory without write permission, or (as root, whom permissions do not
    bind) a read-only bind mount in a user namespace."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    script = [sys.executable, "-c", READ_ONLY_START, str(locked / "runs")]
    if os.access(locked, os.W_OK):  # root: make the filesystem itself read-only
        mount = f"mount --bind {locked} {locked} && mount -o remount,bind,ro {locked}"
        if subprocess.run(["unshare", "-rm", "sh", "-c", mount]).returncode != 0:
            pytest.skip("as root without unshare -rm nothing here is read-only")
        script = ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" "$@"', *script]
    result = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("STORAGE "), result.stdout + result.stderr
    _, code, message = result.stdout.split(" ", 2)
    assert int(code) in (errno.EACCES, errno.EROFS)
    assert str(locked / "runs") in message and "--runs-dir" in message
    assert not list(locked.iterdir())


def test_full_disk_during_a_run_stops_it_with_every_row_intact(tmp_path, monkeypatch):
    import clenv.logger

    free = {"bytes": 1 << 40}
    monkeypatch.setattr(clenv.logger, "free_bytes", lambda path: free["bytes"])
    monkeypatch.setattr(clenv.logger, "SPACE_CHECK_SECONDS", 0.0)
    run = clenv.run.start(Args(runs_dir=str(tmp_path)), agent="test", tensorboard=False)
    for step in range(1, 21):
        run.logger.log_scalar("charts/x", float(step), step=step)
    run.save(20, model=nn.Linear(2, 1))
    # too little space for the checkpoint and the reserve: nothing is written
    with monkeypatch.context() as patch:
        patch.setattr(clenv.logger, "MIN_FREE_BYTES", 1 << 60)
        with pytest.raises(StorageError, match="checkpointing step 21.*kept free"):
            run.save(21, model=nn.Linear(2, 1))
    # the checkpoint write itself fails: the old one and the log stay
    with monkeypatch.context() as patch:
        patch.setattr(
            os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
        )
        with pytest.raises(StorageError) as caught:
            run.save(21, model=nn.Linear(2, 1))
    assert caught.value.errno == errno.ENOSPC
    assert "checkpointing step 21" in str(caught.value)
    assert "--resume" in str(caught.value)
    assert [step for step, _ in list_checkpoints(run.checkpoint_dir)] == [20]
    assert read_series(run.run_dir / "metrics.h5", "charts/x")["step"].size == 20
    # the disk fills while logging: the run stops before HDF5 fails a write
    run = resume(run.run_dir)
    for step in range(21, 31):
        run.logger.log_scalar("charts/x", float(step), step=step)
    free["bytes"] = 1 << 20
    with pytest.raises(StorageError, match="disk is full") as caught:
        run.logger.log_scalar("charts/x", 31.0, step=31)
    assert caught.value.errno == errno.ENOSPC
    assert read_series(run.run_dir / "metrics.h5", "charts/x")["value"].tolist() == [
        float(step) for step in range(1, 31)
    ]
    # space freed again: the run resumes from its checkpoint
    free["bytes"] = 1 << 40
    resumed = resume(run.run_dir)
    assert resumed.global_step == 20
    resumed.close()


def test_truncated_metrics_file_advice_leads_to_a_working_resume(tmp_path):
    run_dir = started_run(tmp_path)
    metrics = run_dir / "metrics.h5"
    metrics.write_bytes(metrics.read_bytes()[:1000])
    with pytest.raises(OSError) as caught:
        resume(run_dir)
    message = str(caught.value)
    assert f"mv {metrics} {metrics}.damaged" in message
    metrics.rename(run_dir / "metrics.h5.damaged")  # following the advice
    with pytest.warns(UserWarning, match="starting a fresh one"):
        resumed = resume(run_dir)
    assert resumed.global_step == 9
    resumed.logger.log_scalar("charts/x", 10.0, step=10)
    resumed.close()
    with h5py.File(metrics, "r") as f:
        assert f.attrs["agent"] == "test" and f.attrs["env_id"] == ENV_ID
    assert read_series(metrics, "charts/x")["step"].tolist() == [10]


def test_every_start_and_resume_records_its_code_libraries_and_machine(tmp_path):
    from clenv.provenance import git_state

    args = Args(runs_dir=str(tmp_path))
    run = clenv.run.start(args, agent="test", tensorboard=False)
    run.save(4)
    run.close()
    (first,) = json.loads((run.run_dir / "args.json").read_text())["provenance"]
    assert first["torch"] == torch.__version__ and first["numpy"] == np.__version__
    assert first["clenv"] == clenv.__version__ and first["argv"] == sys.argv
    assert first["device"] and first["cpus"] == os.cpu_count()
    root = os.path.dirname(os.path.dirname(os.path.abspath(clenv.__file__)))
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"],
                          capture_output=True, text=True)  # fmt: skip
    if head.returncode == 0:  # a git checkout (CI's clean clone is one)
        assert first["git"]["commit"] == head.stdout.strip()
    # A resume appends an entry with the step it resumed at; the saved arguments
    # read back for the resume are the run's own (the provenance is not a field).
    resumed = clenv.run.start(
        dataclasses.replace(args, resume=str(run.run_dir)), agent="test",
        tensorboard=False,
    )  # fmt: skip
    resumed.close()
    saved = json.loads((run.run_dir / "args.json").read_text())
    assert [e.get("resumed_at") for e in saved["provenance"]] == [None, 4]
    with h5py.File(run.run_dir / "metrics.h5", "r") as f:
        assert json.loads(f.attrs["args_json"])["provenance"] == saved["provenance"]
    # Outside a git checkout there is no commit to record, and no error.
    assert git_state(tmp_path) is None
