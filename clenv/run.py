"""The run lifecycle every clenv agent shares: start or resume, save, restore.

A run is a directory ``<runs_dir>/<env>__<exp_name>__<seed>__<time>`` holding
``args.json``, ``metrics.h5`` and TensorBoard events (:class:`clenv.logger.RunLogger`)
and ``checkpoints/`` (:mod:`clenv.checkpoint`: atomic files, the last few kept).
This module puts the pieces in one place so that every agent starts, resumes and
checkpoints the same way:

1. :func:`parse_args` reads the agent's tyro ``Args``; with ``--resume <run dir>`` it
   loads the run's saved ``args.json`` instead (:func:`resume_args`: lists become
   tuples again where the field is a tuple; only the fields named in ``overrides``,
   e.g. ``total_timesteps``, take a value given on the command line).
2. :func:`start` creates the run directory and its logger, or reopens the one being
   resumed at its latest checkpoint (the log is cut back to that step).
3. :meth:`Run.restore` loads the checkpoint into freshly built objects: model(s),
   optimizer, method, any other object with ``state_dict``/``load_state_dict``, every
   global RNG (:func:`~clenv.checkpoint.capture_rng_state`) and the environment
   (:class:`~clenv.checkpoint.RestorableEnv` through a vector env's ``call``, or a
   single env, plus a vector ``RecordEpisodeStatistics``'s counters). It returns the
   agent's own ``extra`` values, or None for a fresh run.
4. :meth:`Run.save` writes all of that in one atomic, checksummed checkpoint, so a
   resumed run continues bit for bit as if it had never stopped. It refuses a state
   with a NaN or infinite tensor (:class:`NonFiniteStateError`), so a diverged run
   never replaces good checkpoints, and stops before the disk is full
   (:class:`~clenv.logger.StorageError`).

A resume that cannot resume stops: when every checkpoint of the run is damaged,
:func:`start` raises :class:`~clenv.checkpoint.CheckpointError` naming the files
(a damaged newest file alone is skipped with a warning, and the newest good one is
used). docs/reliability.md lists every guarantee.

Use in an agent::

    args = clenv.run.parse_args(Args, overrides=("total_timesteps",))
    ...  # seeding, envs (RestorableEnv outermost in each sub-env), model, optimizer
    run = clenv.run.start(args, agent="ppo", extra_args={"method": repr(method)})
    logger = run.logger
    extra = run.restore(model=agent, optimizer=optimizer, method=method, envs=envs)
    if extra is None:  # a fresh run
        next_obs, _ = envs.reset(seed=args.seed)
    else:
        next_obs = extra["next_obs"]
    ...
    run.save(global_step, model=agent, optimizer=optimizer, method=method,
             envs=envs, extra={"next_obs": next_obs})
    ...
    run.close()
    run.print_paths()

``Args`` needs the fields ``runs_dir``, ``exp_name``, ``seed``, ``resume`` (and
``env_id``, ``reg`` unless passed to :func:`start`; ``keep_checkpoints`` is optional).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import gymnasium as gym
import torch

import clenv.logger
from clenv.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    capture_env_state,
    capture_rng_state,
    checkpoint_path,
    load_latest_checkpoint,
    restore_env_state,
    restore_rng_state,
    save_checkpoint,
)
from clenv.logger import (
    ARGS_FILE,
    METRICS_FILE,
    RunLogger,
    StorageError,
    check_writable,
    ensure_free_space,
    hparams_markdown,
    json_default,
    storage_error,
)
from clenv.provenance import ARGS_KEY as PROVENANCE
from clenv.provenance import provenance
from clenv.settings import protocol_defaults

__all__ = [
    "CheckpointError",
    "NonFiniteStateError",
    "Run",
    "RunFlags",
    "StorageError",
    "check_counts",
    "check_ranges",
    "crossed_multiple",
    "exit_on_error",
    "fill_unset",
    "parse_args",
    "probe_env",
    "protocol_env_kwargs",
    "resume_args",
    "start",
    "vector_env",
]

ArgsT = TypeVar("ArgsT")
_MODEL, _OPTIMIZER, _METHOD = "model", "optimizer", "method"
# The keys every checkpoint of Run.save holds.
_LAYOUT = ("objects", "envs", "rng", "extra")


# ----------------------------------------------------------------- arguments
@dataclasses.dataclass
class RunFlags:
    """The flags every clenv agent has, with one meaning and one ``--help`` line each
    (a field's docstring): the base of the agents' option classes
    (:class:`clenv.ppo_args.RunOptions`, :class:`clenv.supervised_args.RunOptions`)."""

    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    runs_dir: str = "runs"
    """where run directories are created"""
    keep_checkpoints: int = 3
    """how many checkpoints to keep"""


def parse_args(
    args_type: type[ArgsT],
    overrides: Iterable[str] = (),
    argv: Sequence[str] | None = None,
) -> ArgsT:
    """The agent's arguments: the command line, or with ``--resume`` the saved ones.

    Args:
        args_type: The agent's tyro ``Args`` dataclass (with a ``resume`` field).
        overrides: Fields a resumed run takes from the command line when given there
            (e.g. ``("total_timesteps",)`` to extend a run); every other field keeps
            its saved value.
        argv: The command line without the program (default ``sys.argv[1:]``).

    Returns:
        An ``args_type`` instance.
    """
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    args = tyro.cli(args_type, args=argv)
    if getattr(args, "resume", None) is None:
        return args
    return resume_args(args, overrides, argv)


def resume_args(
    args: ArgsT, overrides: Iterable[str] = (), argv: Sequence[str] | None = None
) -> ArgsT:
    """The arguments saved in the run ``args.resume``, as ``type(args)``.

    Saved keys that are not fields of the dataclass (values an agent added, such as
    ``env_kwargs_resolved``) are dropped; JSON lists become tuples again where the
    field's type is a tuple. ``resume`` keeps its value, and each field in
    ``overrides`` takes the value of ``args`` when its flag (``--total-timesteps``
    for ``total_timesteps``; ``--progress`` or ``--no-progress`` for a boolean
    ``progress``) appears in ``argv``. Any other flag in ``argv`` is refused rather
    than silently ignored: a resumed run continues with its saved arguments, so
    ``--resume <run> --learning-rate 1e-3`` would not do what it says.

    Raises:
        FileNotFoundError: ``args.resume`` is not a run directory (no ``args.json``).
        ValueError: ``overrides`` names a field ``type(args)`` does not have, or
            ``argv`` sets a field that is not in ``overrides``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args_type = type(args)
    fields = {field.name for field in dataclasses.fields(args_type)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"overrides {unknown} are not fields of {args_type.__name__}; "
            f"choose among {sorted(fields)}"
        )
    given = {_field_of_flag(arg, fields): arg.split("=", 1)[0] for arg in argv
             if arg.startswith("--")}  # fmt: skip
    refused = [
        flag for name, flag in given.items() if name not in {"resume", *overrides}
    ]
    if refused:
        taken = ", ".join(f"--{name.replace('_', '-')}" for name in overrides) or "none"
        raise ValueError(
            f"{', '.join(refused)} cannot be changed on --resume: a resumed run "
            f"continues with the arguments saved in {args.resume}/args.json. Drop "
            f"{'it' if len(refused) == 1 else 'them'} (the flags a resume takes: "
            f"{taken}), or start a new run with the new value"
        )
    saved = RunLogger.load_args(args.resume)
    hints = typing.get_type_hints(args_type)
    values = {
        key: _as_field_type(value, hints.get(key))
        for key, value in saved.items()
        if key in fields
    }
    values["resume"] = args.resume
    for name in set(overrides) & set(given):
        values[name] = getattr(args, name)
    return args_type(**values)


def _field_of_flag(arg: str, fields: set[str]) -> str:
    """The dataclass field a command-line flag sets: ``--total-timesteps=5`` ->
    ``total_timesteps``, ``--no-progress`` -> ``progress``."""
    name = arg[2:].split("=", 1)[0].replace("-", "_")
    if name not in fields and name.startswith("no_") and name[3:] in fields:
        return name[3:]
    return name


def fill_unset(args: ArgsT, defaults: Mapping[str, Any]) -> ArgsT:
    """Set each field of ``args`` that is None to its value in ``defaults``.

    The agents' options left at None take the protocol's value this way, e.g.
    ``fill_unset(args, clenv.settings.protocol_defaults(benchmark, args.protocol))``.
    """
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_counts(
    args: Any, positive: Iterable[str] = (), non_negative: Iterable[str] = ()
) -> None:
    """Raise a ValueError naming the flag of the first field out of range.

    Args:
        args: The agent's arguments.
        positive: Fields that must be >= 1 (sizes, counts).
        non_negative: Fields that must be >= 0 (intervals where 0 turns it off).
    """
    for key in positive:
        if getattr(args, key) < 1:
            raise ValueError(
                f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}"
            )
    for key in non_negative:
        if getattr(args, key) < 0:
            raise ValueError(
                f"--{key.replace('_', '-')} must be >= 0 (0 turns it off), got "
                f"{getattr(args, key)}"
            )


