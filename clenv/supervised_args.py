"""The arguments of ``agents/supervised_l2er.py`` apart from the learner's, resolved.

:class:`RunOptions` holds the flags every supervised run has besides the benchmark,
the network, the optimizer and the method (seeding, run directory and resume, what
is logged, checkpoints, divergence); the agent's ``Args`` adds those. Unset options
take the values of ``--protocol``: the rows of the benchmark's :mod:`clenv.settings`
module (docs/protocols.md), then :data:`UNSET`. :func:`resolve_args` fills and
checks them before anything is built, with an error naming the flag;
:func:`env_kwargs_for` gives ``gym.make``'s arguments and :func:`use_fast_path`
decides whether :class:`clenv.fastpath.FastMLPTrainer` trains.
:class:`BaselineOptions` holds issue 14's choices of network, optimizer and loss
(``--norm``, ``--activation``, ``--optimizer``, ``--loss``; docs/methods.md), and
:func:`model_kwargs`, :func:`build_optimizer` turn them into the model's and the
optimizer's arguments with the protocol's rows:

    args = resolve_args(tyro.cli(Args))  # Args(RunOptions, BaselineOptions)
    env = gym.make(args.env_id, **env_kwargs_for(args))
    optimizer = build_optimizer(args, model, device)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import clenv.run
from clenv.checkpoint import list_checkpoints
from clenv.cli_kwargs import parse_kwargs
from clenv.fastpath import LOCKSTEP_COMPONENTS, fast_path_supports
from clenv.logger import RunLogger
from clenv.methods import split_name
from clenv.methods.registry import SETTING_TAGS
from clenv.models import norm_components
from clenv.optim import make_optimizer
from clenv.settings import protocol_defaults

__all__ = ["BENCHMARKS", "CIFAR", "IMAGENET", "PMNIST", "PRESETS", "RESUME_FLAGS",
           "UNSET", "BaselineOptions", "RunOptions", "ascent_group_size", "build_optimizer",
           "env_kwargs_for", "fast_path_decision", "fast_path_refusal", "model_kwargs",
           "num_seeds_refusal", "resolve_args", "seed_group", "setting_components",
           "use_fast_path"]  # fmt: skip

PMNIST, IMAGENET, CIFAR = (
    "clenv/PermutedMNIST-v0",
    "clenv/ContinualImageNet-v0",
    "clenv/IncrementalCIFAR100-v0",
)
# The clenv.settings module of each benchmark: its rows hold both papers' settings.
BENCHMARKS = {
    PMNIST: "permuted_mnist",
    IMAGENET: "continual_imagenet",
    CIFAR: "incremental_cifar",
}
# The method preset of each benchmark (clenv.methods.presets); "_lop" under lop.
PRESETS = {PMNIST: "pmnist", IMAGENET: "imagenet", CIFAR: "cifar"}
# Where no paper's row sets an option (an option another benchmark uses, or a
# diagnostic only SC specifies), its value is this.
UNSET = dict(
    momentum=0.0, zero_head_on_switch=False, extra_fc=0, lr_milestones=(),
    optimizer_weight_decay=0.0, augment=False, normalize=False,
    restore_best_validation=False, curvature_every_tasks=10, curvature_order=100,
    metric_samples=2000, curvature_classes="all", curvature_batchnorm="eval",
    loss="cross_entropy",
)  # fmt: skip


@dataclass
class RunOptions(clenv.run.RunFlags):  # + torch_deterministic, cuda, runs_dir, ...
    """The flags of a supervised run apart from the learner's: seeding and devices,
    the run directory and resume, display, what is logged, checkpoints and
    divergence handling (the base of the agent's ``Args``; each docstring is its
    ``--help``)."""

    seed: int = 1
    """seed of the experiment (also the env's task_seed: the task sequence)"""
    num_seeds: int = 1
    """train this many independent networks in one process, seeds --seed, --seed+1, ..., in lockstep on the batch-1 fast path (Permuted MNIST only); each seed gets its own run directory, exactly what its own run writes; --resume of any of them resumes the group (docs/agents/supervised.md)"""
    num_threads: int = 1
    """torch CPU threads; 1 is fastest at batch 1 (two are ~3x slower)"""
    resume: str | None = None
    """continue the run in this directory (runs/<run>) from its latest checkpoint, with its saved arguments"""
    progress: bool = True
    """show a progress bar (examples, task, accuracy, examples/s)"""
    check_args: bool = False
    """check the arguments, print them resolved and exit (clenv sweep runs it for every trial)"""

    # Logging
    log_every: int = 1000
    """log the running online accuracy (cl/online_accuracy) every this many examples"""
    metric_samples: int | None = None
    """samples of the task the plasticity and curvature metrics see (default: from --protocol; docs/protocols.md)"""
    plasticity_every_tasks: int = 1
    """log plasticity/* at the end of every k-th task; 0: never"""
    curvature_every_tasks: int | None = None
    """log curvature/* at the start and end of every k-th task; 0: never (default: from --protocol; docs/protocols.md)"""
    curvature_order: int | None = None
    """Lanczos iterations of the spectral density (default: from --protocol; docs/protocols.md)"""
    curvature_classes: Literal["all", "new"] | None = None
    """CIFAR: curvature samples from every class seen (all) or the task's new classes (new) (default: from --protocol; docs/protocols.md)"""
    curvature_batchnorm: Literal["eval", "train"] | None = None
    """BatchNorm in the curvature's loss: running statistics (eval) or the samples' own, running ones untouched (train) (default: from --protocol; docs/protocols.md)"""
    curvature_trace_matvecs: int = 0
    """Hutch++ Hessian-vector products of the trace estimate (0: no trace)"""
    curvature_epsilons: tuple[float, ...] = (0.001, 0.01, 0.03, 0.1)
    """epsilons of the epsilon-rank (SC: PMNIST 0.01, ImageNet 0.03-0.1)"""

    # Checkpoints
    checkpoint_every_tasks: int = 10
    """save a checkpoint at the start of every k-th task (and at the end); 0: only at the end"""
    checkpoint_every: int = 0
    """also save one every this many examples within a task (long CIFAR tasks); 0: off"""

    # Divergence (clenv.divergence)
    on_divergence: Literal["fail", "stop"] = "fail"
    """a non-finite loss, gradient or parameter: fail (exit 1 naming the example, task and tensor) or stop (end the run cleanly, exit 0); either way charts/diverged and args.json record it and no checkpoint is written after it"""
    divergence_check_every: int = 100
    """check the gradients and parameters for nan/inf every this many updates (env steps on the batch-1 fast path; the loss: every update; parameters also before each checkpoint and task-end metric); 0: only before those"""


@dataclass
class BaselineOptions:
    """The learner's network, optimizer and loss beyond SGD on a ReLU network with
    cross-entropy: the baselines of issue 14 (docs/methods.md has each one's
    definition, citation and defaults). The defaults train today's learner."""

    norm: Literal["none", "layer"] | None = None
    """normalisation before each hidden activation: none, or layer (LayerNorm, as SC's laynorm_l2 runs; with --reg l2 it selects their tuned L2, docs/methods.md); default: layer when --reg names +layernorm, else none"""
    activation: Literal["relu", "crelu", "fourier"] = "relu"
    """hidden activation: relu, crelu (concatenated ReLU, Abbas et al. 2023) or fourier (deep Fourier features, Lewandowski et al. 2025); the last two give two features per unit, so the next layer reads twice --width (halve --width for ReLU's feature count, as Chung et al.'s CReLU baseline does); docs/methods.md"""
    optimizer: Literal["sgd", "adam", "muon", "trac"] = "sgd"
    """sgd (the papers'), adam, muon (Muon on every 2-D weight matrix, the head's too, Adam on the rest: SC's bp_muon) or trac (TRAC around Adam; pip install clenv[trac]); --learning-rate sets each one's step size; docs/methods.md"""
    loss: Literal["cross_entropy", "mse"] | None = None
    """training loss: cross_entropy, or mse (squared error on one-hot targets, SC's bp_mse) (default: from --protocol; docs/protocols.md, docs/methods.md)"""
    partial_spectra: bool = False
    """also log the Hessian spectrum of each layer's own block (SC's partial Hessian; costs one more SLQ per layer) under curvature/<when>/partial/<layer>/"""


def setting_components(args: Any) -> list[str]:
    """The components that select the protocol's rows: the ``--reg`` components, the
    network's settings tag (``layernorm`` under ``--norm layer``) and the optimizer
    (``muon``: SC's ``bp_muon`` rows)."""
    norm = None if args.norm == "none" else args.norm
    return [*split_name(args.reg), *norm_components(norm), args.optimizer]


def resolve_args(args: Any) -> Any:
    """Fill unset options from the protocol's rows (docs/protocols.md; a row tuned per
    method applies when --reg has its components), then from UNSET; check them and
    compute ``env_batch_size`` (and ``total_examples`` on Permuted MNIST).

    Raises:
        ValueError: The first value out of range, naming its flag.
    """
    if args.env_id not in BENCHMARKS:
        raise ValueError(
            f"--env-id must be one of {list(BENCHMARKS)}, got {args.env_id!r}"
        )
    tagged = {SETTING_TAGS[part.strip()] for part in args.reg.lower().split("+")
              if part.strip() in SETTING_TAGS}  # fmt: skip
    if args.norm is None:
        args.norm = tagged.pop() if tagged else "none"
    elif tagged and args.norm not in tagged:
        raise ValueError(
            f"--reg {args.reg} names a LayerNorm setting but --norm is {args.norm}; "
            "drop --norm (or set --norm layer)"
        )
    benchmark = BENCHMARKS[args.env_id]
    components = setting_components(args)
    rows = protocol_defaults(benchmark, args.protocol, components=components)
    losses = protocol_defaults(benchmark, args.protocol, "loss", components)
    clenv.run.fill_unset(args, {**UNSET, **rows, **losses})
    if args.method_preset is None:
        suffix = "_lop" if args.protocol == "lop" else ""
        args.method_preset = PRESETS[args.env_id] + suffix
    clenv.run.check_counts(
        args,
        positive=("num_tasks", "batch_size", "chunk", "log_every", "num_threads",
                  "keep_checkpoints", "metric_samples", "depth", "num_seeds"),
        non_negative=("plasticity_every_tasks", "curvature_every_tasks",
                      "checkpoint_every_tasks", "checkpoint_every",
                      "divergence_check_every"),
    )  # fmt: skip
    clenv.run.check_ranges(args, VALUE_RANGES)
    if args.fast_path == "on" and (reason := fast_path_refusal(args)):
        raise ValueError(FAST_PATH_ON.format(reason))
    if args.num_seeds > 1 and (reason := num_seeds_refusal(args)):
        raise ValueError(NUM_SEEDS.format(args.num_seeds, reason))
    if args.env_id == PMNIST:
        # Batch 1 (the papers'): each env step shows a chunk of examples, trained on
        # one at a time. Larger minibatches: one minibatch per env step.
        args.env_batch_size = args.chunk if args.batch_size == 1 else args.batch_size
        if args.examples_per_task % args.env_batch_size:
            flag = "--chunk" if args.batch_size == 1 else "--batch-size"
            raise ValueError(
                f"--examples-per-task {args.examples_per_task} must be a multiple of "
                f"{flag} {args.env_batch_size} (each env step shows that many examples)"
            )
        args.total_examples = args.num_tasks * args.examples_per_task
    else:
        args.env_batch_size = args.batch_size
    return args


# The largest minibatch or chunk numpy's index arrays and torch's tensors take here.
MAX_BATCH_SIZE = 2**31 - 1
# The range of each value (clenv.run.check_ranges), checked before anything is built.
VALUE_RANGES = {
    "learning_rate": "> 0", "momentum": "[0, 1)", "optimizer_weight_decay": ">= 0",
    "lr_gamma": "> 0", "curvature_epsilons": "> 0 (thresholds on |eigenvalue|)",
    "batch_size": f"<= {MAX_BATCH_SIZE}", "chunk": f"<= {MAX_BATCH_SIZE}",
}  # fmt: skip
FAST_PATH_ON = (
    "--fast-path on needs a run the fast path computes exactly (Permuted MNIST at "
    "batch 1, plain SGD, cross-entropy or MSE, a ReLU MLP (LayerNorm allowed) or a "
    "CReLU MLP, methods among bp/l2/l2init/nap/er/cbp/resets; CBP on ReLU without "
    "LayerNorm, l2init without it, nap with it); here: {}. Use --fast-path auto or off"
)
# The options the batch-1 fast path computes (the kernel's networks and update), in the
# order they are checked: (option, values it runs, why, only with --num-seeds > 1).
FAST_PATH_OPTIONS = (
    ("activation", ("relu", "crelu"), "the kernel trains ReLU and CReLU MLPs", False),
    ("norm", ("none",), "the lockstep trainer runs MLPs without norm; one seed at a "
     "time runs it on the fast path", True),
    ("activation", ("relu",), "the lockstep trainer runs ReLU MLPs; one seed at a time "
     "runs it on the fast path", True),
    ("optimizer", ("sgd",), "plain SGD only", False),
)  # fmt: skip
NUM_SEEDS = (
    "--num-seeds {} trains the seeds together on the batch-1 fast path only: "
    "Permuted MNIST at batch 1, --fast-path auto or on, plain SGD, cross-entropy or "
    "MSE, a ReLU MLP without norm, methods among bp/l2/er/l2er/cbp/resets; here: {}. Run "
    "the seeds one by one (--num-seeds 1, or clenv sweep --seeds)"
)
# Agent flags that set a gym.make argument: --env-kwargs must not set it too.
ENV_FLAGS = {
    "num_tasks": "--num-tasks",
    "examples_per_task": "--examples-per-task",
    "epochs_per_task": "--epochs-per-task",
    "batch_size": "--batch-size (or --chunk at batch 1)",
    "data_dir": "--data-dir",
    "augment": "--augment",
    "normalize": "--normalize",
}


def num_seeds_refusal(args: Any) -> str:
    """Why ``--num-seeds`` > 1 cannot run, as far as the flags tell, or ""."""
    if args.env_id != PMNIST:
        return f"--env-id {args.env_id}"
    if args.fast_path == "off":
        return "--fast-path off"
    unsupported = sorted(
        set(split_name(args.reg)) - LOCKSTEP_COMPONENTS - set(SETTING_TAGS)
    )
    if unsupported:
        return (
            f"the lockstep fast path cannot run {unsupported[0]!r} (it runs "
            f"{sorted(LOCKSTEP_COMPONENTS)}), from --reg {args.reg}"
        )
    return fast_path_refusal(args)


def fast_path_refusal(args: Any) -> str:
    """Why ``--fast-path on`` cannot compute this run, as far as the flags tell
    (the reasons of clenv.fastpath.fast_path_supports), or ""."""
    if args.batch_size != 1:
        return f"batch size {args.batch_size} (batch 1 only), from --batch-size"
    for name, supported, why, lockstep_only in FAST_PATH_OPTIONS:
        if lockstep_only and args.num_seeds <= 1:
            continue
        if getattr(args, name) not in supported:
            flag = "--" + name.replace("_", "-")
            return f"{flag} {getattr(args, name)} ({why})"
    if args.momentum != 0:
        return f"momentum {args.momentum} (plain SGD only), from --momentum"
    if args.optimizer_weight_decay != 0:
        return (
            f"optimizer weight decay {args.optimizer_weight_decay} (none; the L2 "
            "method's is fused into the update), from --optimizer-weight-decay"
        )
    return ""


def fast_path_decision(
    args: Any, model: nn.Module, optimizer: Any, method: Any
) -> tuple[bool, str]:
    """Whether clenv.fastpath trains (where it computes the same run as autograd:
    :func:`fast_path_refusal`, clenv.fastpath.fast_path_supports), and why not.

    Raises:
        ValueError: ``--fast-path on`` for a run the fast path cannot compute.
    """
    reason = fast_path_refusal(args)
    if not reason:
        reason = fast_path_supports(
            model, optimizer, method, batch_size=args.batch_size
        ).reason
    if args.fast_path == "on" and reason:
        raise ValueError(FAST_PATH_ON.format(reason))
    if args.num_seeds > 1 and reason:
        raise ValueError(NUM_SEEDS.format(args.num_seeds, reason))
    if args.fast_path == "off":
        return False, "--fast-path off"
    return not reason, reason


def use_fast_path(args: Any, model: nn.Module, optimizer: Any, method: Any) -> bool:
    """Whether clenv.fastpath trains (:func:`fast_path_decision`)."""
    return fast_path_decision(args, model, optimizer, method)[0]


def model_kwargs(args: Any) -> dict[str, Any]:
    """The model's keyword arguments: the protocol's model rows (variant, init) and
    ``--norm``, ``--activation``."""
    rows = protocol_defaults(
        BENCHMARKS[args.env_id], args.protocol, "model", setting_components(args)
    )
    norm = None if args.norm == "none" else args.norm
    return rows | {"norm": norm, "activation": args.activation}


def build_optimizer(args: Any, model: nn.Module, device: torch.device) -> Any:
    """``clenv.optim.make_optimizer(--optimizer)`` at the step size, momentum and
    weight decay of the flags, with the protocol's optimizer rows (SC's Muon).

    SGD is torch's fused kernel where it can be (one kernel per step; --reg l2 adds
    its term inside it, clenv.methods.L2), not with momentum: torch's fused SGD fails
    when a parameter gets its first gradient after the others (its momentum buffer
    is still None)."""
    settings = protocol_defaults(
        BENCHMARKS[args.env_id], args.protocol, "optimizer", setting_components(args)
    )
    fused = device.type in ("cpu", "cuda") and args.momentum == 0
    return make_optimizer(
        args.optimizer, model, args.learning_rate, momentum=args.momentum,
        weight_decay=args.optimizer_weight_decay,
        fused=fused if args.optimizer == "sgd" else None, **settings,
    )  # fmt: skip


def env_kwargs_for(args: Any) -> dict[str, Any]:
    """gym.make arguments: the agent's, the protocol's env rows, then --env-kwargs."""
    kwargs: dict[str, Any] = dict(
        batch_size=args.env_batch_size, num_tasks=args.num_tasks
    )
    if args.data_dir is not None:
        kwargs["data_dir"] = args.data_dir
    if args.env_id == PMNIST:
        kwargs["examples_per_task"] = args.examples_per_task
    else:
        kwargs["epochs_per_task"] = args.epochs_per_task
    if args.env_id == CIFAR:
        kwargs.update(augment=args.augment, normalize=args.normalize)
    extra = parse_kwargs(args.env_kwargs, "--env-kwargs")
    both = [key for key in extra if key in kwargs and key in ENV_FLAGS]
    if both:
        key = both[0]
        raise ValueError(
            f"--env-kwargs {key}={extra[key]!r} and {ENV_FLAGS[key]} both set the "
            f"env's {key} (the flag gives {kwargs[key]!r}); set it with "
            f"{ENV_FLAGS[key].split(' ')[0]} only"
        )
    kwargs.update(extra)
    return clenv.run.protocol_env_kwargs(
        BENCHMARKS[args.env_id], args.protocol, kwargs, seed=args.seed
    )


def ascent_group_size(args: Any, method: Any) -> int | None:
    """U of SC's grouped ascent (the method's ``ascent_group_size``), or None.

    Raises:
        ValueError: The method ascends before groups of minibatches, but the run
            trains one example at a time (Permuted MNIST at batch 1).
    """
    group_size = method.ascent_group_size
    if group_size and args.env_id == PMNIST and args.batch_size == 1:
        raise ValueError(
            f"--reg {args.reg}: an ascent before each group of minibatches "
            "(timing='before') needs minibatch training (--batch-size > 1); at batch "
            "1 use the ascent after them (er__timing=after, er__schedule=step)"
        )
    return group_size


# The fields a --resume takes from the command line: display, what to do if it
# diverges, and where the data lives now (md5-verified, so the same data); every other
# one keeps the run's saved value (clenv.run.resume_args refuses a flag for it).
RESUME_FLAGS = ("progress", "on_divergence", "data_dir")


def seed_group(args: Any) -> list[Any]:
    """The arguments of each seed a run trains: ``--seed``, ``--seed + 1``, ... for
    ``--num-seeds``; a resumed run, each member's saved arguments (``seed_group`` in
    the ``args.json`` of every member of a group names the group's run directories,
    so ``--resume`` of any of them resumes them all).

    Raises:
        ValueError: a group's member is missing or not a member of that group.
    """
    if args.resume is None:
        return [
            dataclasses.replace(args, seed=args.seed + index)
            for index in range(args.num_seeds)
        ]
    recorded = RunLogger.load_args(args.resume).get("seed_group")
    members = recorded or [args.resume]
    group = []
    for member in members:
        saved = clenv.run.resume_args(dataclasses.replace(args, resume=member),
                                      overrides=RESUME_FLAGS)  # fmt: skip
        if recorded and RunLogger.load_args(member).get("seed_group") != recorded:
            raise ValueError(
                f"--resume {args.resume}: its group names {member}, whose args.json "
                "does not name the same group; resume each run on its own"
            )
        group.append(resolve_args(saved))
    # Killed between two members' saves: resume all from the step all of them have.
    steps = {m: ([0] + [s for s, _ in list_checkpoints(Path(m) / "checkpoints")])[-1]
             for m in members}  # fmt: skip
    if len(set(steps.values())) > 1:
        raise ValueError(
            f"--resume {args.resume}: the group's runs are at different checkpoints "
            f"{steps}; delete the newer checkpoints (checkpoints/ckpt_<step>.pt) so "
            f"that every run resumes from step {min(steps.values())}, then --resume "
            "again"
        )
    return group
