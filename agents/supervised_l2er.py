"""Online supervised continual learning on clenv's streams, with plasticity methods.

CleanRL's structure (``Args``, ``make_env``, the network, the loss, then the loop) for
the three supervised benchmarks: Permuted MNIST (an MLP, batch 1, one pass per task),
Continual ImageNet (a ConvNet, binary tasks, epochs of minibatches) and incremental
CIFAR-100 (a ResNet-18 variant, logits masked to the classes seen so far). Unset options
take the values of Prakash et al., *Spectral Collapse Drives Loss of Plasticity* (ICML
2026, "SC", the default) or Dohare et al., *Loss of plasticity in deep continual
learning* (Nature 2024, "LoP", ``--protocol lop``); docs/protocols.md lists them with
their sources. A :mod:`clenv.methods` method (``--reg``) is driven through its hooks.
The network's norm and activation, the optimizer and the loss are options too
(``--norm``, ``--activation``, ``--optimizer``, ``--loss``; docs/methods.md).
The learner predicts a batch (the action), gets the accuracy (the reward), reads
``info["label"]`` and updates; batch-1 MLP training runs on
:class:`clenv.fastpath.FastMLPTrainer` (the same run, ~10-60x faster), and
``--num-seeds N`` trains N seeds there together, each run exactly as alone.
docs/agents/supervised.md has the flags, the logged series and the papers' commands.

    python agents/supervised_l2er.py --reg l2er
    python agents/supervised_l2er.py --reg l2er --num-seeds 3   # seeds 1, 2, 3
    python agents/supervised_l2er.py --env-id clenv/ContinualImageNet-v0 --reg l2er
    python agents/supervised_l2er.py --resume runs/clenv_PermutedMNIST-v0__supervised_l2er__1__1700000000
"""

from __future__ import annotations

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
from torch import nn
from tqdm import tqdm

import clenv
import clenv.run
from clenv.checkpoint import RestorableEnv
from clenv.cli_kwargs import parse_kwargs
from clenv.divergence import guard_run
from clenv.evaluation import accuracy, active_class_mask, masked_logits, task_tensors
from clenv.losses import make_loss
from clenv.methods import make_method
from clenv.metrics import WeightChangeTracker
from clenv.models import (
    ContinualImageNetConvNet,
    IncrementalCIFARResNet18,
    PermutedMNISTMLP,
)
from clenv.online_learning import (
    TaskStats,
    log_task_curvature,
    run_in_lockstep,
    step_through_group,
    task_loss,
    task_plasticity_report,
)
from clenv.optim import fast_calls, set_learning_rate
from clenv.protocol import task_due, task_switches
from clenv.supervised_args import (
    IMAGENET,
    PMNIST,
    RESUME_FLAGS,
    BaselineOptions,
    RunOptions,
    ascent_group_size,
    build_optimizer,
    env_kwargs_for,
    fast_path_decision,
    model_kwargs,
    resolve_args,
    seed_group,
)

gym.register_envs(clenv)


@dataclass
class Args(RunOptions, BaselineOptions):  # more flags: clenv.supervised_args
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""

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
    """step size of --optimizer, per method where a paper tuned it (default: from --protocol; docs/protocols.md)"""
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
    """plasticity method: bp, l2, er, l2er, cbp, snp, redo, head_reset, reset, layer_reset, l2init, spectral, parseval, upgd, nap (needs --norm layer), inject, or a combination such as cbp+l2 or l2+layernorm (SC's LayerNorm-L2); docs/methods.md"""
    method_preset: str | None = None
    """hyperparameters of the method (default: pmnist, imagenet, cifar; *_lop for lop)"""
    method_kwargs: list[str] = field(default_factory=list)
    """method arguments as key=value overriding the preset, e.g. `weight_decay=1e-4` or `er__ascent_lr=1e-3`"""
    fast_path: Literal["auto", "on", "off"] = "auto"
    """batch-1 MLP training without autograd (clenv.fastpath): auto uses it whenever it computes the same run (ReLU MLP, with or without --norm layer, or CReLU MLP; plain SGD, cross-entropy or MSE; methods bp/l2/l2init/nap/er/l2er/cbp/resets) and else says why it trains with autograd; on: an error where it cannot"""
    chunk: int = 100
    """Permuted MNIST at batch 1: examples per env step; the learner still updates after every example (docs/agents/supervised.md)"""

    # to be filled in runtime
    env_batch_size: int = 0
    """examples per env step (computed in runtime)"""
    total_examples: int = 0
    """examples in the whole run (computed in runtime)"""


def check_args(argv: list[str] | None = None) -> Args:
    """The resolved arguments, checked without data or training: flags, values, the
    env's arguments and ``--method-kwargs``' syntax (``clenv sweep`` calls it for
    every trial). Raises ValueError or FileNotFoundError naming the flag; a flag
    tyro does not know exits with its usage message."""
    args = resolve_args(clenv.run.parse_args(Args, overrides=RESUME_FLAGS, argv=argv))
    env_kwargs_for(args)
    parse_kwargs(args.method_kwargs, "--method-kwargs")
    return args


