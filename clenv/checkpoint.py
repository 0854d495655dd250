"""Atomic checkpoints and random-number-generator state capture.

Checkpoints are ``<dir>/ckpt_<global step, 12 digits>.pt`` files written by
:func:`save_checkpoint`: to a temporary file in the same directory, fsynced, then
``os.replace``-d into place, so a run killed at any moment leaves either the old or the
new checkpoint, never half a file. Each file is ``torch.save``'s zip archive, which
carries a CRC-32 checksum of every member; :func:`load_checkpoint` checks them all
before unpickling (``torch.load`` itself does not), so a file that still loads but was
damaged on disk is caught and named. Only the newest ``keep_last`` good checkpoints are kept;
damaged ones are removed first, so pruning never deletes a good checkpoint while
keeping a bad one. :func:`load_latest_checkpoint` returns the newest good checkpoint
(each damaged newer file is named in a warning); when there are checkpoints but none
is good it raises :class:`CheckpointError` naming every file, never returning None as
if the run had none.

:func:`capture_rng_state` / :func:`restore_rng_state` cover Python's ``random``, NumPy's
legacy global generator, torch's CPU generator and every CUDA device's generator, which
is what a training loop seeded in CleanRL's way draws from.

:class:`RestorableEnv` makes an environment's own state part of a checkpoint, so a
resumed run continues the very episode it was in: the base env's random generator, a
MuJoCo env's whole ``MjData`` (positions, velocities, warm start and the derived
quantities a reward reads before stepping), a classic-control env's ``state``, a clenv
env's task schedule, and the counters of every wrapper (``TimeLimit``'s elapsed steps,
...). It works through ``envs.call`` in sync and async vector envs;
:func:`capture_env_state` / :func:`restore_env_state` do that for a single env or a vector
env, with the counters of a vector ``RecordEpisodeStatistics``. :mod:`clenv.run` puts all
of it (and the model, optimizer and method) in one call.

Example:
    >>> import tempfile, torch
    >>> directory = tempfile.mkdtemp()
    >>> _ = save_checkpoint(directory, {"w": torch.ones(2)}, step=10)
    >>> step, state = load_latest_checkpoint(directory)
    >>> step, state["w"].tolist()
    (10, [1.0, 1.0])
"""

from __future__ import annotations

