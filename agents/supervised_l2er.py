"""Online supervised continual learning on clenv's streams, with plasticity methods.

CleanRL's structure (``Args``, ``make_env``, the network, the loss, then the loop) for
the three supervised benchmarks: Permuted MNIST (an MLP, batch 1, one pass per task),
Continual ImageNet (a ConvNet, binary tasks, epochs of minibatches) and incremental
CIFAR-100 (a ResNet-18 variant, logits masked to the classes seen so far). Unset options
take the values of Prakash et al., *Spectral Collapse Drives Loss of Plasticity* (ICML
2026, "SC", the default) or Dohare et al., *Loss of plasticity in deep continual
learning* (Nature 2024, "LoP", ``--protocol lop``); docs/protocols.md lists them with
their sources. A :mod:`clenv.methods` method (``--reg``) is driven through its hooks.
The learner predicts a batch (the action), gets the accuracy (the reward), reads
``info["label"]`` and updates; batch-1 MLP training runs on
:class:`clenv.fastpath.FastMLPTrainer` (the same run, ~10-60x faster).
docs/agents/supervised.md has the flags, the logged series and the papers' commands.

    python agents/supervised_l2er.py --reg l2er
    python agents/supervised_l2er.py --env-id clenv/ContinualImageNet-v0 --reg l2er
    python agents/supervised_l2er.py --resume runs/clenv_PermutedMNIST-v0__supervised_l2er__1__1700000000
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import clenv
import clenv.run
from clenv.checkpoint import RestorableEnv
from clenv.cli_kwargs import parse_kwargs
from clenv.divergence import DivergenceGuard, clear_divergence, end_diverged
from clenv.evaluation import accuracy, active_class_mask, masked_logits, task_tensors
from clenv.fastpath import FastMLPTrainer, fast_path_supports
from clenv.methods import make_method, split_name
from clenv.metrics import curvature_report, plasticity_report
from clenv.metrics.activations import preserved_training_state
from clenv.models import (
    ContinualImageNetConvNet,
    IncrementalCIFARResNet18,
    PermutedMNISTMLP,
)
from clenv.protocol import task_due, task_switches
from clenv.settings import protocol_defaults

gym.register_envs(clenv)

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
)  # fmt: skip


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""
    seed: int = 1
    """seed of the experiment (also the env's task_seed: the task sequence)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    num_threads: int = 1
    """torch CPU threads; 1 is fastest at batch 1 (two are ~3x slower)"""
    runs_dir: str = "runs"
    """where run directories are created"""
    resume: str | None = None
    """continue the run in this directory (runs/<run>) from its latest checkpoint, with its saved arguments"""
    progress: bool = True
    """show a progress bar (examples, task, accuracy, examples/s)"""

    # Benchmark
    env_id: str = PMNIST
    """clenv/PermutedMNIST-v0 (MLP), clenv/ContinualImageNet-v0 (ConvNet) or clenv/IncrementalCIFAR100-v0 (ResNet-18 variant)"""
    protocol: Literal["sc", "lop"] = "sc"
    """paper whose settings fill every unset option: sc (Prakash et al. 2026) or lop (Dohare et al. 2024); docs/protocols.md"""
    data_dir: str | None = None
    """data root (else $CLENV_DATA_DIR, else ~/.cache/clenv); `clenv download` fills it"""
    num_tasks: int | None = None
    """tasks to train on (default: from --protocol; docs/protocols.md)"""
    examples_per_task: int | None = None
    """Permuted MNIST: examples per task, one pass (default: from --protocol; docs/protocols.md)"""
    epochs_per_task: int | None = None
    """ImageNet/CIFAR: epochs per task (default: from --protocol; docs/protocols.md)"""
    env_kwargs: list[str] = field(default_factory=list)
    """more gym.make arguments as key=value (Python literals), e.g. `--env-kwargs num_classes=10`"""

    # Network and optimizer
    width: int | None = None
    """Permuted MNIST MLP: units per hidden layer (default: from --protocol; docs/protocols.md)"""
    depth: int = 3
    """Permuted MNIST MLP: hidden layers"""
    extra_fc: int | None = None
    """CIFAR ResNet: hidden FC layers of 512 after pooling (default: from --protocol; docs/protocols.md)"""
    resnet_channels: int = 64
    """CIFAR ResNet: channels of the first stage (64 in both papers; less for quick runs)"""
    learning_rate: float | None = None
    """SGD step size, per method where a paper tuned it (default: from --protocol; docs/protocols.md)"""
    momentum: float | None = None
    """SGD momentum (default: from --protocol; docs/protocols.md)"""
    optimizer_weight_decay: float | None = None
    """the optimizer's own weight decay, on top of --reg (default: from --protocol; docs/protocols.md)"""
    batch_size: int | None = None
    """minibatch size (default: from --protocol; docs/protocols.md)"""
    lr_milestones: tuple[int, ...] | None = None
    """epochs of each task at which the step size is multiplied by --lr-gamma, reset at every task start (default: from --protocol; docs/protocols.md)"""
    lr_gamma: float = 0.2
    """factor of --lr-milestones"""
    zero_head_on_switch: bool | None = None
    """zero the output layer at every task start, keeping the optimizer's momentum (default: from --protocol; docs/protocols.md)"""
    augment: bool | None = None
    """CIFAR: flip, padded crop and rotation (default: from --protocol; docs/protocols.md)"""
    normalize: bool | None = None
    """CIFAR: per-channel normalisation (default: from --protocol; docs/protocols.md)"""
    restore_best_validation: bool | None = None
    """CIFAR: restore the weights of the best validation epoch at each task end (default: from --protocol; docs/protocols.md)"""

    # Plasticity method
    reg: str = "l2er"
    """plasticity method: bp, l2, er, l2er, cbp, snp, redo, head_reset, reset, or a combination such as cbp+l2 (clenv.methods.make_method)"""
    method_preset: str | None = None
    """hyperparameters of the method (default: pmnist, imagenet, cifar; *_lop for lop)"""
    method_kwargs: list[str] = field(default_factory=list)
    """method arguments as key=value overriding the preset, e.g. `weight_decay=1e-4` or `er__ascent_lr=1e-3`"""
    fast_path: Literal["auto", "on", "off"] = "auto"
    """batch-1 MLP training without autograd (clenv.fastpath): auto uses it whenever it computes the same run (MLP, plain SGD, methods bp/l2/er/l2er/cbp/resets)"""
    chunk: int = 100
    """Permuted MNIST at batch 1: examples per env step; the learner still updates after every example (docs/agents/supervised.md)"""

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
    keep_checkpoints: int = 3
    """how many checkpoints to keep"""

    # Divergence (clenv.divergence)
    on_divergence: Literal["fail", "stop"] = "fail"
    """a non-finite loss, gradient or parameter: fail (exit 1 naming the example, task and tensor) or stop (end the run cleanly, exit 0); either way charts/diverged and args.json record it and no checkpoint is written after it"""
    divergence_check_every: int = 100
    """check the gradients and parameters for nan/inf every this many updates (env steps on the batch-1 fast path; the loss: every update; parameters also before each checkpoint and task-end metric); 0: only before those"""
    check_args: bool = False
    """check the arguments, print them resolved and exit (clenv sweep runs it for every trial)"""

    # to be filled in runtime
    env_batch_size: int = 0
    """examples per env step (computed in runtime)"""
    total_examples: int = 0
    """examples in the whole run (computed in runtime)"""


def resolve_args(args: Args) -> Args:
    """Fill unset options from the protocol's rows (docs/protocols.md; a row tuned per
    method applies when --reg has its components), then from UNSET; check them."""
    if args.env_id not in BENCHMARKS:
        raise ValueError(
            f"--env-id must be one of {list(BENCHMARKS)}, got {args.env_id!r}"
        )
    rows = protocol_defaults(
        BENCHMARKS[args.env_id], args.protocol, components=split_name(args.reg)
    )
    clenv.run.fill_unset(args, {**UNSET, **rows})
    if args.method_preset is None:
        suffix = "_lop" if args.protocol == "lop" else ""
        args.method_preset = PRESETS[args.env_id] + suffix
    clenv.run.check_counts(
        args,
        positive=("num_tasks", "batch_size", "chunk", "log_every", "num_threads",
                  "keep_checkpoints", "metric_samples", "depth"),
        non_negative=("plasticity_every_tasks", "curvature_every_tasks",
                      "checkpoint_every_tasks", "checkpoint_every",
                      "divergence_check_every"),
    )  # fmt: skip
    clenv.run.check_ranges(args, VALUE_RANGES)
    if args.fast_path == "on" and (reason := fast_path_refusal(args)):
        raise ValueError(FAST_PATH_ON.format(reason))
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
    "batch 1, plain SGD, methods among bp/l2/er/cbp/resets); here: {}. Use "
    "--fast-path auto or off"
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


def fast_path_refusal(args: Args) -> str:
    """Why ``--fast-path on`` cannot compute this run, as far as the flags tell
    (the reasons of clenv.fastpath.fast_path_supports), or ""."""
    if args.batch_size != 1:
        return f"batch size {args.batch_size} (batch 1 only), from --batch-size"
    if args.momentum != 0:
        return f"momentum {args.momentum} (plain SGD only), from --momentum"
    if args.optimizer_weight_decay != 0:
        return (
            f"optimizer weight decay {args.optimizer_weight_decay} (none; the L2 "
            "method's is fused into the update), from --optimizer-weight-decay"
        )
    return ""


def check_args(argv: list[str] | None = None) -> Args:
    """The resolved arguments of a command line, checked as far as they can be
    without data or training: flags, values, the env's arguments and
    ``--method-kwargs``' syntax (``clenv sweep`` calls it for every trial).

    Raises:
        ValueError, FileNotFoundError: what is wrong, naming the flag. A flag tyro
            does not know exits with its usage message (SystemExit 2).
    """
    args = resolve_args(clenv.run.parse_args(Args, overrides=("progress",), argv=argv))
    env_kwargs_for(args)
    parse_kwargs(args.method_kwargs, "--method-kwargs")
    return args


def use_fast_path(args: Args, model, optimizer, method) -> bool:
    """Whether clenv.fastpath trains: where it computes the same run as autograd
    (clenv.fastpath.fast_path_supports)."""
    supported, reason = fast_path_supports(
        model, optimizer, method, batch_size=args.batch_size
    )
    if args.fast_path == "on" and not supported:
        raise ValueError(FAST_PATH_ON.format(reason))
    return supported and args.fast_path != "off"


def env_kwargs_for(args: Args) -> dict[str, Any]:
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


def make_env(env_id: str, env_kwargs: dict[str, Any]) -> RestorableEnv:
    try:
        env = gym.make(env_id, **env_kwargs)
    except TypeError as error:
        raise ValueError(f"{env_id} does not accept {env_kwargs}: {error}") from error
    # Outermost, so a checkpoint captures the stream (schedule, shuffle, generator).
    return RestorableEnv(env)


def make_model(args: Args) -> nn.Module:
    # The model's settings of the protocol (variant, init: rows of kind "model").
    kwargs = protocol_defaults(BENCHMARKS[args.env_id], args.protocol, "model")
    if args.env_id == PMNIST:
        return PermutedMNISTMLP(784, args.width, args.depth, 10, **kwargs)
    if args.env_id == IMAGENET:
        return ContinualImageNetConvNet(num_classes=2, **kwargs)
    return IncrementalCIFARResNet18(
        num_classes=100, extra_fc=args.extra_fc, base_channels=args.resnet_channels,
        **kwargs,
    )  # fmt: skip


def learn_minibatch(
    model, optimizer, method, x, labels, logits, guard=None, step=0, task_id=None
) -> float:
    """One SGD step on the minibatch's cross-entropy, with the method's hooks; a
    :class:`~clenv.divergence.DivergenceGuard` checks the loss, gradients and
    parameters (at ``step``, the example count at the minibatch's end)."""
    loss = F.cross_entropy(logits, labels)
    if guard is not None:
        guard.check_loss(loss, step, task_id)
    optimizer.zero_grad()
    loss.backward()
    method.after_backward()
    if guard is not None:
        guard.check_gradients(step, task_id)
    optimizer.step()
    method.after_step(x)
    if guard is not None:
        guard.check_parameters(step, task_id)
    return loss.item() * labels.numel()


def learn_one_at_a_time(
    model, optimizer, method, x, labels, guard=None, step=0, task_id=None
):
    """The papers' batch-1 loop: predict one example, then update on it (example
    ``k`` is the run's ``step + k + 1``-th, for the guard)."""
    predictions, loss_sum = torch.empty_like(labels), 0.0
    for k in range(x.shape[0]):
        logits = model(x[k : k + 1])
        predictions[k] = logits.detach().argmax(1)[0]
        loss_sum += learn_minibatch(
            model, optimizer, method, x[k : k + 1], labels[k : k + 1], logits,
            guard, step + k + 1, task_id,
        )  # fmt: skip
    return predictions, loss_sum


@torch.no_grad()
def step_through_group(env, model, obs, info, size: int, num_classes: int, device):
    """Step the env through the next ``size`` minibatches (at most to the end of the
    epoch or task), answered with the current weights in eval mode. Returns the steps
    ``(inputs, info before, reward, info after)`` and the env's latest ``obs, info``."""
    steps = []
    model.eval()
    while len(steps) < size:
        x = torch.as_tensor(obs, device=device)
        active = active_class_mask(info, num_classes, device)
        action = masked_logits(model(x), active).argmax(1).cpu().numpy()
        next_obs, reward, _, _, next_info = env.step(action)
        steps.append((x, info, reward, next_info))
        obs, info = next_obs, next_info
        if next_info["epoch"] != steps[0][1]["epoch"] or task_switches(next_info)[0]:
            break
    model.train()
    return steps, obs, info


def log_curvature(logger, model, base, task_info, args, step, task_id, when) -> None:
    """curvature/<when>/*: SC's diagnostics (clenv.metrics.curvature_report) on the
    task's samples, or (SC's CIFAR) those of its new classes
    (incremental_cifar/train_incremental_cifar.py:402-413)."""
    device = next(model.parameters()).device
    batch = task_tensors(base, task_id, "train", args.metric_samples, device,
                         new_classes_only=args.curvature_classes == "new")  # fmt: skip
    active = active_class_mask(task_info, model.head.out_features, device)
    batchnorm_train = args.curvature_batchnorm == "train"

    def loss_fn(net, data):
        if batchnorm_train:  # SC's CIFAR Hessian: the samples' own statistics
            net.train()
        return F.cross_entropy(masked_logits(net(data[0]), active), data[1])

    # Every flag, buffer (BatchNorm running statistics) and RNG stream is restored
    # afterwards: logging more or less never changes the training run.
    with preserved_training_state(model, model.training):
        report = curvature_report(
            model, loss_fn, [batch], eps=args.curvature_epsilons,
            order=args.curvature_order, trace_matvecs=args.curvature_trace_matvecs,
            seed=args.seed,
        )  # fmt: skip
    # Ritz values and weights at a fixed length (HDF5 rows: Lanczos may stop early).
    logger.log_report(f"curvature/{when}/", report, step, task_id=task_id,
                      array_length=args.curvature_order)  # fmt: skip


@dataclass
class TaskStats:
    """What the learner accumulates within the current task (checkpointed)."""

    task_id: int = 0
    examples: int = 0
    correct: int = 0
    env_reward_sum: float = 0.0
    env_steps: int = 0
    loss_sum: float = 0.0
    window_examples: int = 0
    window_correct: int = 0
    epoch: int = 0
    best_validation: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None

    def record(self, examples: int, correct: int, loss_sum: float, reward) -> None:
        """Counts one env step (the window of cl/online_accuracy included)."""
        self.examples += examples
        self.correct += correct
        self.loss_sum += loss_sum
        self.env_reward_sum += float(reward)
        self.env_steps += 1
        self.window_examples += examples
        self.window_correct += correct


if __name__ == "__main__":
    with clenv.run.exit_on_error(ValueError, FileNotFoundError):
        args = resolve_args(clenv.run.parse_args(Args, overrides=("progress",)))
        env_kwargs = env_kwargs_for(args)
        method_kwargs = parse_kwargs(args.method_kwargs, "--method-kwargs")
    if args.check_args:
        print(f"arguments ok: {args.env_id} {env_kwargs}, --reg {args.reg}")
        sys.exit(0)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    model = make_model(args).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.optimizer_weight_decay,
        # One kernel per step; --reg l2 adds its term inside it (clenv.methods.L2).
        # Not with momentum: torch's fused SGD fails when a parameter gets its
        # first gradient after the others (its momentum buffer is still None).
        fused=device.type in ("cpu", "cuda") and args.momentum == 0,
    )
    try:
        method = make_method(args.reg, model, optimizer, preset=args.method_preset,
                             hidden_layers=model.hidden_layer_spec(), **method_kwargs)  # fmt: skip
    except ValueError as error:
        sys.exit(f"error: --reg {args.reg} / --method-kwargs: {error}")
    with clenv.run.exit_on_error(ValueError, FileNotFoundError):
        fast_path = use_fast_path(args, model, optimizer, method)
        trainer = (
            FastMLPTrainer(model, args.learning_rate, method=method)
            if fast_path
            else None
        )
        env = make_env(args.env_id, env_kwargs)
    base = env.unwrapped
    # Batch-1 Permuted MNIST: sequential updates within each env step (a chunk).
    per_example = args.env_id == PMNIST and args.batch_size == 1
    group_size = method.ascent_group_size  # U of SC's grouped ascent, or None
    if group_size and per_example:
        sys.exit(
            f"error: --reg {args.reg}: an ascent before each group of minibatches "
            "(timing='before') needs minibatch training (--batch-size > 1); at batch "
            "1 use the ascent after them (er__timing=after, er__schedule=step)"
        )
    num_classes = model.head.out_features
    if not args.total_examples:  # full batches: a batch may run into the next epoch
        args.total_examples = sum(
            base.task_length(k) * args.env_batch_size for k in range(args.num_tasks)
        )

    with clenv.run.exit_on_error():  # every checkpoint damaged, a full disk
        run = clenv.run.start(
            args, agent="supervised", unit="example",
            extra_args={"env_kwargs_resolved": env_kwargs, "method": repr(method),
                        "fast_path_used": trainer is not None},
        )  # fmt: skip
    if run.finished:
        sys.exit(f"{args.resume} has already finished ({run.global_step:,} examples)")
    logger = run.logger
    if run.resumed:  # back at the last good checkpoint, before any divergence
        clear_divergence(logger)
    checkpointed = dict(model=model, optimizer=optimizer, method=method, envs=env,
                        stateful={"trainer": trainer} if trainer is not None else None)  # fmt: skip
    restored = run.restore(**checkpointed)
    global_step = run.global_step  # examples seen
    # pending: minibatches stepped in the env but not trained on yet (grouped ascent),
    # as (inputs, info before the step, reward, info after the step).
    if restored is None:
        obs, info = env.reset(seed=args.seed)
        stats, pending = TaskStats(task_id=int(info["task_id"])), []
    else:
        obs, info = restored["obs"], restored["info"]
        pending = [(x.to(device), *rest) for x, *rest in restored["pending"]]
        stats = TaskStats(**restored["stats"])
    how = f"fast path ({trainer.backend})" if trainer else "autograd"
    print(
        f"{args.env_id} ({args.protocol}), --reg {args.reg}: {method!r}; {how} on {device}"
    )

    # --on-divergence: record it, close the run without a checkpoint, exit 1 or 0.
    guard = DivergenceGuard(
        model,
        args.divergence_check_every,
        unit="example",
        handler=lambda error: end_diverged(
            error, run, args.on_divergence, close=(progress, env)
        ),
    )

    def save(**parts: Any) -> None:
        """run.save of finite weights and state (else a divergence); a full disk
        ends the run with error: <message>."""
        with clenv.run.exit_on_error():
            guard.save(run, global_step, stats.task_id, **parts)

    def task_start(task_id: int, task_info: dict[str, Any]) -> None:
        """What the protocol does before the first prediction of a task."""
        logger.set_task(task_id)
        if task_id > 0:
            method.on_task_switch(task_id)
        if args.zero_head_on_switch:  # LoP's ImageNet: the momentum is kept
            with torch.no_grad():
                for param in model.head.parameters():
                    param.zero_()
        for group in optimizer.param_groups:
            group["lr"] = args.learning_rate
        if task_due(task_id, args.curvature_every_tasks):
            guard.check_parameters(global_step, task_id, force=True)
            log_curvature(logger, model, base, task_info, args, global_step, task_id,
                          "task_start")  # fmt: skip

    def task_end(task_id: int, task_info: dict[str, Any]) -> None:
        """Per-task summaries, logged once with the step at the task's end."""
        # Before any metric: an SVD or a Hessian of NaN weights would fail inside.
        guard.check_parameters(global_step, task_id, force=True)
        if args.restore_best_validation and stats.best_state is not None:
            model.load_state_dict(stats.best_state)
        summary = {
            "cl/online_accuracy_per_task": stats.correct / max(stats.examples, 1),
            "cl/env_reward_per_task": stats.env_reward_sum / max(stats.env_steps, 1),
            "losses/train_loss_per_task": stats.loss_sum / max(stats.examples, 1),
            "charts/examples_per_second": (global_step - start_step)
            / max(time.time() - start_time, 1e-9),
        }
        if args.env_id != PMNIST:
            inputs, labels = task_tensors(base, task_id, "test", device=device)
            active = active_class_mask(task_info, num_classes, device)
            summary["eval/test_accuracy_per_task"] = accuracy(
                model, inputs, labels, active
            )
        logger.log_scalars(summary, global_step, task_id=task_id)
        if task_due(task_id, args.plasticity_every_tasks):
            # The ranked layers: every ReLU of the MLP, the FC layers of the conv nets
            # (a conv map of 2000 samples is too large to rank every task).
            layers = getattr(model, "fc_activation_names", lambda: None)()
            inputs, _ = task_tensors(
                base, task_id, "train", args.metric_samples, device
            )
            metrics = plasticity_report({"": model}, inputs, layers={"": layers})
            if trainer is not None and trainer.cbp is not None:
                metrics["cbp_units_replaced"] = float(sum(trainer.cbp.num_replaced))
            logger.log_scalars(
                metrics, global_step, prefix="plasticity/", task_id=task_id
            )
        if task_due(task_id, args.curvature_every_tasks):
            log_curvature(logger, model, base, task_info, args, global_step, task_id,
                          "task_end")  # fmt: skip

    if restored is None:
        task_start(stats.task_id, info)
    logger.set_task(stats.task_id)
    start_time, start_step = time.time(), global_step
    progress = tqdm(total=args.total_examples, initial=global_step, unit="ex",
                    disable=not args.progress, dynamic_ncols=True)  # fmt: skip
    finished_all = False
    model.train()
    while not finished_all:
        if group_size and not pending:
            # SC's ImageNet/CIFAR L2-ER: step the env through the next U minibatches
            # (answered with the current weights), ascend on their inputs
            # (method.before_epoch), then train on them in order.
            pending, obs, info = step_through_group(
                env, model, obs, info, group_size, num_classes, device
            )
            method.before_epoch(torch.cat([step[0] for step in pending]))
        if group_size:
            x, step_info, reward, next_info = pending.pop(0)
        else:
            x = torch.as_tensor(obs, device=device)
            if args.env_batch_size == 1:  # a single example comes without a batch axis
                x = x.unsqueeze(0)
            step_info = info
        active = active_class_mask(step_info, num_classes, device)
        if args.lr_milestones:
            passed = sum(int(step_info["epoch"]) >= m for m in args.lr_milestones)
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * args.lr_gamma**passed

        # ALGO LOGIC: predict the batch (the action), then learn from its labels
        if per_example:
            with torch.no_grad():
                prediction = model(x).argmax(1)
        else:  # (grouped: the prediction at update time, the accuracy SC logs)
            logits = masked_logits(model(x), active)
            prediction = logits.argmax(1)
        if not group_size:
            action = prediction.cpu().numpy()
            action = int(action[0]) if args.env_batch_size == 1 else action
            obs, reward, _, _, next_info = env.step(action)
            info = next_info
        labels = torch.as_tensor(
            np.atleast_1d(next_info["label"]), device=device, dtype=torch.int64
        )
        if trainer is not None:
            online_predictions, losses = trainer.train(x, labels)
            # The kernel exposes each example's loss and the weights it updated.
            guard.check_loss(losses, global_step + 1, stats.task_id)
            guard.check_parameters(global_step + labels.numel(), stats.task_id)
            loss_sum = float(losses.sum())
        elif per_example:
            online_predictions, loss_sum = learn_one_at_a_time(
                model, optimizer, method, x, labels, guard, global_step, stats.task_id
            )
        else:
            online_predictions = prediction
            loss_sum = learn_minibatch(
                model, optimizer, method, x, labels, logits,
                guard, global_step + labels.numel(), stats.task_id,
            )  # fmt: skip
        correct = int((online_predictions == labels).sum())
        global_step += labels.numel()
        stats.record(labels.numel(), correct, loss_sum, reward)
        if stats.window_examples >= args.log_every:
            window_accuracy = stats.window_correct / stats.window_examples
            logger.log_scalar("cl/online_accuracy", window_accuracy, global_step)
            stats.window_examples = stats.window_correct = 0
        # The step that completes a task: the next info announces a switch, or the
        # run's last example (after the last task the env stays in it).
        task_ended = bool(task_switches(next_info)[0]) or (
            global_step >= args.total_examples
        )

        # An epoch of the task ended: LoP's best-validation bookkeeping.
        if args.restore_best_validation and (
            task_ended or int(next_info["epoch"]) != stats.epoch
        ):
            inputs, val_labels = task_tensors(base, stats.task_id, "validation",
                                              device=device)  # fmt: skip
            val_accuracy = accuracy(model, inputs, val_labels, active)
            logger.log_scalar("eval/validation_accuracy", val_accuracy, global_step)
            if val_accuracy > stats.best_validation:
                stats.best_validation = val_accuracy
                stats.best_state = copy.deepcopy(model.state_dict())
        stats.epoch = int(next_info["epoch"])

        crossed = clenv.run.crossed_multiple(
            global_step, args.checkpoint_every, labels.numel()
        )
        if task_ended:
            finished = stats.task_id
            task_end(finished, step_info)
            finished_all = finished + 1 >= args.num_tasks
            if not finished_all:
                stats = TaskStats(
                    task_id=int(next_info["task_id"]),
                    epoch=int(next_info["epoch"]),
                    # The running-accuracy window spans task boundaries.
                    window_examples=stats.window_examples,
                    window_correct=stats.window_correct,
                )
                task_start(stats.task_id, next_info)
                crossed |= task_due(stats.task_id, args.checkpoint_every_tasks)
        if crossed and not finished_all:
            save(**checkpointed, extra={"obs": obs, "info": info, "pending": pending,
                                        "stats": dataclasses.asdict(stats)})  # fmt: skip
        progress.update(labels.numel())
        speed = (global_step - start_step) / max(time.time() - start_time, 1e-9)
        accuracy_so_far = f"{stats.correct / max(stats.examples, 1):.3f}"
        progress.set_postfix(
            task=stats.task_id, acc=accuracy_so_far, ex_s=int(speed), refresh=False
        )

    save(model=model, method=method, finished=True,
         extra={"stats": dataclasses.asdict(stats)})  # fmt: skip
    progress.close()
    env.close()
    run.close()
    print(f"done: {global_step:,} examples, {args.num_tasks} tasks")
    run.print_paths()