def make_env(env_id: str, env_kwargs: dict[str, Any]) -> RestorableEnv:
    try:
        env = gym.make(env_id, **env_kwargs)
    except TypeError as error:
        raise ValueError(f"{env_id} does not accept {env_kwargs}: {error}") from error
    # Outermost, so a checkpoint captures the stream (schedule, shuffle, generator).
    return RestorableEnv(env)


def make_model(args: Args) -> nn.Module:
    # The protocol's model rows (variant, init), --norm and --activation.
    kwargs = model_kwargs(args)
    if args.env_id == PMNIST:
        return PermutedMNISTMLP(784, args.width, args.depth, 10, **kwargs)
    if args.env_id == IMAGENET:
        return ContinualImageNetConvNet(num_classes=2, **kwargs)
    return IncrementalCIFARResNet18(
        num_classes=100, extra_fc=args.extra_fc, base_channels=args.resnet_channels,
        **kwargs,
    )  # fmt: skip


def learn_minibatch(
    model, update, method, loss_fn, x, labels, logits, guard=None, step=0,
    task_id=None,
) -> float:  # fmt: skip
    """One optimizer step on the minibatch's loss, with the method's hooks
    (``update``: the optimizer's ``zero_grad, step``, :func:`clenv.optim.fast_calls`);
    a :class:`~clenv.divergence.DivergenceGuard` checks the loss, gradients and
    parameters (at ``step``, the example count at the minibatch's end). Returns the
    loss summed over the minibatch."""
    zero_grad, optimizer_step = update
    loss = loss_fn(logits, labels)
    loss_value = loss.item()  # one read, for the guard and the task's mean loss
    if guard is not None:
        guard.check_loss(loss_value, step, task_id)
    zero_grad()
    loss.backward()
    method.after_backward()
    if guard is not None:
        guard.check_gradients(step, task_id)
    optimizer_step()
    method.after_step(x)
    if guard is not None:
        guard.check_parameters(step, task_id)
    return loss_value * labels.numel()


def learn_one_at_a_time(
    model, update, method, loss_fn, x, labels, guard=None, step=0, task_id=None
):
    """The papers' batch-1 loop: predict one example, then update on it (example
    ``k`` is the run's ``step + k + 1``-th, for the guard)."""
    predictions, loss_sum = [], 0.0
    pairs = zip(x.split(1), labels.split(1), strict=True)
    for k, (example, label) in enumerate(pairs):
        logits = model(example)
        predictions.append(logits.argmax(1))
        loss_sum += learn_minibatch(
            model, update, method, loss_fn, example, label, logits, guard,
            step + k + 1, task_id,
        )  # fmt: skip
    return torch.cat(predictions), loss_sum


