"""``clenv sweep``: a grid of seeds x methods x hyperparameters for an agent, on Ray Tune.

Every trial is one subprocess of the agent script, exactly the command you would type
for a single run, plus ``--seed``, ``--reg``, ``--exp-name`` and ``--runs-dir``, so its
run directory lands in ``runs/`` like any other run and ``clenv plot runs/`` groups
the seeds of each (method, hyperparameters) setting.

Example::

    clenv sweep agents/supervised_l2er.py --name pmnist-small \\
        --seeds 1 2 3 --reg bp l2 l2er --grid learning-rate=0.01,0.003 \\
        -- --env-id clenv/PermutedMNIST-v0 --examples-per-task 2000

The sweep directory ``<runs-dir>/sweeps/<name>/`` holds

================== ==================================================================
``manifest.json``  the sweep's definition and every trial's id, command, status
                   (pending / running / done / failed), attempts and run directory
``trials/``        one status file per trial (written by the trial itself)
``logs/``          each attempt's stdout and stderr
``failed/``        run directories of failed attempts, moved out of ``runs/``
``ray/``           Ray Tune's own experiment state
================== ==================================================================

Before any trial starts (and in ``--dry-run``), each grid point's arguments go through
the agent's own ``check_args(argv)`` when the script defines one (both agents in
``agents/`` do: the argument parsing, resolution and value checks of a run): an unknown
option or a bad value fails the sweep there, naming the trial, its arguments and the
agent's message, instead of failing every trial with the cause in an attempt log.

A trial's identity is deterministic: ``exp_name = <sweep>-<reg>[-<key>=<value>...]``
and its seed; its run directory is ``<runs-dir>/<env>__<exp_name>__<seed>__<time>``.
Run the same command again (or ``clenv sweep --resume <sweep dir>``) and trials that
finished are skipped; unfinished ones run again, and one whose run directory holds
checkpoints continues with the agent's ``--resume``. A failed attempt is retried up to
``--max-retries`` times (Ray Tune's ``FailureConfig``) and every failure is reported.

``--group-seeds N`` runs consecutive seeds of one (method, parameters) point as one
trial, ``--seed s0 --num-seeds k`` (k <= N), where the agent's ``check_args`` accepts
that (agents/supervised_l2er.py on its batch-1 fast path), and one trial per seed
elsewhere; each seed still has its own run directory, listed in the manifest, and a
failed group is retried as a group (docs/tooling.md).

Ray: local cores by default (``--num-cpus``); when ``RAY_ADDRESS`` is set, the trials
run on that Ray cluster (then the repository and ``--runs-dir`` must be on a file
system every node shares, and the same Python environment must exist on every node).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tyro

from clenv.cli_kwargs import run_command

MANIFEST = "manifest.json"
STATUSES = ("pending", "running", "done", "failed")
_SAFE = re.compile(r"[^A-Za-z0-9.+=-]+")


# -- the grid ------------------------------------------------------------------------
@dataclass
class Trial:
    """One point of the grid: a method, hyperparameters and a seed."""

    trial_id: str
    reg: str
    seed: int
    params: dict[str, str]
    exp_name: str
    command: list[str]
    num_seeds: int = 1
    """seeds ``seed``, ``seed + 1``, ... trained together by one run (``--num-seeds``)"""

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.num_seeds))


@dataclass
class TrialState:
    """What is known about a trial's runs (the file ``trials/<id>.json``)."""

    status: str = "pending"
    attempts: int = 0
    returncode: int | None = None
    run_dir: str | None = None
    """the run directory (of the first seed, for a trial of several seeds)"""
    run_dirs: list[str | None] = field(default_factory=list)
    """each seed's run directory, in the order of the trial's seeds"""
    log: str | None = None
    seconds: float | None = None
    errors: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    """the Ray node id of each attempt, in order"""