import copy
import errno
import io
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
#: The checkpoint directory inside a run directory.
CHECKPOINT_DIR = "checkpoints"
#: What a vector ``RecordEpisodeStatistics`` keeps between steps (its start times are
#: wall-clock times of this process and restart on resume).
EPISODE_STATISTICS_FIELDS = (
    "episode_count",
    "episode_returns",
    "episode_lengths",
    "prev_dones",
    "return_queue",
    "length_queue",
)
# Wrapper attributes that are configuration, rebuilt with the env, never state.
_STATIC_TYPES = (gym.Space, gym.envs.registration.EnvSpec)


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """Where the checkpoint of global ``step`` lives."""
    return Path(directory) / f"ckpt_{int(step):012d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    directory: str | Path,
    state: dict[str, Any],
    step: int,
    keep_last: int = 3,
    reserve_bytes: int = 0,
) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the last few.

    Args:
        directory: the checkpoint directory (created if missing).
        state: anything ``torch.save`` can pickle (state dicts, RNG states, ...). The
            global step is stored with it under ``"global_step"``.
        step: the global step this state belongs to; names the file.
        keep_last: how many good checkpoints to keep (older ones, and damaged ones,
            are deleted after the new one is in place); must be >= 1.
        reserve_bytes: free space to leave on the disk: with less than the
            checkpoint's size plus this free, nothing is written and an ``OSError``
            (``ENOSPC``) is raised.

    Returns:
        The checkpoint's path.
    """
    if keep_last < 1:
        raise ValueError(
            f"keep_last must be >= 1 (checkpoints to keep), got {keep_last}"
        )
    directory = Path(directory)
    archive = io.BytesIO()
    torch.save({**state, "global_step": int(step)}, archive)
    directory.mkdir(parents=True, exist_ok=True)
    if reserve_bytes > 0 and hasattr(os, "statvfs"):
        stat = os.statvfs(directory)
        free = stat.f_bavail * stat.f_frsize
        size = archive.getbuffer().nbytes
        if free < size + reserve_bytes:
            raise OSError(
                errno.ENOSPC,
                f"the checkpoint needs {size / 2**20:.1f} MiB plus "
                f"{reserve_bytes / 2**20:.1f} MiB kept free, only "
                f"{free / 2**20:.1f} MiB are free",
            )
    target = checkpoint_path(directory, step)
    fd, tmp_name = tempfile.mkstemp(prefix=".ckpt_", suffix=".tmp", dir=directory)
    try:
        # Serialised in memory first, so a full disk surfaces here as a plain
        # OSError (errno ENOSPC) from the write, not inside torch's zip writer.
        with os.fdopen(fd, "wb") as handle:
            handle.write(archive.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    prune_checkpoints(directory, keep_last)
    return target


class CheckpointError(ValueError):
    """A checkpoint is damaged, or a directory holds checkpoints but none is good.

    Attributes:
        problems: ``(path, reason)`` of every damaged file found.
    """

    def __init__(self, message: str, problems: list[tuple[Path, str]]) -> None:
        super().__init__(message)
        self.problems = problems


def load_checkpoint(
    path: str | Path, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """The state saved in one checkpoint file, after checking its checksums.

    Checkpoints hold RNG states and optimizer state (not only tensors), so they are
    loaded with ``weights_only=False``: load only checkpoints you wrote.

    Raises:
        CheckpointError: the file is damaged (:func:`verify_checkpoint`) or does not
            load.
    """
    path = Path(path)
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"{path} is damaged: {problem}", [(path, problem)])
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        reason = f"does not load ({type(error).__name__}: {error})"
        raise CheckpointError(f"{path} {reason}", [(path, reason)]) from error


def verify_checkpoint(path: str | Path) -> str | None:
    """None if ``path`` is an intact checkpoint, else what is wrong with it.

    Reads the whole zip archive and checks the CRC-32 of every member (the pickled
    structure and every tensor's bytes) without unpickling anything.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except Exception as error:  # BadZipFile, EOFError, ... from a damaged directory
        return (
            "unreadable, not a complete checkpoint archive "
            f"({type(error).__name__}: {error})"
        )
    if bad is not None:
        return f"checksum mismatch in {bad}"
    if not any(name.endswith("/data.pkl") for name in names):
        return "unreadable, no data.pkl in the archive"
    return None


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` good checkpoints, damaged ones first.

    A damaged file never survives while a good one is deleted: every damaged
    checkpoint is removed (with a warning naming it), then good ones beyond the newest
    ``keep_last``.

    Returns:
        The files deleted.
    """
    good: list[Path] = []
    removed: list[Path] = []
    for _, path in reversed(list_checkpoints(directory)):
        problem = verify_checkpoint(path)
        if problem is not None:
            warnings.warn(
                f"removing damaged checkpoint {path} ({problem})", stacklevel=3
            )
        elif len(good) < keep_last:
            good.append(path)
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def load_latest_checkpoint(
    directory: str | Path, map_location: str | torch.device | None = "cpu"
) -> tuple[int, dict[str, Any]] | None:
    """The newest good checkpoint as ``(step, state)``, or None if there is none.

    Damaged newer files (unreadable, or failing their checksum) are skipped, each
    named in a warning, and the newest good one is returned (see
    :func:`load_checkpoint` on trusting the files).

    Raises:
        CheckpointError: ``directory`` holds checkpoints but none of them is good; the
            message names every file and why it failed.
    """
    problems: list[tuple[Path, str]] = []
    for step, path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as error:
            problems.extend(error.problems)
            continue
        for bad, reason in problems:
            warnings.warn(
                f"skipping unreadable checkpoint {bad} ({reason}); using {path}",
                stacklevel=2,
            )
        return step, state
    if problems:
        listed = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        raise CheckpointError(
            f"no good checkpoint in {directory}; every one is damaged:\n{listed}\n"
            "Nothing was loaded. Restore the files from a backup, or start the run "
            "afresh on purpose (without --resume: a new run directory)",
            problems,
        )
    return None


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator a training loop draws from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned.

    CUDA states are restored when CUDA is available and the checkpoint has them (a run
    moved from a GPU machine to a CPU one keeps its CPU generators).
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            warnings.warn(
                f"checkpoint has {len(cuda_states)} CUDA generator states but "
                f"{torch.cuda.device_count()} devices are visible; restoring the "
                "common ones",
                stacklevel=2,
            )
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


class RestorableEnv(gym.Wrapper):
    """Adds ``get_env_state()`` / ``set_env_state(states)`` to any env, for resume.

    Put it outermost (``gym.make`` -> other wrappers -> this) so its methods are
    reachable through a vector env's ``call``. Because ``envs.call`` passes the same
    arguments to every sub-env, :meth:`set_env_state` takes the states of all sub-envs
    and picks its own by ``index``.

    What is captured: the ``np_random`` of the base env and of any env it is built on
    (``base_env``); a MuJoCo env's ``MjData`` in full
    (restored with ``mujoco.mj_copyData``, so the next step is bit-identical); an env's
    ``state`` attribute (classic control); a clenv env's schedule
    (``get_schedule_state``); and every wrapper's attributes except the wrapped env. An
    env whose dynamics keep other hidden state resumes from the captured parts only.

    Args:
        env: the env to wrap.
        index: this env's position in its vector env.

    Example:
        >>> env = RestorableEnv(gym.make("Pendulum-v1"))
        >>> _ = env.reset(seed=0)
        >>> snapshot = env.get_env_state()
        >>> first = env.step(env.action_space.sample() * 0)[0]
        >>> env.set_env_state([snapshot])
        >>> bool((env.step(env.action_space.sample() * 0)[0] == first).all())
        True
    """

    def __init__(self, env: gym.Env, index: int = 0) -> None:
        super().__init__(env)
        self.index = int(index)

    def get_env_state(self) -> dict[str, Any]:
        """This env's state as plain picklable objects."""
        base = self.env.unwrapped
        state: dict[str, Any] = {
            "np_random": [
                copy.deepcopy(env.np_random.bit_generator.state)
                for env in _base_envs(base)
            ],
            "wrappers": [_wrapper_state(w) for w in _wrapper_chain(self.env)],
        }
        if hasattr(base, "get_schedule_state"):
            # Restored first: applying a task may change the MuJoCo model.
            state["schedule"] = base.get_schedule_state()
        if _mujoco_data(base) is not None:
            state["mjdata"] = pickle.dumps(base.data)
        elif hasattr(base, "state"):
            state["state"] = copy.deepcopy(base.state)
        return state

    def set_env_state(self, states: list[dict[str, Any]] | tuple[dict[str, Any], ...]):
        """Restore the state of sub-env ``index`` from every sub-env's state."""
        if self.index >= len(states):
            raise ValueError(
                f"got states of {len(states)} envs but this is env {self.index}; "
                "resume with the same --num-envs as the checkpointed run"
            )
        state = states[self.index]
        base = self.env.unwrapped
        if "schedule" in state:
            base.set_schedule_state(state["schedule"])
        if "mjdata" in state:
            import mujoco

            if _mujoco_data(base) is None:
                raise ValueError(
                    "the checkpoint holds a MuJoCo state but this env is not a MuJoCo "
                    "env; resume with the same --env-id"
                )
            saved = pickle.loads(state["mjdata"])
            if saved.qpos.shape != base.data.qpos.shape:
                raise ValueError(
                    "the checkpoint's MuJoCo state does not fit this env's model; "
                    "resume with the same --env-id and --env-kwargs"
                )
            mujoco.mj_copyData(base.data, base.model, saved)
        elif "state" in state:
            base.state = copy.deepcopy(state["state"])
        envs = _base_envs(base)
        if len(envs) != len(state["np_random"]):
            raise ValueError(
                f"the checkpoint has {len(state['np_random'])} random generators, this "
                f"env {len(envs)}; resume with the same --env-id"
            )
        for env, rng_state in zip(envs, state["np_random"], strict=True):
            env.np_random.bit_generator.state = rng_state
        chain = _wrapper_chain(self.env)
        if len(chain) != len(state["wrappers"]):
            raise ValueError(
                f"the checkpoint has {len(state['wrappers'])} wrappers, this env "
                f"{len(chain)}; resume with the same agent version and arguments"
            )
        for wrapper, saved_vars in zip(chain, state["wrappers"], strict=True):
            for key, value in saved_vars.items():
                setattr(wrapper, key, copy.deepcopy(value))


def capture_env_state(envs: gym.Env | gym.vector.VectorEnv) -> dict[str, Any]:
    """The state of a single env or of every sub-env of a vector env, for a checkpoint.

    Each (sub-)env needs :class:`RestorableEnv` in its wrapper chain. For a vector env
    the counters of every vector ``RecordEpisodeStatistics`` around it are included
    (:data:`EPISODE_STATISTICS_FIELDS`), so episode returns continue across a resume.

    Returns:
        ``{"env_states": [one state per sub-env], "episode_statistics": [one dict per
        vector RecordEpisodeStatistics, outermost first]}``.
    """
    if isinstance(envs, gym.vector.VectorEnv):
        states = list(_vector_call(envs, "get_env_state"))
        statistics = [
            {k: copy.deepcopy(getattr(w, k)) for k in EPISODE_STATISTICS_FIELDS}
            for w in _episode_statistics_wrappers(envs)
        ]
        return {"env_states": states, "episode_statistics": statistics}
    return {
        "env_states": [_env_method(envs, "get_env_state")()],
        "episode_statistics": [],
    }


def restore_env_state(
    envs: gym.Env | gym.vector.VectorEnv, state: dict[str, Any]
) -> None:
    """Restore what :func:`capture_env_state` returned into the same kind of env."""
    if isinstance(envs, gym.vector.VectorEnv):
        if len(state["env_states"]) != envs.num_envs:
            raise ValueError(
                f"the checkpoint holds {len(state['env_states'])} sub-env states, this "
                f"vector env has {envs.num_envs}; resume with the same --num-envs"
            )
        _vector_call(envs, "set_env_state", state["env_states"])
        wrappers = _episode_statistics_wrappers(envs)
        if len(wrappers) != len(state["episode_statistics"]):
            raise ValueError(
                f"the checkpoint holds {len(state['episode_statistics'])} "
                f"RecordEpisodeStatistics wrappers, this vector env {len(wrappers)}; "
                "build the envs as the checkpointed run did"
            )
        for wrapper, fields in zip(wrappers, state["episode_statistics"], strict=True):
            for key, value in fields.items():
                setattr(wrapper, key, copy.deepcopy(value))
        return
    if len(state["env_states"]) != 1:
        raise ValueError(
            f"the checkpoint holds {len(state['env_states'])} sub-env states but this "
            "is a single env; pass the vector env the run was checkpointed with"
        )
    _env_method(envs, "set_env_state")(state["env_states"])


def _env_method(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        raise ValueError(
            f"{env} has no {name}(): wrap each env in clenv.checkpoint.RestorableEnv "
            "(outermost) so its state can be checkpointed"
        ) from None


def _vector_call(envs: gym.vector.VectorEnv, name: str, *args: Any) -> Any:
    try:
        return envs.unwrapped.call(name, *args)
    except AttributeError:
        raise ValueError(
            f"the sub-envs have no {name}(): wrap each in "
            "clenv.checkpoint.RestorableEnv (outermost) so their state can be "
            "checkpointed"
        ) from None


def _episode_statistics_wrappers(envs: gym.vector.VectorEnv) -> list[Any]:
    found = []
    while isinstance(envs, gym.vector.VectorWrapper):
        if isinstance(envs, gym.wrappers.vector.RecordEpisodeStatistics):
            found.append(envs)
        envs = envs.env
    return found


def _wrapper_chain(env: gym.Env) -> list[gym.Wrapper]:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def _wrapper_state(wrapper: gym.Wrapper) -> dict[str, Any]:
    """A wrapper's data attributes: counters and buffers, not its env, spaces, spec or
    functions (e.g. ``ClipAction``'s lambda), which the rebuilt wrapper has already."""
    state = {}
    for key, value in vars(wrapper).items():
        if key == "env" or callable(value) or isinstance(value, _STATIC_TYPES):
            continue
        try:
            state[key] = pickle.loads(pickle.dumps(value))
        except (pickle.PicklingError, AttributeError, TypeError):
            continue  # not data a wrapper keeps between steps
    return state


def _base_envs(env: gym.Env) -> list[gym.Env]:
    """The unwrapped env and the envs it is built on (``base_env``, e.g. clenv's
    PhysicsDriftEnv around a Gymnasium MuJoCo env), each with its own ``np_random``."""
    envs = [env]
    while isinstance(getattr(envs[-1], "base_env", None), gym.Env):
        envs.append(envs[-1].base_env.unwrapped)
    return envs


def _mujoco_data(env: gym.Env) -> Any:
    data = getattr(env, "data", None)
    if data is None or type(data).__name__ != "MjData" or not hasattr(env, "model"):
        return None
    return data


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