def check_ranges(args: Any, ranges: Mapping[str, str]) -> None:
    """Raise a ValueError naming the flag of the first field out of its range.

    Each range is a condition, then optionally a note in parentheses that the
    message repeats: ``"> 0"``, ``">= 0"`` (a finite number above), ``"finite"`` (any
    finite number), ``"[0, 1]"``, ``"[0, 1)"`` (finite, in the interval), ``"<= N"``
    (a size of at most N). A note starting ``"(or unset"`` lets None pass. A tuple
    field needs every element in range.

    Example:
        >>> from types import SimpleNamespace
        >>> args = SimpleNamespace(learning_rate=1e-3, gamma=1.5, target_kl=None)
        >>> check_ranges(args, {"learning_rate": "> 0",
        ...                     "target_kl": "> 0 (or unset: no early stop)",
        ...                     "gamma": "[0, 1]"})
        Traceback (most recent call last):
        ...
        ValueError: --gamma must be in [0, 1], got 1.5

    Args:
        args: The agent's arguments.
        ranges: Field name to range, checked in this order.
    """
    for key, spec in ranges.items():
        value = getattr(args, key)
        condition, _, note = spec.partition(" (")
        note = f" ({note}" if note else ""
        if value is None and note.startswith(" (or unset"):
            continue
        flag = f"--{key.replace('_', '-')}"
        if condition.startswith("<="):  # a size: an int, maybe too large for a float
            limit = int(condition[2:])
            if value > limit:
                raise ValueError(f"{flag} must be at most {limit:,}, got {value:,}")
            continue
        if condition == "finite":
            allowed = "a finite number"
        elif condition[0] in "[(":
            allowed = f"in {condition}"
        else:
            allowed = f"a finite number {condition}"
        values = value if isinstance(value, tuple) else (value,)
        if all(math.isfinite(v) and _within(v, condition) for v in values):
            continue
        if isinstance(value, tuple):
            allowed = allowed.replace("a finite number", "finite numbers")
        raise ValueError(f"{flag} must be {allowed}{note}, got {value}")