@dataclass
class SweepSpec:
    """The definition of a sweep: what ``manifest.json`` records and restarts from."""

    name: str
    agent: str
    seeds: list[int]
    regs: list[str]
    grid: dict[str, list[str]]
    agent_args: list[str]
    runs_dir: str
    workdir: str
    python: str = sys.executable
    resume_flag: str | None = "--resume"
    group_seeds: int = 1
    """at most this many consecutive seeds of one (method, parameters) point per trial,
    trained together by the agent's ``--num-seeds`` (1: one trial per seed)"""
    seeds_apart: dict[str, str] = field(default_factory=dict)
    """points (their exp_name) whose seeds run one per trial although ``group_seeds``
    > 1, with the agent's reason (:func:`plan_seed_groups` fills it)"""

    def trials(self) -> list[Trial]:
        """Every trial of the grid, in a fixed order (methods, parameters, seeds)."""
        keys = sorted(self.grid)
        trials = []
        for reg in self.regs:
            for values in itertools.product(*(self.grid[k] for k in keys)):
                params = dict(zip(keys, values, strict=True))
                suffix = "".join(f"-{k}={v}" for k, v in params.items())
                exp_name = _SAFE.sub("_", f"{self.name}-{reg}{suffix}")
                groups = (
                    seed_groups(self.seeds, self.group_seeds)
                    if self.group_seeds > 1 and exp_name not in self.seeds_apart
                    else [(seed, 1) for seed in self.seeds]
                )
                for seed, count in groups:
                    command = [self.python, self.agent, *self.agent_args]
                    for key, value in params.items():
                        command += [f"--{key}", value]
                    command += ["--seed", str(seed)]
                    if count > 1:
                        command += ["--num-seeds", str(count)]
                    command += ["--reg", reg]
                    command += ["--exp-name", exp_name, "--runs-dir", self.runs_dir]
                    trial_id = f"{exp_name}__seed={seed}"
                    if count > 1:
                        trial_id = f"{exp_name}__seeds={seed}-{seed + count - 1}"
                    trials.append(
                        Trial(trial_id, reg, seed, params, exp_name, command, count)
                    )
        return trials


def seed_groups(seeds: Sequence[int], size: int) -> list[tuple[int, int]]:
    """``(first seed, count)`` of each run of consecutive seeds, at most ``size`` long:
    ``seed_groups([5, 1, 2, 3], 2) == [(1, 2), (3, 1), (5, 1)]``."""
    groups: list[tuple[int, int]] = []
    for seed in sorted(seeds):
        if groups and sum(groups[-1]) == seed and groups[-1][1] < size:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((seed, 1))
    return groups


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["learning-rate=1e-3,1e-4", ...]`` -> ``{"learning-rate": ["1e-3", "1e-4"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-")
        split = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not split:
            raise ValueError(
                f"--grid {item!r}: expected KEY=V1,V2,... with KEY an agent option "
                "without its dashes, e.g. --grid learning-rate=1e-3,1e-4"
            )
        if key in ("seed", "reg", "exp-name", "runs-dir"):
            raise ValueError(
                f"--grid {key}=... is set by the sweep itself; use --seeds / --reg"
            )
        if key in grid:
            raise ValueError(f"--grid {key} given twice")
        grid[key] = split
    return grid


# -- files ---------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    """Write atomically (temp file + rename): a killed sweep never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_trial_state(sweep_dir: Path, trial_id: str) -> TrialState:
    path = sweep_dir / "trials" / f"{trial_id}.json"
    if not path.is_file():
        return TrialState()
    return TrialState(**json.loads(path.read_text()))


def write_trial_state(sweep_dir: Path, trial_id: str, state: TrialState) -> None:
    _write_json(sweep_dir / "trials" / f"{trial_id}.json", asdict(state))


def write_manifest(sweep_dir: Path, spec: SweepSpec, trials: Sequence[Trial]) -> dict:
    """Write ``manifest.json``: the definition, every trial's current state and, under
    ``runs``, every seed's run (``<exp_name>__seed=<seed>``: its trial, status and run
    directory; the same keys whether or not seeds were trained together)."""
    states = {t.trial_id: read_trial_state(sweep_dir, t.trial_id) for t in trials}
    runs = {}
    for trial in trials:
        state = states[trial.trial_id]
        run_dirs = state.run_dirs or [state.run_dir]  # (a state from before run_dirs)
        run_dirs = [*run_dirs, *[None] * trial.num_seeds][: trial.num_seeds]
        for seed, run_dir in zip(trial.seeds, run_dirs, strict=True):
            runs[f"{trial.exp_name}__seed={seed}"] = {
                "trial": trial.trial_id,
                "seed": seed,
                "status": state.status,
                "run_dir": run_dir,
            }
    manifest = {
        "spec": asdict(spec),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trials": {
            trial.trial_id: {
                "reg": trial.reg,
                "seed": trial.seed,
                "seeds": trial.seeds,
                "params": trial.params,
                "exp_name": trial.exp_name,
                "command": shlex.join(trial.command),
                **asdict(states[trial.trial_id]),
            }
            for trial in trials
        },
        "runs": runs,
    }
    _write_json(sweep_dir / MANIFEST, manifest)
    return manifest


def load_spec(sweep_dir: str | Path) -> SweepSpec:
    """The definition saved in a sweep directory's ``manifest.json``."""
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: --resume expects a sweep directory "
            "(<runs-dir>/sweeps/<name>) made by clenv sweep"
        )
    return SweepSpec(**json.loads(path.read_text())["spec"])


