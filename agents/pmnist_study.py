"""A scaled-down Permuted MNIST study of every supervised plasticity baseline.

Runs ``agents/supervised_l2er.py`` for every (arm, seed) as a trial of :mod:`clenv.sweep`
(``run_trial``: one subprocess with one torch thread, its log and state under
``<runs-dir>/<label>_seed<k>/sweeps/``; an interrupted run continues with the agent's
``--resume``), several at a time, then draws one figure from the runs (each run's
``metrics.h5`` or record read once, only the series drawn: :func:`read_run`): online accuracy per
task, dead units, effective rank and ε-rank at task start (mean over seeds, with the
min-max band), and writes a Markdown table next to it. An *arm* is a label and the
agent flags that make it: a built-in one (:data:`ARMS`: every supervised baseline,
``bp`` to ``trac``), a bare ``--reg`` name (``--arms er`` is ``er=--reg er``) or
``label=agent flags`` (``--arms "muon_lr3=--reg bp --optimizer muon --learning-rate
1e-3"``); an arm's flag replaces the same flag of the shared ones. The ε-rank is the
share of the logged spectral density's mass with |λ| > ε
(:func:`clenv.plotting.stats.epsilon_rank_from_density`), ε chosen as SC do by the
largest R² against the task's online accuracy (:func:`clenv.plotting.stats.best_epsilon`)
unless ``--epsilon`` is given. Every arm's arguments go through the agent's own checks
before any run starts (``--check-only`` stops there). Each run that ends is kept as a
*record* (``--records``, committed beside the figure: its drawn series in one small
HDF5 of ``metrics.h5``'s layout, with the run's saved arguments and provenance): the
figure is drawn from the records, a recorded run is never rerun, so an interrupted
study continues, also from a fresh checkout without the runs directory, and
``--plot-only`` redraws the figure. A record or run made with other agent flags than
its arm's (another width, number of tasks, ...) is refused, naming the flags. A run
that diverges (a non-finite loss, gradient or weight) ends there with the event
recorded in its ``args.json`` (the agent's ``--on-divergence stop``): it counts as
finished, is drawn up to its last full task with an ``x``, and the table says at which
task it diverged; a divergence is a deterministic result of the arm and seed, so it is
reported rather than retried.

    clenv download mnist   # once: into $CLENV_DATA_DIR, else ~/.cache/clenv
    python agents/pmnist_study.py                      # every arm of ARMS
    python agents/pmnist_study.py --arms bp l2er muon  # some of them

docs/results/README.md holds the exact command behind the committed figure.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from clenv.divergence import ARGS_KEY as DIVERGED
from clenv.logger import METRICS_FILE, complete_rows, copy_series, open_metrics
from clenv.methods import split_name
from clenv.plotting import Series
from clenv.plotting.figure import EPSILON_CANDIDATES
from clenv.plotting.stats import best_epsilon, epsilon_rank_from_density, linear_fit
from clenv.provenance import ARGS_KEY as PROVENANCE
from clenv.sweep import SweepSpec, Trial, check_trial_args, read_trial_state, run_trial

AGENT = Path(__file__).with_name("supervised_l2er.py")


@dataclass(frozen=True)
class Arm:
    """One compared configuration: its label (the run folder's name), the agent flags
    that make it (``--reg`` included), the figure column it is drawn in and a colour."""

    label: str
    flags: tuple[str, ...]
    group: str = "other"
    color: str | None = None

    @property
    def reg(self) -> str:
        return self.flags[self.flags.index("--reg") + 1]


REFERENCE = "reference"
"""the group drawn in every column of the figure: BP, and L2-ER (the method the study
was first made for)"""

# Every supervised baseline clenv has, by figure column: (label, agent flags, colour).
# Each method takes its --method-preset pmnist values (SC's PMNIST values where SC ran
# it, the method's own defaults otherwise: docs/methods.md, docs/protocols.md).
BUILT_IN: dict[str, list[tuple[str, str, str]]] = {
    REFERENCE: [("bp", "--reg bp", "tab:red"), ("l2er", "--reg l2er", "tab:green")],
    "weight regularisers": [
        ("l2", "--reg l2", "tab:blue"),
        ("l2init", "--reg l2init", "tab:orange"),
        ("spectral", "--reg spectral", "tab:brown"),  # SC's: target 2
        # Lewandowski et al. 2024: sigma_max kept near 1.
        ("spectral_target1", "--reg spectral --method-kwargs target=1.0", "tab:pink"),
        ("parseval", "--reg parseval", "tab:olive"),
    ],
    "normalisation and units": [
        ("layernorm_l2", "--reg l2 --norm layer", "tab:blue"),  # SC's LayerNorm-L2
        # SC's laynorm_l2 sweep, lr 1e-2: lambda 1e-3, 1e-4, 1e-5 (the preset's,
        # above): permuted_mnist/scripts/hyperparams/laynorm_l2.py.
        (
            "layernorm_l2_wd1e-4",
            "--reg l2 --norm layer --method-kwargs weight_decay=1e-4",
            "tab:cyan",
        ),
        (
            "layernorm_l2_wd1e-3",
            "--reg l2 --norm layer --method-kwargs weight_decay=1e-3",
            "tab:olive",
        ),
        ("nap", "--reg nap --norm layer", "tab:orange"),
        ("crelu", "--reg bp --activation crelu", "tab:brown"),
        # Half the units, so each layer keeps 100 features: Chung et al.'s official
        # code's CReLU baseline (github.com/wechu/parseval_reg, agent.py:702-706).
        ("crelu_half", "--reg bp --activation crelu --width 50", "tab:purple"),
        ("fourier", "--reg bp --activation fourier", "tab:pink"),
        # The paper's claim is for Fourier features "combined with regularization"
        # (Lewandowski et al., ICLR 2025, abstract): here with the study's L2.
        ("fourier_l2", "--reg l2 --activation fourier", "tab:gray"),
    ],
    # SC's bp_muon and bp_mse each sweep the step size over 1e-2 (the study's), 1e-3
    # and 1e-4 (permuted_mnist/scripts/hyperparams/bp_muon.py, bp_mse.py).
    "optimizer and loss": [
        ("muon", "--reg bp --optimizer muon", "tab:blue"),  # SC's bp_muon
        ("muon_lr1e-3", "--reg bp --optimizer muon --learning-rate 1e-3", "tab:cyan"),
        ("muon_lr1e-4", "--reg bp --optimizer muon --learning-rate 1e-4", "navy"),
        ("trac", "--reg bp --optimizer trac", "tab:orange"),
        ("mse", "--reg bp --loss mse", "tab:brown"),  # SC's bp_mse
        ("mse_lr1e-3", "--reg bp --loss mse --learning-rate 1e-3", "tab:olive"),
        ("mse_lr1e-4", "--reg bp --loss mse --learning-rate 1e-4", "tab:gray"),
        ("upgd", "--reg upgd", "tab:pink"),
    ],
    "resets and injection": [
        ("cbp", "--reg cbp", "tab:purple"),
        ("snp_l2", "--reg snp+l2", "tab:blue"),  # SC's snp_l2
        ("redo", "--reg redo", "tab:orange"),
        ("head_reset", "--reg head_reset", "tab:brown"),
        # The last hidden layer and the head (layer_reset's default, the head alone,
        # is head_reset).
        (
            "layer_reset",
            "--reg layer_reset --method-kwargs \"layers=['layers.4','layers.6']\"",
            "tab:pink",
        ),
        ("inject", "--reg inject", "tab:gray"),
    ],
}
ARMS: dict[str, Arm] = {
    label: Arm(label, tuple(shlex.split(flags)), group, color)
    for group, rows in BUILT_IN.items()
    for label, flags, color in rows
}
# Minutes per run (one seed) on the study's settings, for the launch order and the
# time left the study prints: the wall time of the second execution's runs (2-core
# AMD EPYC, two runs at a time; docs/results/README.md) where it has run the arm (bp,
# muon, muon_lr1e-3, trac, spectral), else the first execution's estimate scaled by
# the ratio seen on those arms (x0.3 for autograd arms; x0.15 on the fast path, where
# bp went from 3.7 to 0.55 min; layer_reset, the mse arms, l2init, nap, crelu and the
# layernorm_l2 arms, now on the fast path too, as bp or l2 plus their extra passes).
# Another machine can be several times slower (a 2-core EPYC without AVX-512 took ~3x
# as long on Muon): the study also prints its pace (pace_note).
COST: dict[str, float] = {
    "head_reset": 0.45, "bp": 0.55, "l2": 0.7, "cbp": 1.2, "l2er": 1.7,
    "crelu_half": 3.8, "layer_reset": 0.6, "inject": 4.2, "redo": 4.7, "fourier": 4.7,
    "fourier_l2": 4.8, "l2init": 0.8, "crelu": 0.8, "layernorm_l2": 0.8,
    "layernorm_l2_wd1e-4": 0.8, "layernorm_l2_wd1e-3": 0.8, "mse": 0.6, "mse_lr1e-3": 0.6,
    "mse_lr1e-4": 0.6, "nap": 1.5, "snp_l2": 7.1, "parseval": 10, "upgd": 12.6,
    "spectral_target1": 13.5, "spectral": 14.2, "trac": 20, "muon": 28.8,
    "muon_lr1e-3": 28.3, "muon_lr1e-4": 28.5,
}  # fmt: skip


# Colours for arms outside ARMS, in order (none is a reference colour).
SPARE_COLORS = ("tab:cyan", "gold", "navy", "teal", "coral", "indigo", "lime", "maroon")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# Flags each run gets from the study itself.
STUDY_FLAGS = ("--seed", "--exp-name", "--runs-dir", "--resume")


def split_flags(tokens: list[str] | tuple[str, ...], where: str) -> dict[str, list]:
    """``["--a", "1", "--b"]`` -> ``{"--a": ["1"], "--b": []}`` (order kept)."""
    groups: dict[str, list[str]] = {}
    current = None
    for token in tokens:
        if token.startswith("--"):
            current = token
            if current in groups:
                raise ValueError(f"{where}: {current} given twice")
            groups[current] = []
        elif current is None:
            raise ValueError(
                f"{where}: {token!r} comes before any flag; expected agent flags such "
                "as '--reg bp --optimizer muon'"
            )
        else:
            groups[current].append(token)
    return groups


def merge_flags(shared: list[str], arm: tuple[str, ...]) -> list[str]:
    """The shared agent arguments, each flag the arm also sets replaced by the arm's."""
    own = split_flags(arm, "arm")
    merged = [
        token
        for flag, values in split_flags(shared, "shared arguments").items()
        if flag not in own
        for token in (flag, *values)
    ]
    return merged + [token for flag, values in own.items() for token in (flag, *values)]


def parse_arm(entry: str) -> Arm:
    """An ``--arms`` entry: a label of :data:`ARMS`, a ``--reg`` name, or
    ``label=agent flags``.

    Raises:
        ValueError: naming the entry and what was expected.
    """
    label, sep, flags = entry.partition("=")
    label = label.strip()
    if not _LABEL.fullmatch(label):
        raise ValueError(
            f"--arms {entry!r}: the label {label!r} must be letters, digits and _.+- "
            "(it names the run folders <runs-dir>/<label>_seed<k>)"
        )
    if not sep:
        if label in ARMS:
            return ARMS[label]
        try:
            split_name(label)
        except ValueError as error:
            raise ValueError(
                f"--arms {entry!r} is neither a built-in arm ({sorted(ARMS)}) nor a "
                f"--reg name ({error}); give label=agent flags for any other arm, e.g. "
                "'muon_lr3=--reg bp --optimizer muon --learning-rate 1e-3'"
            ) from None
        return Arm(label, ("--reg", label))
    tokens = tuple(shlex.split(flags))
    groups = split_flags(tokens, f"--arms {entry!r}")
    if len(groups.get("--reg", [])) != 1:
        raise ValueError(
            f"--arms {entry!r} sets no single --reg (the agent's default is l2er); add "
            "one, e.g. '--reg bp'"
        )
    taken = sorted(set(groups) & set(STUDY_FLAGS))
    if taken:
        raise ValueError(f"--arms {entry!r}: {taken} are set by the study itself")
    return Arm(label, tokens)


@dataclass
class Args:
    arms: tuple[str, ...] = tuple(ARMS)
    """what to compare: labels of the built-in arms (every supervised baseline; the
    module's ARMS), --reg names, or `label=agent flags` (with a --reg); runs go to
    <runs-dir>/<label>_seed<k>"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds per arm (each also draws its own task sequence)"""
    width: int = 100
    """hidden units per layer of the 3-layer MLP"""
    num_tasks: int = 150
    """tasks per run"""
    examples_per_task: int = 5000
    """examples per task (one pass, batch 1)"""
    learning_rate: float = 0.01
    """SGD step size (SC's figures: 0.01)"""
    curvature_every_tasks: int = 30
    """spectral density at the start and end of every k-th task"""
    metric_samples: int = 1000
    """samples of the task for the curvature and plasticity metrics (SC: 2000; fewer
    halve the cost of a spectrum)"""
    plasticity_every_tasks: int = 5
    """dead units and effective rank at the end of every k-th task"""
    on_divergence: Literal["stop", "fail"] = "stop"
    """the agent's --on-divergence: stop (a diverged run ends cleanly, recorded and
    reported by the study) or fail (it exits 1); either way the study counts a recorded
    divergence as the run's end"""
    epsilon: float | None = None
    """ε of the ε-rank panel; default: the logged ε whose ε-rank at task start best
    predicts the task's online accuracy (largest R²), SC's own procedure (SC chose 0.01
    for width 1000)"""
    data_dir: str | None = None
    """data root holding mnist/ (else $CLENV_DATA_DIR)"""
    runs_dir: str = "runs/pmnist_study"
    """where the runs go"""
    records: str = "docs/results/pmnist_study_runs"
    """where each ended run is kept as a record: its drawn series in one small HDF5
    (<label>_seed<k>.h5, metrics.h5's layout). The figure is drawn from the records and
    a recorded run is never rerun, so a study continues, and its figure is redrawn,
    from a checkout without the runs directory; a record made with other settings is
    refused"""
    out: str = "docs/results"
    """where the figure and the summary go"""
    name: str = "pmnist_width100"
    """file name stem of the figure and summary"""
    workers: int = 2
    """runs at a time (one core each)"""
    order: Literal["cheapest", "costliest"] = "cheapest"
    """which runs start first, by their estimated cost (COST): cheapest (an interrupted
    study has its cheap arms whole) or costliest (for a time-limited job: the runs
    still going when it is stopped are the short ones, so it loses the least; arms
    without an estimate count as costliest)"""
    check_only: bool = False
    """only check every arm's arguments with the agent (no run, no figure)"""
    plot_only: bool = False
    """only redraw the figure from the runs in --runs-dir"""
    partial: bool = False
    """also plot runs that have not finished (up to the tasks every seed reached)"""
    extra: list[str] = field(default_factory=list)
    """more arguments for every run of the agent (an arm's own flag wins)"""


ACCURACY = "cl/online_accuracy_per_task"
DENSITY = "curvature/task_start/spectral_density"
HIDDEN_LAYERS = 3
LAYER_METRICS = ("dead_units", "effective_rank")


def layer_tags(metric: str) -> list[str]:
    """The tags of a per-layer plasticity metric of the hidden layers."""
    return [f"plasticity/layer{i}/{metric}" for i in range(HIDDEN_LAYERS)]


# Every series the figure and the table draw.
DRAWN = (ACCURACY, DENSITY, *(tag for m in LAYER_METRICS for tag in layer_tags(m)))


# Agent flags that do not change a run's numbers, so a run made with other values of
# them still counts for the study.
NOT_COMPARED = (
    "--runs-dir",
    "--exp-name",
    "--data-dir",
    "--no-progress",
    "--on-divergence",
)


def flags_of(command: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """The flags of an agent's arguments that set its numbers (all but
    :data:`NOT_COMPARED`): ``{"--reg": ["bp"], ...}``."""
    flags = split_flags(command, "agent arguments")
    return {flag: values for flag, values in flags.items() if flag not in NOT_COMPARED}


@dataclass(frozen=True)
class StudyRun:
    """One run as the study reads it (from its run directory or its record): the tasks
    it was started for and its series of :data:`DRAWN` (those it logged, each with at
    least one row)."""

    path: Path
    num_tasks: int
    series: dict[str, Series]
    diverged: dict | None = None
    """the divergence the agent recorded in ``args.json`` (``task_id``, ``kind``,
    ``tensor``, ...), if the run diverged"""
    commits: tuple[str, ...] = ()
    """the clenv commits the run was started and resumed at (``args.json``'s
    ``provenance``; ``"dirty"`` appended for uncommitted changes), empty for a run
    made before clenv recorded them"""
    flags: dict[str, list[str]] | None = None
    """the agent flags it was started with (:func:`flags_of` of its provenance's
    ``argv``), None for a run made before clenv recorded them"""

    @property
    def tasks_done(self) -> int:
        """Tasks with an online accuracy logged."""
        accuracy = self.series.get(ACCURACY)
        return 0 if accuracy is None else int(accuracy.task_id.max()) + 1

    @property
    def ended(self) -> bool:
        """Whether the run is over: every task done, or stopped by a divergence."""
        return self.tasks_done >= self.num_tasks or self.diverged is not None


def read_run(run: Path) -> StudyRun:
    """The :class:`StudyRun` of a run directory or a record, from one read of its
    ``metrics.h5`` (also while the run is writing it; a row it has not finished is
    left out) or of the record.

    Raises:
        ValueError: the file is not a readable clenv metrics file.
    """
    path = Path(run) if Path(run).suffix == ".h5" else Path(run) / METRICS_FILE
    series = {}
    try:
        with open_metrics(path) as f:
            saved = json.loads(f.attrs["args_json"])
            num_tasks = int(saved["num_tasks"])
            for tag in DRAWN:
                rows = complete_rows(f[tag]) if tag in f else 0
                if rows:
                    group = f[tag]
                    series[tag] = Series(
                        name=tag,
                        step=np.asarray(group["step"][:rows], dtype=np.int64),
                        task_id=np.asarray(group["task_id"][:rows], dtype=np.int64),
                        value=np.asarray(group["value"][:rows]),
                        attrs=dict(group.attrs),
                    )
    except (OSError, RuntimeError, KeyError) as error:  # h5py's errors on damage
        raise ValueError(
            f"cannot read {str(path)!r} ({error}); the file is corrupt or not a clenv "
            "metrics file: move it (or its run directory) aside to rerun that run"
        ) from error
    provenance = saved.get(PROVENANCE, [])
    commits = tuple(
        dict.fromkeys(
            entry["git"]["commit"][:7] + (" dirty" if entry["git"]["dirty"] else "")
            for entry in provenance
            if entry.get("git")
        )
    )
    flags = flags_of(provenance[0]["argv"][1:]) if provenance else None
    return StudyRun(path.parent if path.name == METRICS_FILE else path, num_tasks,
                    series, saved.get(DIVERGED), commits, flags)  # fmt: skip


def arms_of(args: Args) -> list[Arm]:
    """The arms of ``--arms``, each with a colour (raises ValueError for a bad entry
    or a label given twice)."""
    arms = [parse_arm(entry) for entry in args.arms]
    labels = [arm.label for arm in arms]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"--arms names {twice} more than once; labels must differ")
    spare = iter(SPARE_COLORS * len(arms))
    return [
        arm if arm.color else dataclasses.replace(arm, color=next(spare))
        for arm in arms
    ]


def agent_args(args: Args) -> list[str]:
    """The agent's arguments shared by every run (the arm adds its flags, the sweep
    seed, reg and names)."""
    command = [
        "--width", str(args.width), "--num-tasks", str(args.num_tasks),
        "--examples-per-task", str(args.examples_per_task),
        "--learning-rate", str(args.learning_rate),
        "--curvature-every-tasks", str(args.curvature_every_tasks),
        "--plasticity-every-tasks", str(args.plasticity_every_tasks),
        "--metric-samples", str(args.metric_samples), "--no-progress",
        "--on-divergence", args.on_divergence, *args.extra,
    ]  # fmt: skip
    if args.data_dir is not None:
        command += ["--data-dir", args.data_dir]
    return command


def trial_of(args: Args, arm: Arm, seed: int) -> tuple[Trial, SweepSpec, Path]:
    """The sweep trial of (arm, seed): runs in ``<runs-dir>/<label>_seed<seed>/``.

    An arm that is just ``--reg <label>`` keeps the sweep name ``pmnist_study`` (so the
    study's first four arms' runs are found as they were made); any other arm gets
    ``pmnist_study-<label>``, which names its runs ``pmnist_study-<label>-<reg>``."""
    flags = split_flags(arm.flags, f"arm {arm.label}")
    own = [
        token for flag, v in flags.items() if flag != "--reg" for token in (flag, *v)
    ]
    plain = arm.label == arm.reg and not own
    spec = SweepSpec(
        name="pmnist_study" if plain else f"pmnist_study-{arm.label}",
        agent=str(AGENT), seeds=[seed], regs=[arm.reg], grid={},
        agent_args=merge_flags(agent_args(args), tuple(own)),
        runs_dir=str(Path(args.runs_dir) / f"{arm.label}_seed{seed}"),
        workdir=str(Path.cwd()),
    )  # fmt: skip
    sweep_dir = Path(spec.workdir, spec.runs_dir, "sweeps", spec.name)
    return spec.trials()[0], spec, sweep_dir


def record_of(args: Args, label: str, seed: int) -> Path:
    return Path(args.records) / f"{label}_seed{seed}.h5"


def check_flags(args: Args, arm: Arm, seed: int, run: StudyRun) -> None:
    """Refuse a run (or record) of (arm, seed) made with other agent flags than the
    study's for it (a run without recorded flags passes).

    Raises:
        ValueError: naming the run, the flags that differ and what to do.
    """
    trial, _, _ = trial_of(args, arm, seed)
    asked = flags_of(trial.command[2:])
    if run.flags is None or run.flags == asked:
        return
    differ = sorted(
        flag for flag in {*asked, *run.flags} if asked.get(flag) != run.flags.get(flag)
    )

    def show(flags: dict) -> str:
        return ", ".join(" ".join([f, *flags[f]]) if f in flags else f"no {f}"
                         for f in differ)  # fmt: skip

    raise ValueError(
        f"{run.path} was made with {show(run.flags)}, but this study's {arm.label} "
        f"seed {seed} has {show(asked)}: give a study with other settings its own "
        "--records, --runs-dir and --name, or move that run aside to rerun it"
    )


def study_run(args: Args, arm: Arm, seed: int) -> StudyRun | None:
    """The run of (arm, seed) to report: its record; else the one in the runs
    directory that ended (finished or diverged), recorded first; or with --partial
    the one with the most tasks.

    Raises:
        ValueError: the run or record was made with other flags (:func:`check_flags`).
    """
    record = record_of(args, arm.label, seed)
    if record.exists():
        run = read_run(record)
        check_flags(args, arm, seed, run)
        return run
    directory = Path(args.runs_dir) / f"{arm.label}_seed{seed}"
    runs = [read_run(p.parent) for p in sorted(directory.glob(f"*/{METRICS_FILE}"))]
    for run in runs:
        if run.ended:
            check_flags(args, arm, seed, run)
            copy_series(run.path / METRICS_FILE, record, DRAWN)
            return read_run(record)
    if args.partial and runs:
        best = max(runs, key=lambda run: run.tasks_done)
        check_flags(args, arm, seed, best)
        return best if best.tasks_done else None
    return None


def study_runs(args: Args) -> dict[str, list[StudyRun]]:
    """``{label: [the run of each seed that has one]}`` for every arm, in the arms' and
    seeds' order: every run the figure and the table draw, each read once."""
    runs = {}
    for arm in arms_of(args):
        found = (study_run(args, arm, seed) for seed in args.seeds)
        runs[arm.label] = [run for run in found if run is not None]
    return runs


def ended_run(args: Args, arm: Arm, seed: int) -> StudyRun | None:
    """The run of (arm, seed) that finished or diverged, if there is one."""
    return study_run(dataclasses.replace(args, partial=False), arm, seed)


def finished(args: Args, arm: Arm, seed: int) -> bool:
    return ended_run(args, arm, seed) is not None


def check_arms(args: Args, arms: list[Arm]) -> list[str]:
    """Run the agent's own argument checks (``check_args``) on every arm; returns each
    arm's command (first seed).

    Raises:
        ValueError: an arm's arguments are rejected, with the agent's message.
    """
    commands = []
    for arm in arms:
        trial, spec, _ = trial_of(args, arm, args.seeds[0])
        try:
            check_trial_args(spec)
        except ValueError as error:
            raise ValueError(
                f"arm {arm.label} ({' '.join(arm.flags)}): {error}"
            ) from None
        commands.append(f"{arm.label}: {shlex.join(trial.command[1:])}")
    return commands


def launch(args: Args, arm: Arm, seed: int) -> tuple[str, int, float, int]:
    """Run the trial of (arm, seed) unless it finished: ``(label, seed, s, exit code)``."""
    if finished(args, arm, seed):
        return arm.label, seed, 0.0, 0
    trial, spec, sweep_dir = trial_of(args, arm, seed)
    for sub in ("trials", "logs"):
        (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
    try:
        state = run_trial(trial, spec, sweep_dir, threads=1)
    except RuntimeError:
        state = read_trial_state(sweep_dir, trial.trial_id)
    return arm.label, seed, state.seconds or 0.0, state.returncode


def log_of(args: Args, arm: Arm, seed: int) -> str:
    trial, _, sweep_dir = trial_of(args, arm, seed)
    return read_trial_state(sweep_dir, trial.trial_id).log or str(sweep_dir / "logs")


def per_method(runs: dict[str, list[StudyRun]], values_of) -> dict:
    """``{label: (task_ids, values[seed, task])}`` over the seeds whose run gives
    values, cut to the tasks every seed reached; ``values_of(run)`` returns a run's
    ``(task_ids, values)`` or None."""
    table = {}
    for label, seed_runs in runs.items():
        rows, tasks = [], None
        for run in seed_runs:
            found = values_of(run)
            if found is None or not len(found[0]):
                continue
            if tasks is None or len(found[0]) < len(tasks):
                tasks = found[0]
            rows.append(found[1])
        if rows:
            n = len(tasks)
            table[label] = (tasks, np.stack([r[:n] for r in rows]))
    return table


def per_task(tag: str):
    """``values_of`` for :func:`per_method`: the per-task mean of one series."""

    def values_of(run: StudyRun):
        series = run.series.get(tag)
        return None if series is None else series.per_task_mean()

    return values_of


def over_layers(metric: str, reduce):
    """``values_of``: a per-layer metric of the hidden layers, reduced over them."""
    tags = layer_tags(metric)

    def values_of(run: StudyRun):
        if not all(tag in run.series for tag in tags):
            return None
        means = [run.series[tag].per_task_mean() for tag in tags]
        return means[0][0], reduce(np.stack([values for _, values in means]))

    return values_of


def task_start_densities(
    run: StudyRun,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(task_ids, grid, densities)``: the first spectral density of every task."""
    density = run.series.get(DENSITY)
    if density is None:
        return None
    tasks, first = np.unique(density.task_id, return_index=True)
    grid = np.asarray(density.attrs["grid"], dtype=np.float64)
    return tasks, grid, density.value[first]


def epsilon_rank_at_task_start(eps: float):
    """``values_of``: the ε-rank (share of mass with |λ| > ε) at every task's start."""

    def values_of(run: StudyRun):
        found = task_start_densities(run)
        if found is None:
            return None
        tasks, grid, densities = found
        return tasks, epsilon_rank_from_density(grid, densities, eps)

    return values_of


def epsilon_points(runs: dict[str, list[StudyRun]]) -> tuple[list, np.ndarray]:
    """Densities at task start paired with that task's online accuracy, pooled over
    runs: ``([(grid, densities) per run], accuracies)``, as :func:`best_epsilon` takes."""
    spectra, accuracy = [], []
    for run in (run for seed_runs in runs.values() for run in seed_runs):
        found = task_start_densities(run)
        online = run.series.get(ACCURACY)
        if found is None or online is None:
            continue
        tasks, grid, densities = found
        acc_tasks, acc_values = online.per_task_mean()
        shared = np.isin(tasks, acc_tasks)
        if shared.any():
            spectra.append((grid, densities[shared]))
            accuracy.append(acc_values[np.searchsorted(acc_tasks, tasks[shared])])
    return spectra, np.concatenate(accuracy) if accuracy else np.zeros(0)


def epsilon_fits(runs: dict[str, list[StudyRun]]) -> dict[float, tuple[float, int]]:
    """R² of a task's online accuracy against the ε-rank at its start, for each of
    :data:`~clenv.plotting.figure.EPSILON_CANDIDATES` (SC's test, Sec. 4, pooling every
    (run, task) with a spectrum): ``{ε: (R², points)}``."""
    spectra, accuracy = epsilon_points(runs)
    if not spectra:
        return {}
    fits = {}
    for eps in EPSILON_CANDIDATES:
        ranks = np.concatenate(
            [epsilon_rank_from_density(g, d, eps) for g, d in spectra]
        )
        fits[eps] = (linear_fit(ranks, accuracy)[2], len(accuracy))
    return fits


def columns_of(arms: list[Arm]) -> list[tuple[str, list[Arm]]]:
    """The figure's columns: one per group of arms (in the arms' order), each drawn
    with the reference arms (BP, L2-ER) when the study has them; the references get a
    column of their own only when no other group is there."""
    references = [arm for arm in arms if arm.group == REFERENCE]
    groups = list(dict.fromkeys(arm.group for arm in arms if arm.group != REFERENCE))
    if not groups:
        return [(REFERENCE, references)]
    return [
        (group, [*references, *(arm for arm in arms if arm.group == group)])
        for group in groups
    ]


def plot(args: Args, runs: dict[str, list[StudyRun]]) -> dict:
    """Draw the figure of :func:`study_runs`'s runs; returns the table's values."""
    from matplotlib.figure import Figure

    arms = arms_of(args)
    accuracy = per_method(runs, per_task(ACCURACY))
    if not accuracy:
        hint = "" if args.partial else " (--partial plots unfinished runs)"
        raise SystemExit(
            f"error: no record in {args.records} and no finished run in "
            f"{args.runs_dir} of {[arm.label for arm in arms]}{hint}; the logs under <runs-dir>/<label>_seed<k>/sweeps/ "
            "say why a run stopped"
        )
    spectra, performance = epsilon_points(runs)
    chosen, r2 = (
        best_epsilon(spectra, performance, EPSILON_CANDIDATES)
        if len(performance) >= 3
        else (float("nan"), float("nan"))
    )
    if args.epsilon is None:
        args.epsilon = chosen if np.isfinite(chosen) else 0.01
    elif len(performance) >= 3:
        ranks = [epsilon_rank_from_density(g, d, args.epsilon) for g, d in spectra]
        r2 = linear_fit(np.concatenate(ranks), performance)[2]
    panels = [
        ("online accuracy", accuracy),
        (f"dead units (3 layers, {args.metric_samples} samples)",
         per_method(runs, over_layers("dead_units", lambda a: a.sum(0)))),
        ("effective rank (mean of 3 layers)",
         per_method(runs, over_layers("effective_rank", lambda a: a.mean(0)))),
        (f"Hessian ε-rank at task start\n(ε = {args.epsilon:.3g}, R² = {r2:.2f})",
         per_method(runs, epsilon_rank_at_task_start(args.epsilon))),
    ]  # fmt: skip
    diverged = {
        label: [run.diverged["task_id"] for run in seed_runs if run.diverged]
        for label, seed_runs in runs.items()
    }
    columns = columns_of(arms)
    fig = Figure(figsize=(1.5 + 4.2 * len(columns), 11), constrained_layout=True)
    axes = fig.subplots(len(panels), len(columns), squeeze=False, sharey="row")
    for row, (ylabel, table) in enumerate(panels):
        # The ε-rank at a large ε spans decades (0.003 for bp to 0.98 for fourier at
        # 0.1); a log axis keeps the small ones apart. Linear below 1e-3, as it can be 0.
        last = row == len(panels) - 1
        log_axis = last and wide_range(table)
        for col, (group, shown) in enumerate(columns):
            ax = axes[row, col]
            for arm in shown:
                if arm.label not in table:
                    continue
                tasks, values = table[arm.label]
                mean = values.mean(0)
                # A reference drawn in another group's column: thin, dashed, no band.
                faint = arm.group == REFERENCE and group != REFERENCE
                marker = "o" if len(tasks) < 12 else None
                stopped = diverged.get(arm.label)
                note = f", {len(stopped)} diverged" if stopped else ""
                ax.plot(tasks, mean, color=arm.color, marker=marker,
                        lw=0.9 if faint else 1.4, ls="--" if faint else "-",
                        label=f"{arm.label} ({values.shape[0]} seeds{note})")  # fmt: skip
                if stopped:  # the curves end where the first seed diverged
                    ax.plot(tasks[-1], mean[-1], "x", color=arm.color, ms=9, mew=2)
                if not faint:
                    ax.fill_between(tasks, values.min(0), values.max(0),
                                    color=arm.color, alpha=0.18, lw=0)  # fmt: skip
            if row == 0:
                ax.set_title(group)
                ax.legend(fontsize=7)
            if col == 0:
                ax.set_ylabel(ylabel)
            if last:
                ax.set_xlabel("task")
            if log_axis:
                ax.set_yscale("symlog", linthresh=1e-3)
            ax.grid(alpha=0.3)
    fig.suptitle(
        f"Permuted MNIST, MLP 784-{args.width}x3-10, SGD lr {args.learning_rate} "
        f"unless the arm changes it, batch 1, {args.examples_per_task} examples/task\n"
        "mean over seeds, band = min-max, dashed = reference arms, "
        "x = a seed diverged after this task"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{args.name}.png", dpi=100)
    flags = {arm.label: " ".join(arm.flags) for arm in arms}
    summary: dict[str, dict] = {}
    for label, (_, values) in accuracy.items():
        mean = values.mean(0)
        k = min(10, len(mean))
        entry = {
            "flags": flags[label],
            "seeds": int(values.shape[0]),
            "tasks": int(len(mean)),
            "accuracy_first_10": float(mean[:k].mean()),
            "accuracy_last_10": float(mean[-k:].mean()),
            "accuracy_last_10_per_seed": values[:, -k:].mean(1).tolist(),
            "accuracy_best_task": float(mean.max()),
            "diverged_at_task": diverged.get(label, []),
        }
        for key, index in (
            ("dead_units", 1),
            ("effective_rank", 2),
            ("epsilon_rank", 3),
        ):
            if label in panels[index][1]:
                series = panels[index][1][label][1].mean(0)
                entry[f"{key}_first"] = float(series[0])
                entry[f"{key}_last"] = float(series[-1])
        summary[label] = entry
    return summary


def wide_range(table: dict) -> bool:
    """Whether a panel's positive values span more than two decades, so that a linear
    axis would flatten all but the largest curves."""
    values = np.concatenate([v.ravel() for _, v in table.values()] or [np.zeros(0)])
    positive = values[values > 0]
    return positive.size > 0 and positive.max() > 100 * positive.min()


def not_drawn(args: Args, summary: dict) -> list[str]:
    """The arms without a run to draw (none finished; with --partial, none started)."""
    return [arm.label for arm in arms_of(args) if arm.label not in summary]


def say_not_drawn(args: Args, summary: dict) -> None:
    """Print which arms the figure lacks: those with an unfinished run (shown by
    --partial) and those with no run yet."""
    missing = not_drawn(args, summary)
    if not missing:
        return

    def has_run(label: str) -> bool:
        return any(
            next(Path(args.runs_dir).glob(f"{label}_seed{seed}/*/{METRICS_FILE}"), None)
            for seed in args.seeds
        )

    started = [label for label in missing if has_run(label)]
    not_started = [label for label in missing if label not in started]
    print(f"{len(missing)} of {len(arms_of(args))} arms not drawn:")
    if started:
        hint = "" if args.partial else " (--partial draws them)"
        print(f"  unfinished runs{hint}: {', '.join(started)}")
    if not_started:
        print(f"  no run in {args.runs_dir} yet: {', '.join(not_started)}")


def _first_last(entry: dict, key: str, fmt: str) -> str:
    if f"{key}_first" not in entry:
        return "-"
    return f"{fmt.format(entry[key + '_first'])} -> {fmt.format(entry[key + '_last'])}"


def code_line(runs: dict[str, list[StudyRun]]) -> str:
    """Which clenv commits made the runs drawn (from each run's provenance)."""
    counts: dict[str, int] = {}
    unrecorded = 0
    for seed_runs in runs.values():
        for run in seed_runs:
            for commit in run.commits:
                counts[commit] = counts.get(commit, 0) + 1
            unrecorded += not run.commits
    made = ", ".join(f"{commit} ({n} runs)" for commit, n in counts.items())
    parts = [f"clenv commits {made}"] if made else []
    if unrecorded:
        parts.append(
            f"{unrecorded} runs without a recorded commit (made before clenv recorded "
            "it in args.json, or outside a git checkout)"
        )
    return f"Code: {'; '.join(parts)}. A resumed run counts once per commit it ran at."


def write_summary(
    args: Args,
    runs: dict[str, list[StudyRun]],
    summary: dict,
    command: str,
    timings: list,
) -> None:
    lines = [
        f"# Permuted MNIST study ({args.name})", "",
        f"Command: `{command}`", "",
        f"MLP 784-{args.width}x3-10, SGD lr {args.learning_rate} (unless the arm's "
        f"flags change it), batch 1, {args.num_tasks} tasks x {args.examples_per_task} "
        f"examples; seeds {list(args.seeds)}. ε-rank with ε = {args.epsilon:.3g}.", "",
        "| arm | agent flags | seeds | acc. first 10 tasks | acc. last 10 tasks "
        "(seeds' range) | "
        "dead units first -> last | eff. rank first -> last | ε-rank first -> last | "
        "diverged at task |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for label, e in summary.items():
        last = f"{e['accuracy_last_10']:.3f}"
        per_seed = e["accuracy_last_10_per_seed"]
        if len(per_seed) > 1:  # the spread over seeds, to read differences against
            last += f" ({min(per_seed):.3f}-{max(per_seed):.3f})"
        # Fewer tasks than the study's: a seed diverged (or --partial); say which.
        if e["tasks"] < args.num_tasks:
            last += f" (tasks {max(e['tasks'] - 10, 0)}-{e['tasks'] - 1})"
        stopped = ", ".join(map(str, e["diverged_at_task"])) or "-"
        lines.append(
            f"| {label} | `{e['flags']}` | {e['seeds']} | {e['accuracy_first_10']:.3f} | "
            f"{last} | {_first_last(e, 'dead_units', '{:.0f}')} | "
            f"{_first_last(e, 'effective_rank', '{:.1f}')} | "
            f"{_first_last(e, 'epsilon_rank', '{:.3f}')} | {stopped} |"
        )
    missing = not_drawn(args, summary)
    if missing:
        lines += ["", "No finished run yet (running or not started): "
                  + ", ".join(missing) + "."]  # fmt: skip
    fits = epsilon_fits(runs)
    if fits:
        lines += ["", "R² of online accuracy on task k against the ε-rank (share of the "
                  "density's mass with |λ| > ε) at the start of task k, pooled over "
                  "arms, seeds and tasks with a spectrum (SC, PMNIST: ε = 0.01, "
                  "R² = 0.77):", "",
                  "| ε | R² | points |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {eps:.3g} | {r2:.2f} | {n} |" for eps, (r2, n) in fits.items()]
    lines += ["", code_line(runs)]
    if timings:
        lines += ["", "Wall time per run (s): " + ", ".join(
            f"{label}/{seed}: {seconds:.0f}" for label, seed, seconds, _ in timings)]  # fmt: skip
    out = Path(args.out)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")


def launch_order(args: Args, arms: list[Arm]) -> list[tuple[Arm, int]]:
    """Every (arm, seed) in ``--order`` of the arms' costs (:data:`COST`; an arm
    without one counts as costliest), each arm's seeds together."""
    sign = 1 if args.order == "cheapest" else -1
    return sorted(
        ((arm, seed) for arm in arms for seed in args.seeds),
        key=lambda pair: sign * COST.get(pair[0].label, np.inf),
    )


def run_study(args: Args, arms: list[Arm]) -> list[tuple[str, int, float, int]]:
    """Run every unfinished (arm, seed) of :func:`launch_order`, ``--workers`` at a
    time, after the agent has checked every unfinished arm's arguments."""
    order = launch_order(args, arms)
    pending = [(arm, seed) for arm, seed in order if not finished(args, arm, seed)]
    check_arms(args, list({arm.label: arm for arm, _ in pending}.values()))
    left = {(arm.label, seed): COST.get(arm.label, 0.0) for arm, seed in pending}
    print(f"{len(pending)} of {len(order)} runs to do, ~{estimate(left, args)} by "
          "the per-run estimates (COST in agents/pmnist_study.py; an arm without one "
          f"counts 0); {len(order) - len(pending)} ended already", flush=True)  # fmt: skip
    timings, start = [], time.time()
    with ThreadPoolExecutor(args.workers) as pool:
        started = [pool.submit(launch, args, arm, seed) for arm, seed in pending]
        # Each run is recorded and reported as soon as it ends, not in launch order.
        for future in as_completed(started):
            label, seed, seconds, code = future.result()
            arm = next(arm for arm in arms if arm.label == label)
            run = ended_run(args, arm, seed)
            if run is not None and run.diverged is not None:
                status = f"diverged at task {run.diverged['task_id']} (recorded)"
            elif code == 0:
                status = "ok"
            else:
                status = f"FAILED (exit {code}, see {log_of(args, arm, seed)})"
            left.pop((label, seed), None)
            timings.append((label, seed, seconds, code))
            print(f"{label} seed {seed}: {status} in {seconds:.0f} s "
                  f"[{time.time() - start:.0f} s; {len(left)} runs left, "
                  f"~{estimate(left, args)}{pace_note(timings, left, args)}]", flush=True)  # fmt: skip
    return timings


def pace_note(timings: list, minutes: dict, args: Args) -> str:
    """The time left at this machine's pace: ``minutes`` scaled by how much longer
    than their :data:`COST` the ``timings`` ``(label, seed, seconds, exit code)`` of
    the runs ended so far took (``COST`` was measured on one machine; another CPU,
    or one that other jobs load, runs the arms several times slower or faster).

    Returns ``"; ~8.4 h at this machine's pace (3.1x the estimates)"``, or "" before
    a run has ended or while the pace is the estimates' (within 20%). A failed run,
    one without a cost or one never run (0 s: recorded before) tells nothing; a
    resumed run is timed from its resume, so it pulls the ratio down.
    """
    ended = [(COST.get(label, 0.0), seconds / 60) for label, _, seconds, code in timings
             if code == 0 and COST.get(label, 0.0) > 0 and seconds > 0]  # fmt: skip
    estimated = sum(cost for cost, _ in ended)
    if not estimated:
        return ""
    ratio = sum(taken for _, taken in ended) / estimated
    if abs(ratio - 1) <= 0.2:
        return ""
    scaled = {key: value * ratio for key, value in minutes.items()}
    return f"; ~{estimate(scaled, args)} at this machine's pace ({ratio:.1f}x the estimates)"


def estimate(minutes: dict, args: Args) -> str:
    """Wall time of runs costing ``minutes`` each at ``--workers`` (arms without an
    entry in :data:`COST` count 0), as "5.2 h", or "40 min" under an hour. No run is
    split across workers, so it is never less than the costliest run."""
    total = max(sum(minutes.values()) / args.workers, max(minutes.values(), default=0))
    return f"{total / 60:.1f} h" if total >= 60 else f"{total:.0f} min"


def main() -> None:
    args = tyro.cli(Args)
    command = "python agents/pmnist_study.py " + " ".join(
        shlex.quote(arg) for arg in sys.argv[1:]
    )
    try:
        arms = arms_of(args)
        if args.check_only:
            print("\n".join(check_arms(args, arms)))
            print(f"{len(arms)} arms: the agent accepts every one")
            return
        timings = [] if args.plot_only else run_study(args, arms)
        runs = study_runs(args)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    summary = plot(args, runs)
    write_summary(args, runs, summary, command, [t for t in timings if t[2] > 0])
    print(json.dumps(summary, indent=2))
    print(f"figure: {Path(args.out) / (args.name + '.png')}")
    say_not_drawn(args, summary)


if __name__ == "__main__":
    main()