def _within(value: float, condition: str) -> bool:
    """Whether a finite ``value`` meets a condition of :func:`check_ranges`."""
    if condition == "finite":
        return True
    if condition[0] in "[(":
        low, high = (float(x) for x in condition[1:-1].split(","))
        above = value >= low if condition[0] == "[" else value > low
        below = value <= high if condition[-1] == "]" else value < high
        return above and below
    sign, bound = condition.split()
    return value > float(bound) if sign == ">" else value >= float(bound)


@contextlib.contextmanager
def exit_on_error(*errors: type[BaseException]) -> Iterator[None]:
    """Turn a clear error into one line, ``error: <message>``, and exit 1 (no
    traceback): :class:`CheckpointError` (every checkpoint of the run to resume is
    damaged), :class:`StorageError` (the disk is full or not writable) and ``errors``.

    Example (an agent)::

        with clenv.run.exit_on_error():
            run = clenv.run.start(args, agent="ppo")
    """
    try:
        yield
    except (CheckpointError, StorageError, *errors) as error:
        sys.exit(f"error: {error}")


def _as_field_type(value: Any, hint: Any) -> Any:
    """A JSON value back in the field's type: lists become tuples for tuple fields."""
    if not isinstance(value, list) or hint is None:
        return value
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    for option in options:
        if option is tuple or typing.get_origin(option) is tuple:
            return tuple(value)
    return value