def find_run_dir(runs_dir: Path, trial: Trial, seed: int | None = None) -> Path | None:
    """The newest run directory of this trial (its exp_name and ``seed``, default its
    first) in ``runs_dir``."""
    seed = trial.seed if seed is None else seed
    matches = sorted(
        (p for p in runs_dir.glob(f"*__{trial.exp_name}__{seed}__*") if p.is_dir()),
        key=lambda p: p.name.rsplit("__", 1)[-1],
    )
    return matches[-1] if matches else None


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether the run left a checkpoint its agent can resume from.

    A clenv checkpoint (``ckpt_*.pt``) counts only if its checksums verify, so a trial
    whose checkpoints are all damaged starts afresh instead of retrying a resume that
    cannot work; another agent's files count as they are (the sweep runs any agent).
    """
    from clenv.checkpoint import CHECKPOINT_DIR, list_checkpoints, verify_checkpoint

    directory = run_dir / CHECKPOINT_DIR
    if not directory.is_dir():
        return False
    ours = [path for _, path in list_checkpoints(directory)]
    others = [path for path in directory.iterdir() if path not in ours]
    return bool(others) or any(verify_checkpoint(path) is None for path in ours)


# -- one trial (runs inside a Ray worker) --------------------------------------------
def _terminate_with_parent() -> None:
    """In the agent's process: get SIGTERM when the Ray worker that started it dies.

    Stopping a sweep (Ctrl-C) kills Ray's workers; without this their agent
    subprocesses would keep running, orphaned.
    """
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass  # not glibc: the agent outlives a killed worker, as without this


def run_trial(
    trial: Trial,
    spec: SweepSpec,
    sweep_dir: Path,
    threads: int = 1,
    node: str | None = None,
) -> TrialState:
    """Run one attempt of a trial as a subprocess; raise if it fails (Ray retries).

    A previous attempt's run directory is continued with the agent's resume flag when it
    holds checkpoints, and otherwise moved to ``failed/`` so ``runs/`` only holds one
    run per trial. A trial of several seeds (``--num-seeds``) resumes the group from its
    first seed's directory when every seed's holds checkpoints (the agent resumes every
    member), and otherwise moves them all and starts the group afresh. ``node`` (the Ray node id the attempt runs on) is recorded in the
    trial's ``nodes``.
    """
    state = read_trial_state(sweep_dir, trial.trial_id)
    state.attempts += 1
    state.status = "running"
    if node is not None:
        state.nodes.append(node)
    runs_dir = Path(spec.workdir, spec.runs_dir)
    command = list(trial.command)
    previous = [find_run_dir(runs_dir, trial, seed) for seed in trial.seeds]
    found = [run_dir for run_dir in previous if run_dir is not None]
    if found:
        if (
            spec.resume_flag
            and len(found) == len(previous)
            and all(_has_checkpoint(run_dir) for run_dir in found)
        ):
            command = [spec.python, spec.agent, spec.resume_flag, str(found[0])]
        else:
            failed = sweep_dir / "failed"
            failed.mkdir(exist_ok=True)
            for run_dir in found:
                shutil.move(str(run_dir), failed / run_dir.name)
    log_path = sweep_dir / "logs" / f"{trial.trial_id}.attempt{state.attempts}.log"
    state.log = str(log_path)
    write_trial_state(sweep_dir, trial.trial_id, state)
    print(
        f"[{trial.trial_id}] attempt {state.attempts}: {shlex.join(command)}",
        flush=True,
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        returncode = subprocess.call(
            command,
            cwd=spec.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_terminate_with_parent if sys.platform == "linux" else None,
        )
    state.seconds = round(time.perf_counter() - start, 2)
    state.returncode = returncode
    run_dirs = [find_run_dir(runs_dir, trial, seed) for seed in trial.seeds]
    state.run_dirs = [None if p is None else str(p) for p in run_dirs]
    state.run_dir = state.run_dirs[0]
    if returncode == 0:
        state.status = "done"
        write_trial_state(sweep_dir, trial.trial_id, state)
        where = ", ".join(str(p) for p in state.run_dirs)
        print(f"[{trial.trial_id}] done in {state.seconds:.0f} s: {where}", flush=True)
        return state
    tail = log_path.read_text().strip().splitlines()[-3:]
    state.errors.append(
        f"attempt {state.attempts}: exit {returncode}: {' | '.join(tail)}"
    )
    state.status = "failed"
    write_trial_state(sweep_dir, trial.trial_id, state)
    raise RuntimeError(
        f"trial {trial.trial_id} failed (exit {returncode}) on attempt "
        f"{state.attempts}; log: {log_path}"
    )


def _ray_trainable(config: dict, spec_dict: dict, sweep_dir: str, threads: int) -> None:
    import ray
    from ray import tune

    spec = SweepSpec(**spec_dict)
    trial = next(t for t in spec.trials() if t.trial_id == config["trial_id"])
    node = ray.get_runtime_context().get_node_id()
    state = run_trial(trial, spec, Path(sweep_dir), threads, node=node)
    tune.report({"returncode": state.returncode, "seconds": state.seconds})


# -- the sweep -----------------------------------------------------------------------
def _init_ray(num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        print(f"connecting to the Ray cluster at RAY_ADDRESS={address}", flush=True)
        try:
            ray.init(log_to_driver=True)
        except ConnectionError as error:
            raise ValueError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({error}); start "
                "its head with `ray start --head` and pass the address it prints, or "
                "unset RAY_ADDRESS to run the trials on this machine's cores"
            ) from error
    else:
        # address="local": always a fresh instance on this machine's cores, even if a
        # `ray start` left its address in /tmp/ray (that cluster is used only via
        # RAY_ADDRESS).
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=True,
        )


def run_sweep(
    spec: SweepSpec,
    *,
    max_retries: int = 1,
    cpus_per_trial: float = 1.0,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
) -> dict[str, Any]:
    """Run every unfinished trial of ``spec`` on Ray Tune; return the manifest.

    Args:
        spec: the sweep definition.
        max_retries: attempts after the first for a failing trial.
        cpus_per_trial: CPUs Ray reserves per trial (also the trial's OMP_NUM_THREADS,
            rounded up).
        num_cpus: CPUs of the local Ray instance (default: all cores); ignored when
            ``RAY_ADDRESS`` points at a cluster.
        max_concurrent: at most this many trials at once (default: as CPUs allow).
    """
    try:
        from ray import tune
    except ImportError as error:
        raise ImportError(
            "clenv sweep needs Ray Tune: pip install -c constraints.txt 'clenv[sweep]' "
            "(or pip install 'ray[tune]')"
        ) from error

    sweep_dir = Path(spec.workdir, spec.runs_dir, "sweeps", spec.name)
    for sub in ("trials", "logs"):
        (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
    trials = spec.trials()
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ValueError("the grid has duplicate trials (repeated seeds or values?)")
    done = [
        t for t in trials if read_trial_state(sweep_dir, t.trial_id).status == "done"
    ]
    pending = [t for t in trials if t not in done]
    write_manifest(sweep_dir, spec, trials)
    settings = len({t.exp_name for t in trials}) // max(len(spec.regs), 1)
    together = sum(1 for t in trials if t.num_seeds > 1)
    grouped = f"; {together} of them train several seeds each" if together else ""
    print(
        f"sweep {spec.name!r}: {len(trials)} trials ({len(spec.regs)} method(s) x "
        f"{settings} setting(s) x {len(spec.seeds)} seed(s){grouped}); {len(done)} "
        f"already done, {len(pending)} to run; manifest: {sweep_dir / MANIFEST}",
        flush=True,
    )
    if pending:
        _init_ray(num_cpus)
        threads = max(1, int(-(-cpus_per_trial // 1)))
        trainable = tune.with_resources(
            tune.with_parameters(
                _ray_trainable,
                spec_dict=asdict(spec),
                sweep_dir=str(sweep_dir),
                threads=threads,
            ),
            {"cpu": cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search([t.trial_id for t in pending])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent, reuse_actors=False
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str((sweep_dir / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=max_retries),
                verbose=0,
            ),
        )
        tuner.fit()
        for trial in pending:  # a worker that died cannot have said so itself
            state = read_trial_state(sweep_dir, trial.trial_id)
            if state.status in ("running", "pending"):
                state.status = "failed"
                state.errors.append(
                    "interrupted (sweep stopped) or its Ray worker died"
                )
                write_trial_state(sweep_dir, trial.trial_id, state)
    manifest = write_manifest(sweep_dir, spec, trials)
    _print_summary(manifest, sweep_dir)
    return manifest


def _print_summary(manifest: dict, sweep_dir: Path) -> None:
    rows = manifest["trials"]
    counts = {s: sum(1 for r in rows.values() if r["status"] == s) for s in STATUSES}
    width = max(len(t) for t in rows)
    print(f"\n{'trial':<{width}}  {'status':<8}{'attempts':>9}  run dir / last error")
    for trial_id, row in rows.items():
        detail = " ".join(p or "?" for p in row["run_dirs"]) or row["run_dir"] or ""
        if row["status"] != "done" and row["errors"]:
            detail = row["errors"][-1]
        print(f"{trial_id:<{width}}  {row['status']:<8}{row['attempts']:>9}  {detail}")
    retried = [
        t for t, r in rows.items() if r["status"] == "done" and r["attempts"] > 1
    ]
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"\n{summary}; retried and recovered: {len(retried)}; manifest: "
          f"{sweep_dir / MANIFEST}")  # fmt: skip
    if counts["failed"] or counts["pending"] or counts["running"]:
        print("run the same command again to retry the unfinished trials")


@dataclass
class SweepArgs:
    """A grid of seeds x methods x hyperparameters for an agent, on Ray Tune; the
    arguments after -- go to every trial (a run of the agent script in runs/). Rerun
    the same command, or --resume SWEEP_DIR, to finish the unfinished trials."""

    agent: Annotated[
        tyro.conf.Positional[str | None], tyro.conf.arg(metavar="AGENT")
    ] = None
    """agent script, e.g. agents/supervised_l2er.py"""
    agent_args: Annotated[
        tyro.conf.Positional[tuple[str, ...]], tyro.conf.arg(metavar="AGENT_ARGS")
    ] = ()
    """after --: arguments for every trial"""
    name: str | None = None
    """sweep name (default: agent name + time)"""
    seeds: list[int] = field(default_factory=lambda: [1])
    """seeds"""
    reg: list[str] = field(default_factory=lambda: ["l2er"])
    """methods (--reg)"""
    grid: Annotated[
        tyro.conf.UseAppendAction[list[str]], tyro.conf.arg(metavar="KEY=V1,V2")
    ] = field(default_factory=list)
    """hyperparameter values, e.g. learning-rate=1e-3,1e-4"""
    runs_dir: str = "runs"
    """where run directories go"""
    resume: Annotated[str | None, tyro.conf.arg(metavar="SWEEP_DIR")] = None
    """rerun the unfinished trials of a sweep"""
    max_retries: int = 1
    """retries of a failing trial"""
    cpus_per_trial: float = 1.0
    """Ray CPUs per trial"""
    num_cpus: int | None = None
    """local Ray CPUs"""
    max_concurrent: int | None = None
    """trials at once"""
    agent_resume: bool = True
    """continue an interrupted trial with the agent's --resume (--no-agent-resume:
    rerun it from scratch)"""
    group_seeds: int = 1
    """train up to this many consecutive seeds of one (method, parameters) point in one
    trial, with the agent's --num-seeds, where its check_args accepts that (else one
    trial per seed); 1: one trial per seed"""
    python: str | None = None
    """the Python that runs each trial (default: this one)"""
    dry_run: bool = False
    """check every trial's arguments with the agent and print the trials only"""