def seed_run(args: Args, device: torch.device, show_progress: bool = True):
    """One seed's run, start (or resume) to end, as a generator that hands its
    batch-1 chunks to the fast path: it yields ``(model, method, fast_path, run)``
    once built and receives its trainer (None: autograd), then yields each chunk
    ``(x, labels)`` and receives ``(predictions, losses)``.
    :func:`clenv.online_learning.run_in_lockstep` drives one, or ``--num-seeds``
    of them training together."""
    env_kwargs = env_kwargs_for(args)
    method_kwargs = parse_kwargs(args.method_kwargs, "--method-kwargs")
    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    model = make_model(args).to(device)
    with clenv.run.exit_on_error(ValueError, ImportError):  # TRAC's missing package
        optimizer = build_optimizer(args, model, device)
    try:
        method = make_method(args.reg, model, optimizer, preset=args.method_preset,
                             hidden_layers=model.hidden_layer_spec(),
                             model_norm=args.norm, seed=args.seed, **method_kwargs)  # fmt: skip
    except ValueError as error:
        sys.exit(f"error: --reg {args.reg} / --method-kwargs: {error}")
    loss_fn = make_loss(args.loss)
    # optimizer.zero_grad and .step, with less Python per call (the same updates)
    update = fast_calls(optimizer)
    weight_change = WeightChangeTracker(model)  # plasticity/*weight_change
    with clenv.run.exit_on_error(ValueError, FileNotFoundError):
        fast_path, no_fast_path = fast_path_decision(args, model, optimizer, method)
        env = make_env(args.env_id, env_kwargs)
        group_size = ascent_group_size(args, method)  # U of SC's grouped ascent
    base = env.unwrapped
    # Batch-1 Permuted MNIST: sequential updates within each env step (a chunk).
    per_example = args.env_id == PMNIST and args.batch_size == 1
    num_classes = model.head.out_features
    if not args.total_examples:  # full batches: a batch may run into the next epoch
        args.total_examples = sum(
            base.task_length(k) * args.env_batch_size for k in range(args.num_tasks)
        )

    with clenv.run.exit_on_error():  # every checkpoint damaged, a full disk
        run = clenv.run.start(
            args, agent="supervised", unit="example",
            extra_args={"env_kwargs_resolved": env_kwargs, "method": repr(method),
                        "fast_path_used": fast_path},
        )  # fmt: skip
    if run.finished:
        sys.exit(f"{args.resume} has already finished ({run.global_step:,} examples)")
    logger = run.logger
    # The fast path's trainer: one seed's, or its view of the --num-seeds group's.
    trainer = yield model, method, fast_path, run
    stateful = {"weight_change": weight_change, "trainer": trainer}
    checkpointed = dict(model=model, optimizer=optimizer, method=method, envs=env,
                        stateful={k: v for k, v in stateful.items() if v is not None})  # fmt: skip
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
    if not trainer and per_example:  # said once: why the batch-1 loop is slower
        how += f" (not the fast path: {no_fast_path})"
    print(
        f"{args.env_id} ({args.protocol}), --reg {args.reg}: {method!r}; {how} on {device}"
    )
    progress = tqdm(total=args.total_examples, initial=global_step, unit="ex",
                    disable=not (args.progress and show_progress), dynamic_ncols=True)  # fmt: skip
    # --on-divergence: record it, close the run without a checkpoint, exit 1 or 0.
    guard = guard_run(run, model, args, close=(progress, env), unit="example")

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
        set_learning_rate(optimizer, args.learning_rate)
        weight_change.on_task_start()
        if task_due(task_id, args.curvature_every_tasks):
            guard.check_parameters(global_step, task_id, force=True)
            log_task_curvature(logger, model, base, task_info, args, global_step,
                               task_id, "task_start")  # fmt: skip

    def task_end(task_id: int, task_info: dict[str, Any]) -> None:
        """Per-task summaries, logged once with the step at the task's end."""
        # Before any metric: an SVD or a Hessian of NaN weights would fail inside.
        guard.check_parameters(global_step, task_id, force=True)
        if args.restore_best_validation and stats.best_state is not None:
            model.load_state_dict(stats.best_state)
        speed = (global_step - start_step) / max(time.time() - start_time, 1e-9)
        summary = stats.summary() | {"charts/examples_per_second": speed}
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
            samples = task_tensors(base, task_id, "train", args.metric_samples, device)
            metrics = task_plasticity_report(
                model, task_loss(args, task_info, num_classes, device), samples,
                layers=layers, weight_change=weight_change,
            )  # fmt: skip
            if trainer is not None and trainer.cbp is not None:
                metrics["cbp_units_replaced"] = float(sum(trainer.cbp.num_replaced))
            logger.log_scalars(
                metrics, global_step, prefix="plasticity/", task_id=task_id
            )
        if task_due(task_id, args.curvature_every_tasks):
            log_task_curvature(logger, model, base, task_info, args, global_step,
                               task_id, "task_end")  # fmt: skip

    if restored is None:
        task_start(stats.task_id, info)
    logger.set_task(stats.task_id)
    start_time, start_step = time.time(), global_step
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
            set_learning_rate(optimizer, args.learning_rate * args.lr_gamma**passed)

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
        if trainer is not None:  # (with --num-seeds, one call for every seed's chunk)
            online_predictions, losses = yield x, labels
            # The kernel exposes each example's loss and the weights it updated.
            guard.check_loss(losses, global_step + 1, stats.task_id)
            guard.check_parameters(global_step + labels.numel(), stats.task_id)
            loss_sum = float(losses.sum())
        elif per_example:
            online_predictions, loss_sum = learn_one_at_a_time(
                model, update, method, loss_fn, x, labels, guard, global_step,
                stats.task_id,
            )  # fmt: skip
        else:
            online_predictions = prediction
            loss_sum = learn_minibatch(
                model, update, method, loss_fn, x, labels, logits,
                guard, global_step + labels.numel(), stats.task_id,
            )  # fmt: skip
        correct = int((online_predictions == labels).sum())
        global_step += labels.numel()
        stats.record(labels.numel(), correct, loss_sum, reward)
        if (window_accuracy := stats.window_accuracy(args.log_every)) is not None:
            logger.log_scalar("cl/online_accuracy", window_accuracy, global_step)
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
            stats.keep_if_best(val_accuracy, model)
        stats.epoch = int(next_info["epoch"])

        crossed = clenv.run.crossed_multiple(
            global_step, args.checkpoint_every, labels.numel()
        )
        if task_ended:
            finished = stats.task_id
            task_end(finished, step_info)
            finished_all = finished + 1 >= args.num_tasks
            if not finished_all:
                stats = stats.next_task(
                    int(next_info["task_id"]), int(next_info["epoch"])
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


if __name__ == "__main__":
    with clenv.run.exit_on_error(ValueError, FileNotFoundError):
        args = resolve_args(clenv.run.parse_args(Args, overrides=RESUME_FLAGS))
        env_kwargs = env_kwargs_for(args)
        parse_kwargs(args.method_kwargs, "--method-kwargs")
        group = seed_group(args)  # --num-seeds: --seed, --seed + 1, ...
    if args.check_args:
        print(f"arguments ok: {args.env_id} {env_kwargs}, --reg {args.reg}")
        sys.exit(0)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    seeds = [seed_run(a, device, show_progress=i == 0) for i, a in enumerate(group)]
    with clenv.run.exit_on_error(ValueError):
        run_in_lockstep(seeds, args.learning_rate, args.loss)