# ----------------------------------------------------------------- the env
def probe_env(env_id: str, env_kwargs: Mapping[str, Any]) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)`` once, closed: its spaces and ``unwrapped``.

    Unknown ids and arguments fail here, with the env's own message, before anything
    else is built.

    Raises:
        ValueError: ``env_id`` is not registered or rejects ``env_kwargs``.
    """
    try:
        env = gym.make(env_id, **env_kwargs)
    except gym.error.Error as error:
        raise ValueError(f"--env-id {env_id!r}: {error}") from error
    except TypeError as error:
        raise ValueError(
            f"--env-kwargs {dict(env_kwargs)} not accepted by {env_id}: {error}"
        ) from error
    env.close()
    return env


def vector_env(
    env_fns: Sequence[Callable[[], gym.Env]], asynchronous: bool = False
) -> gym.vector.VectorEnv:
    """A vector env of ``env_fns`` in SAME_STEP autoreset mode, with episode statistics.

    SAME_STEP, deliberately: a finished episode's sub-env resets inside the step that
    ended it, so every vector step is an interaction (the sub-envs of a clenv env
    switch tasks in lockstep, docs/protocol.md), ``final_obs`` of a truncated episode
    is at hand for bootstrapping, and no pending reset has to be checkpointed. Episode
    statistics come from a vector ``RecordEpisodeStatistics``: read them with
    :func:`clenv.protocol.log_episodes`, which :meth:`Run.save` checkpoints.

    Args:
        env_fns: One thunk per sub-env (``RestorableEnv`` outermost in each, for
            checkpoints).
        asynchronous: Step the sub-envs in subprocesses (``AsyncVectorEnv``).
    """
    vector = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    envs = vector(list(env_fns), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def protocol_env_kwargs(
    benchmark: str,
    protocol: str,
    env_kwargs: Mapping[str, Any],
    *,
    seed: int,
    names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """A clenv env's ``gym.make`` arguments under a paper's protocol.

    ``task_seed=seed``, then the benchmark's env rows for ``protocol``
    (:func:`clenv.settings.protocol_defaults`, docs/protocols.md; only ``names`` if
    given), then ``env_kwargs`` (given explicitly, so they win).
    """
    rows = protocol_defaults(benchmark, protocol, kind="env")
    if names is not None:
        rows = {key: rows[key] for key in names}
    return {"task_seed": seed, **rows, **env_kwargs}


# ----------------------------------------------------------------- the loop
def crossed_multiple(step: int, every: int, advanced: int) -> bool:
    """Whether the last ``advanced`` steps, ending at ``step``, crossed a multiple
    of ``every`` (0: never): when an interval such as ``--checkpoint-every`` is due
    in a loop that advances by a batch at a time.

    Example:
        >>> [crossed_multiple(step, 100, 64) for step in (64, 128, 192, 256)]
        [False, True, False, True]
    """
    return every > 0 and step // every > (step - advanced) // every


# ----------------------------------------------------------------- the run
class NonFiniteStateError(FloatingPointError):
    """:meth:`Run.save` found a NaN or infinite value in the state it was given.

    Nothing was written: the run's checkpoints are those of its last finite state.

    Attributes:
        name: The first non-finite tensor, e.g. ``"optimizer/state/0/exp_avg"``.
        step: The global step of the refused save.
    """

    def __init__(self, name: str, step: int, directory: Path) -> None:
        super().__init__(
            f"refusing to checkpoint step {step}: {name} holds NaN or infinite values "
            f"(the run diverged). Nothing was written; the checkpoints in {directory} "
            "are those of the last finite state. Lower the learning rate or pick "
            "another seed, then resume from them with --resume or start afresh"
        )
        self.name = name
        self.step = step


@dataclasses.dataclass
class Run:
    """A started or resumed run: its directory, logger and latest checkpoint.

    Attributes:
        args: The run's arguments.
        logger: The :class:`~clenv.logger.RunLogger` of ``run_dir``.
        checkpoint: ``(global_step, state)`` of the checkpoint being resumed, or None
            (a fresh run, or a resumed one that had not saved yet).
        keep_checkpoints: How many checkpoints :meth:`save` keeps.
        resumed: Whether ``--resume`` named this run.
    """

    args: Any
    logger: RunLogger
    checkpoint: tuple[int, dict[str, Any]] | None = None
    keep_checkpoints: int = 3
    resumed: bool = False

    @property
    def run_dir(self) -> Path:
        """The run directory (wherever the run lives now, e.g. a copied run)."""
        return self.logger.run_dir

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    @property
    def global_step(self) -> int:
        """The step the run continues from: the checkpoint's, or 0."""
        return 0 if self.checkpoint is None else self.checkpoint[0]

    @property
    def finished(self) -> bool:
        """Whether the checkpoint being resumed was saved with ``finished=True``."""
        return self.checkpoint is not None and bool(
            self.checkpoint[1].get("finished", False)
        )

    def restore(
        self,
        *,
        model: Any = None,
        optimizer: Any = None,
        method: Any = None,
        envs: gym.Env | gym.vector.VectorEnv | None = None,
        stateful: Mapping[str, Any] | None = None,
        rng: bool = True,
    ) -> dict[str, Any] | None:
        """Load the checkpoint being resumed into these objects.

        Pass the same objects as to :meth:`save`. ``model``, ``optimizer`` and
        ``method`` are objects with ``load_state_dict`` (a model may also be a
        ``{name: module}`` dict); ``stateful`` holds any others by name. The model
        is restored before the optimizer (whose state refers to its parameters),
        the global RNGs last.

        Args:
            model, optimizer, method: What to restore (None: skip).
            envs: A vector env or single env to put back where it was.
            stateful: Other objects with ``load_state_dict``, by the names given to
                :meth:`save`.
            rng: Restore the global random generators.

        Returns:
            The ``extra`` dict given to :meth:`save`, or None when there is no
            checkpoint to resume (the caller starts fresh: ``envs.reset(seed=...)``).

        Raises:
            ValueError: The checkpoint lacks a part that was passed, or was written
                in another layout (by an agent from before :mod:`clenv.run`).
        """
        if self.checkpoint is None:
            return None
        step, state = self.checkpoint
        missing = [key for key in _LAYOUT if key not in state]
        if missing:
            raise ValueError(
                f"{checkpoint_path(self.checkpoint_dir, step)} is not a clenv.run "
                f"checkpoint (no {missing}; it holds {sorted(state)}): it was written "
                "by an older clenv. Start the run afresh (without --resume), or "
                "resume it with the clenv version that wrote it"
            )
        for name, target in _objects(model, optimizer, method, stateful).items():
            if name not in state["objects"]:
                raise ValueError(
                    f"the checkpoint of step {step} in {self.checkpoint_dir} holds no "
                    f"{name!r} (it has {sorted(state['objects'])}); pass what the run "
                    "saved"
                )
            _load(target, state["objects"][name])
        if envs is not None:
            if state.get("envs") is None:
                raise ValueError(
                    f"the checkpoint of step {step} holds no env state; it was saved "
                    "without envs=..."
                )
            restore_env_state(envs, state["envs"])
        if rng:
            restore_rng_state(state["rng"])
        return dict(state.get("extra") or {})

    def save(
        self,
        global_step: int,
        *,
        model: Any = None,
        optimizer: Any = None,
        method: Any = None,
        envs: gym.Env | gym.vector.VectorEnv | None = None,
        stateful: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        finished: bool = False,
    ) -> Path:
        """Write the whole training state as the checkpoint of ``global_step``.

        Atomic (:func:`~clenv.checkpoint.save_checkpoint`); the newest
        ``keep_checkpoints`` are kept. The global RNG states and the run's arguments
        are always included.

        Args:
            global_step: The step the state belongs to (names the file).
            model, optimizer, method: Objects with ``state_dict`` (a model may also be
                a ``{name: module}`` dict).
            envs: A vector or single env whose sub-envs have
                :class:`~clenv.checkpoint.RestorableEnv`.
            stateful: Other objects with ``state_dict``, by name.
            extra: The agent's own values (tensors, numbers, lists, ...), returned
                by :meth:`restore`.
            finished: Mark the run finished (see :attr:`finished`).

        Returns:
            The checkpoint's path.
        """
        objects = _objects(model, optimizer, method, stateful)
        states = {name: _state_dict(obj) for name, obj in objects.items()}
        for name in (_MODEL, _OPTIMIZER, _METHOD):
            bad = _first_non_finite(states.get(name), name)
            if bad is not None:
                raise NonFiniteStateError(bad, int(global_step), self.checkpoint_dir)
        state = {
            "objects": states,
            "envs": None if envs is None else capture_env_state(envs),
            "rng": capture_rng_state(),
            "extra": dict(extra or {}),
            "args": _plain_args(self.args),
            "finished": bool(finished),
        }
        try:
            return save_checkpoint(
                self.checkpoint_dir,
                state,
                global_step,
                self.keep_checkpoints,
                reserve_bytes=clenv.logger.MIN_FREE_BYTES,
            )
        except OSError as error:  # the write itself failed; the old files are intact
            self.logger.close()
            raise storage_error(
                f"checkpointing step {global_step}", self.checkpoint_dir, error
            ) from error

    def close(self) -> None:
        """Flush and close the logger."""
        self.logger.close()

    def paths(self) -> dict[str, str]:
        """Where to find this run's logs, for the closing message."""
        run_dir = self.run_dir
        return {
            "logs": f"{run_dir}  ({METRICS_FILE}, TensorBoard events, "
            f"{CHECKPOINT_DIR}/)",
            "TensorBoard": f"tensorboard --logdir {run_dir}",
            "redraw": f"clenv plot {run_dir} --out {run_dir / 'plots.png'}",
        }

    def print_paths(self) -> None:
        """Print :meth:`paths`, one per line."""
        for name, value in self.paths().items():
            print(f"{name + ':':<13}{value}")

    def plot(self) -> None:
        """Draw ``plots.png`` of the run (:mod:`clenv.plotting`) and print its path.

        A failed plot is printed, never raised: it must not hide a finished run.
        """
        try:
            from clenv.plotting import plot_runs

            figure = plot_runs([self.run_dir], self.run_dir / "plots.png").path
            print(f"{'plots.png:':<13}{figure}")
        except Exception as error:
            print(f"{'plots.png:':<13}not drawn ({type(error).__name__}: {error})")