def spec_from_args(args: SweepArgs) -> SweepSpec:
    """Build the sweep definition from parsed arguments (checks them)."""
    if args.resume:
        return load_spec(args.resume)
    if not args.agent:
        raise ValueError("name the agent script (e.g. agents/ppo_l2er.py) or --resume")
    agent = Path(args.agent)
    if not agent.is_file():
        raise FileNotFoundError(f"agent script {str(agent)!r} not found")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.reg)) != len(args.reg):
        raise ValueError("--seeds and --reg must not repeat a value")
    if args.max_retries < 0:
        raise ValueError(f"--max-retries must be >= 0, got {args.max_retries}")
    # The default name keeps to the allowed characters (an agent's file name has '_').
    stem = _SAFE.sub("-", agent.stem)
    name = args.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if _SAFE.search(name) or "__" in name:
        raise ValueError(
            f"--name {name!r}: use letters, digits, '.', '-', '+', '=' only"
        )
    return SweepSpec(
        name=name,
        agent=str(agent.resolve()),
        seeds=list(args.seeds),
        regs=list(args.reg),
        grid=parse_grid(args.grid),
        agent_args=list(args.agent_args),
        runs_dir=args.runs_dir,
        workdir=str(Path.cwd()),
        resume_flag="--resume" if args.agent_resume else None,
        python=args.python or sys.executable,
        group_seeds=args.group_seeds,
    )


def check_trial_args(spec: SweepSpec) -> int:
    """Run the agent's own argument checks on every point of the grid before any trial
    starts; returns how many argument lists were checked (0: the agent has none).

    An agent script that defines ``check_args(argv)`` (both clenv agents do: it parses
    and resolves the arguments as a run would, and checks the env's) is imported once
    and called with each (method, hyperparameters) point's arguments, with the first
    seed. An unknown flag or a bad value then fails the sweep here, naming the trial,
    its arguments and the agent's message, instead of failing every trial with the
    cause in an attempt log.

    Raises:
        ValueError: a trial's arguments are rejected by the agent.
    """
    agent = Path(spec.agent)
    checked: set[tuple[str, ...]] = set()
    with _agent_module(agent) as module:
        if module is None:
            return 0
        for trial in dataclasses.replace(spec, group_seeds=1).trials():
            argv = trial.command[2:]
            key = (trial.reg, *sorted(trial.params.items()))
            if key in checked:  # the seeds of a point share its arguments
                continue
            checked.add(key)
            problem = _agent_rejects(module.check_args, argv)
            if problem:
                grid = " ".join(f"{k}={v}" for k, v in trial.params.items())
                where = f" (its grid values: {grid})" if grid else ""
                raise ValueError(
                    f"trial {trial.trial_id}: {agent.name} rejects its arguments "
                    f"({shlex.join(argv)}): {problem.rstrip('.')}; no trial was "
                    "started. Fix the option or value named there in the trial's "
                    f"arguments{where}"
                )
    return len(checked)