def start(
    args: Any,
    *,
    agent: str,
    env_id: str | None = None,
    reg: str | None = None,
    extra_args: Mapping[str, Any] | None = None,
    tensorboard: bool = True,
    map_location: str | torch.device | None = "cpu",
    unit: str = "step",
) -> Run:
    """Start a new run, or reopen the one ``args.resume`` names at its checkpoint.

    A new run: ``<args.runs_dir>/<run_name>`` with ``args.json`` (``vars(args)`` and
    ``extra_args``) and the HDF5 attributes (:meth:`RunLogger.create`). A resumed
    run: the logger is cut back to the latest checkpoint's step (everything if there
    is none: the run starts over); ``args.json`` is rewritten when the arguments
    changed (e.g. ``--total-timesteps`` extended the run).

    Args:
        args: The agent's arguments (see the module docstring for the fields).
        agent: Which agent writes the run (``"ppo"``, ``"supervised"``).
        env_id: The env id (default ``args.env_id``).
        reg: The plasticity method (default ``args.reg``).
        extra_args: Values added to a new run's ``args.json`` (resolved env kwargs,
            ``repr(method)``, ...); ignored when resuming.
        tensorboard: Also write TensorBoard events.
        map_location: Where the checkpoint's tensors are loaded.
        unit: What a global step counts, for the messages (``"step"``,
            ``"example"``).

    Returns:
        A :class:`Run`; call :meth:`Run.restore` next.

    Raises:
        StorageError: The runs directory (or the run being resumed) is not writable,
            or its disk is full; nothing was started.
        CheckpointError: The run being resumed has checkpoints, but every one is
            damaged (the message names them and how to start afresh on purpose).
    """
    missing = [
        name
        for name in ("runs_dir", "exp_name", "seed", "resume")
        if not hasattr(args, name)
    ]
    if missing:
        raise ValueError(
            f"clenv.run.start needs the argument fields {missing} on "
            f"{type(args).__name__}; add them to the agent's Args"
        )
    keep = int(getattr(args, "keep_checkpoints", 3))
    if args.resume is None:
        check_writable(args.runs_dir, "runs directory (--runs-dir)")
        ensure_free_space(args.runs_dir, what="starting a run")
        logger = RunLogger.create(
            args.runs_dir,
            env_id=env_id if env_id is not None else args.env_id,
            exp_name=args.exp_name,
            seed=args.seed,
            agent=agent,
            reg=reg if reg is not None else args.reg,
            args={
                **_plain_args(args),
                **(extra_args or {}),
                PROVENANCE: [provenance()],
            },  # fmt: skip
            tensorboard=tensorboard,
        )
        print(f"run directory: {logger.run_dir}")
        return Run(args, logger, keep_checkpoints=keep)
    run_dir = Path(args.resume)
    if not (run_dir / ARGS_FILE).exists():
        raise FileNotFoundError(
            f"--resume {run_dir}: no {ARGS_FILE} there; pass a run directory made by "
            "an earlier run (runs/<env>__<exp>__<seed>__<time>)"
        )
    check_writable(run_dir, "run directory (--resume)")
    ensure_free_space(run_dir, what="resuming the run")
    try:
        checkpoint = load_latest_checkpoint(run_dir / CHECKPOINT_DIR, map_location)
    except CheckpointError as error:
        raise CheckpointError(
            f"--resume {run_dir} cannot resume: {error}; or delete "
            f"{run_dir / CHECKPOINT_DIR} to start this run over from step 0 in place",
            error.problems,
        ) from None
    saved = RunLogger.load_args(run_dir)
    attrs = {
        "env_id": str(env_id if env_id is not None else saved.get("env_id", "")),
        "exp_name": str(saved.get("exp_name", "")),
        "reg": str(reg if reg is not None else saved.get("reg", "")),
        "seed": int(saved.get("seed", 0)),
        "agent": agent,
        "args_json": json.dumps(saved, indent=2),
    }
    if checkpoint is None:
        logger = RunLogger.resume(
            run_dir, step=-1, tensorboard=tensorboard, attrs=attrs
        )
        if logger.writer is not None:  # the purge dropped the table too
            logger.writer.add_text("hyperparameters", hparams_markdown(vars(args)))
        print(f"{run_dir} has no checkpoint yet: starting it over")
    else:
        logger = RunLogger.resume(
            run_dir, step=checkpoint[0], tensorboard=tensorboard, attrs=attrs
        )
        print(f"resumed {run_dir} at {unit} {checkpoint[0]:,}")
    current = {**saved, **_plain_args(args), "resume": saved.get("resume")}
    # One more entry per resume: a run resumed under other code or torch says so.
    resumed_at = {"resumed_at": checkpoint[0] if checkpoint else 0}
    current[PROVENANCE] = [*saved.get(PROVENANCE, []), provenance() | resumed_at]
    logger.update_args(current)
    print(f"run directory: {logger.run_dir}")
    return Run(args, logger, checkpoint, keep, resumed=True)