def plan_seed_groups(spec: SweepSpec) -> SweepSpec:
    """``spec`` with ``seeds_apart`` filled: the points whose seeds the agent will not
    train together, each with the agent's reason.

    With ``group_seeds`` > 1, each trial of several seeds (consecutive seeds of one
    point) goes through the agent's ``check_args`` with its ``--seed s0 --num-seeds
    N``; a point any of whose groups it rejects (agents/supervised_l2er.py: "--num-seeds
    N trains the seeds together on the batch-1 fast path only: ..."; an agent without
    ``--num-seeds``: its unknown option) runs one trial per seed, as does every point of
    an agent without ``check_args`` (nothing tells that it takes ``--num-seeds``).
    """
    spec = dataclasses.replace(spec, seeds_apart={})
    groups = [trial for trial in spec.trials() if trial.num_seeds > 1]
    if not groups:
        return spec
    apart: dict[str, str] = {}
    with _agent_module(Path(spec.agent)) as module:
        for trial in groups:
            if trial.exp_name in apart:
                continue
            if module is None:
                problem = (
                    f"{Path(spec.agent).name} defines no check_args(argv) to tell "
                    "whether it takes --num-seeds"
                )
            else:
                problem = _agent_rejects(module.check_args, trial.command[2:])
            if problem:
                apart[trial.exp_name] = problem
    return dataclasses.replace(spec, seeds_apart=apart)


@contextlib.contextmanager
def _agent_module(agent: Path) -> Iterator[Any]:
    """The agent script imported as a module (its ``__main__`` block not run), or None
    when it defines no ``check_args``."""
    if "def check_args(" not in agent.read_text():
        yield None
        return
    module_name = f"_clenv_sweep_agent_{agent.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, agent)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # (its dataclasses look the module up there)
    try:
        module_spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(module_name, None)