# ----------------------------------------------------------------- helpers
def _objects(
    model: Any, optimizer: Any, method: Any, stateful: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The objects given to save/restore by checkpoint name (None left out)."""
    named = {_MODEL: model, _OPTIMIZER: optimizer, _METHOD: method}
    overlap = set(named) & set(stateful or {})
    if overlap:
        raise ValueError(
            f"stateful names {sorted(overlap)} are taken by the model, optimizer and "
            "method arguments; name those objects otherwise"
        )
    named |= dict(stateful or {})
    return {name: obj for name, obj in named.items() if obj is not None}


def _first_non_finite(state: Any, name: str) -> str | None:
    """The path of the first floating tensor in ``state`` with a NaN or inf."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return None if bool(torch.isfinite(state).all()) else name
        return None
    if isinstance(state, Mapping):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        bad = _first_non_finite(value, f"{name}/{key}")
        if bad is not None:
            return bad
    return None


def _state_dict(target: Any) -> Any:
    if isinstance(target, Mapping):
        return {name: _state_dict(part) for name, part in target.items()}
    return target.state_dict()


def _load(target: Any, state: Any) -> None:
    if isinstance(target, Mapping):
        if set(target) != set(state):
            raise ValueError(
                f"the checkpoint holds the parts {sorted(state)}, restore got "
                f"{sorted(target)}; pass the same dict of objects as to save"
            )
        for name, part in target.items():
            _load(part, state[name])
        return
    target.load_state_dict(state)


def _plain_args(args: Any) -> dict[str, Any]:
    """``vars(args)`` as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps(vars(args), default=json_default))