def _agent_rejects(check_args: Any, argv: list[str]) -> str:
    """The agent's message for ``argv`` ("" if accepted): its ValueError, or the
    usage error tyro prints before exiting."""
    stderr = io.StringIO()
    try:
        with (
            contextlib.redirect_stderr(stderr),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            check_args(argv)
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    except SystemExit as exit:
        if exit.code in (None, 0):
            return ""
        # tyro's box: keep its text, drop rules, the help pointer and the title
        # its next line repeats.
        lines = [line.strip(" │╭╰╮╯─-") for line in stderr.getvalue().splitlines()]
        lines = [line for line in lines if line and not line.startswith("For full")]
        kept = [
            a
            for a, b in zip(lines, [*lines[1:], ""], strict=True)
            if not b.startswith(a)
        ]
        return " ".join(kept) or f"exit {exit.code}"
    return ""


def _check_same_definition(spec: SweepSpec) -> None:
    manifest = Path(spec.workdir, spec.runs_dir, "sweeps", spec.name, MANIFEST)
    if not manifest.is_file():
        return
    saved = {"group_seeds": 1, **json.loads(manifest.read_text())["spec"]}
    for key in ("agent", "agent_args", "group_seeds"):
        if saved[key] != getattr(spec, key):
            raise ValueError(
                f"sweep {spec.name!r} already exists with {key}={saved[key]!r}, not "
                f"{getattr(spec, key)!r}; its finished trials would not match. Use "
                "another --name, or --resume to continue it as it was defined"
            )


def check_sweep_args(args: SweepArgs) -> None:
    """Raise a ValueError naming the first of the sweep's own numbers out of range."""
    if not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        raise ValueError(
            f"--cpus-per-trial must be a number > 0, got {args.cpus_per_trial}"
        )
    for flag, value in (("--num-cpus", args.num_cpus),
                        ("--max-concurrent", args.max_concurrent)):  # fmt: skip
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1 (or unset), got {value}")
    if any(seed < 0 for seed in args.seeds):
        raise ValueError(f"--seeds must be >= 0, got {list(args.seeds)}")
    if args.group_seeds < 1:
        raise ValueError(
            f"--group-seeds must be >= 1 (1: one trial per seed), got {args.group_seeds}"
        )


def run(args: SweepArgs) -> int:
    """Run (or dry-run) the sweep; 1 when a trial is still unfinished at the end."""
    check_sweep_args(args)
    spec = spec_from_args(args)
    if not args.resume:
        _check_same_definition(spec)
    checked = check_trial_args(spec)
    if checked:
        print(
            f"arguments of {checked} grid point(s) accepted by {Path(spec.agent).name}"
        )
    if not args.resume:  # (a resumed sweep keeps its trials as they were planned)
        spec = plan_seed_groups(spec)
    for exp_name, reason in spec.seeds_apart.items():
        print(f"{exp_name}: one trial per seed (--group-seeds): {reason}")
    if args.dry_run:
        for trial in spec.trials():
            print(f"{trial.trial_id}: {shlex.join(trial.command)}")
        return 0
    manifest = run_sweep(
        spec,
        max_retries=args.max_retries,
        cpus_per_trial=args.cpus_per_trial,
        num_cpus=args.num_cpus,
        max_concurrent=args.max_concurrent,
    )
    unfinished = [t for t, r in manifest["trials"].items() if r["status"] != "done"]
    return 1 if unfinished else 0


def parse_args(argv: Sequence[str] | None = None) -> SweepArgs:
    """``clenv sweep``'s arguments; everything after ``--`` goes to the agent."""
    argv = list(sys.argv[1:] if argv is None else argv)
    agent_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, agent_args = argv[:cut], argv[cut + 1 :]
    args = tyro.cli(SweepArgs, args=argv, prog="clenv sweep")
    args.agent_args = (*args.agent_args, *agent_args)
    return args


#: What ``clenv sweep`` reports as a one-line error (status 2): Ray is optional.
SWEEP_ERRORS = (ValueError, FileNotFoundError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """``clenv sweep``; exit status 1 when a trial is still unfinished at the end."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_command("clenv sweep", main, SWEEP_ERRORS))
