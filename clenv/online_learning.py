"""Bookkeeping of an online learner on clenv's supervised streams.

A supervised clenv env (Permuted MNIST, Continual ImageNet, incremental CIFAR-100)
shows a batch, takes the learner's predictions as the action and answers with the
accuracy as the reward and the labels in ``info["label"]``. These pieces keep the
learner's side of that exchange:

- :class:`TaskStats`: what the learner accumulates within the current task (online
  accuracy, loss, env reward, best validation), checkpointed as a dict;
- :func:`step_through_group`: step the env through the next minibatches before
  training on them (SC's grouped effective-rank ascent on ImageNet and CIFAR);
- :func:`task_plasticity_report`: the ``plasticity/*`` metrics of a task's samples
  (representation, weights, the loss's gradient norm per layer, the weight change
  since the task's start), leaving the run untouched;
- :func:`task_loss`, :func:`log_task_curvature`: the training loss on a task's
  samples and the ``curvature/<when>/*`` of it;
- :func:`run_in_lockstep`: drive one or several seeds' runs (each a generator that
  hands its batch-1 chunks to the fast path), several seeds training together on one
  :class:`clenv.fastpath.BatchedMLPTrainer`, each exactly as its own process would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clenv.checkpoint import capture_rng_state, restore_rng_state
from clenv.curvature_logging import log_curvature
from clenv.evaluation import active_class_mask, masked_logits, task_tensors
from clenv.fastpath import BatchedMLPTrainer, FastMLPTrainer
from clenv.logger import RunLogger
from clenv.losses import make_loss
from clenv.metrics import WeightChangeTracker, plasticity_report
from clenv.metrics.activations import preserved_training_state
from clenv.protocol import task_switches

__all__ = ["SeedRun", "TaskStats", "log_task_curvature", "record_seed_group",
           "run_in_lockstep", "step_through_group", "task_loss",
           "task_plasticity_report"]  # fmt: skip


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

    def record(self, examples: int, correct: int, loss_sum: float, reward: Any) -> None:
        """Counts one env step (the window of cl/online_accuracy included)."""
        self.examples += examples
        self.correct += correct
        self.loss_sum += loss_sum
        self.env_reward_sum += float(reward)
        self.env_steps += 1
        self.window_examples += examples
        self.window_correct += correct

    def summary(self) -> dict[str, float]:
        """The task's averages: online accuracy, env reward and training loss."""
        return {
            "cl/online_accuracy_per_task": self.correct / max(self.examples, 1),
            "cl/env_reward_per_task": self.env_reward_sum / max(self.env_steps, 1),
            "losses/train_loss_per_task": self.loss_sum / max(self.examples, 1),
        }

    def window_accuracy(self, every: int) -> float | None:
        """The online accuracy of the examples since the last window, once there are
        at least ``every`` of them (a new window starts), else None."""
        if self.window_examples < every:
            return None
        accuracy = self.window_correct / self.window_examples
        self.window_examples = self.window_correct = 0
        return accuracy

    def next_task(self, task_id: int, epoch: int) -> TaskStats:
        """Fresh statistics for the next task; the running-accuracy window spans task
        boundaries."""
        return TaskStats(task_id=task_id, epoch=epoch,
                         window_examples=self.window_examples,
                         window_correct=self.window_correct)  # fmt: skip

    def keep_if_best(self, validation_accuracy: float, model: nn.Module) -> None:
        """LoP's best-validation bookkeeping: a copy of the weights of the epoch with
        the best validation accuracy so far."""
        if validation_accuracy > self.best_validation:
            self.best_validation = validation_accuracy
            self.best_state = copy.deepcopy(model.state_dict())


@torch.no_grad()
def step_through_group(
    env: Any,
    model: nn.Module,
    obs: Any,
    info: dict[str, Any],
    size: int,
    num_classes: int,
    device: torch.device | str,
) -> tuple[list[tuple[torch.Tensor, dict[str, Any], Any, dict[str, Any]]], Any, Any]:
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


def task_plasticity_report(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    layers: Sequence[str] | None = None,
    weight_change: WeightChangeTracker | None = None,
) -> dict[str, float]:
    """:func:`clenv.metrics.plasticity_report` of ``model`` on a task's samples with
    every opt-in metric: active-unit fraction and feature norm per layer, the norm
    per layer of the gradient of ``loss_fn`` (the training loss) on ``batch`` at the
    current weights, and ``weight_change``'s distance from the task's start.

    The gradient comes from one backward pass of its own: the parameters' ``.grad``,
    every buffer, train/eval flag and RNG stream are as before afterwards, so the run
    continues exactly as if nothing had been measured.

    Args:
        model: the network.
        loss_fn: ``loss_fn(model, (inputs, labels))``, the batch-mean training loss.
        batch: ``(inputs, labels)``, the task's samples.
        layers: the activations to rank (:func:`~clenv.metrics.capture_activations`;
            default every activation module).
        weight_change: the tracker reset at the task's start, or None.
    """
    params = list(model.parameters())
    saved = [param.grad for param in params]
    try:
        for param in params:
            param.grad = None
        with preserved_training_state(model, None), torch.enable_grad():
            loss_fn(model, batch).backward()
        return plasticity_report(
            {"": model}, batch[0], layers={"": layers}, active_units=True,
            feature_norms=True, gradient_norm=True, weight_change=weight_change,
        )  # fmt: skip
    finally:
        for param, grad in zip(params, saved, strict=True):
            param.grad = grad


def task_loss(
    args: Any, task_info: dict[str, Any], num_classes: int, device: torch.device
) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss(net, (inputs, labels))``: the supervised agent's training loss
    (``args.loss``) of the logits masked to the task's classes, as the curvature and
    gradient metrics take it (BatchNorm in train mode where
    ``args.curvature_batchnorm == "train"``, SC's CIFAR Hessian)."""
    loss_fn = make_loss(args.loss)
    active = active_class_mask(task_info, num_classes, device)
    batchnorm_train = args.curvature_batchnorm == "train"

    def loss(net, data):
        if batchnorm_train:  # SC's CIFAR Hessian: the samples' own statistics
            net.train()
        return loss_fn(masked_logits(net(data[0]), active), data[1])

    return loss


def log_task_curvature(
    logger: Any, model: nn.Module, base: Any, task_info: dict[str, Any], args: Any,
    step: int, task_id: int, when: str,
) -> None:  # fmt: skip
    """curvature/<when>/*: the curvature of the masked training loss on the task's
    samples, or (SC's CIFAR) those of its new classes
    (incremental_cifar/train_incremental_cifar.py:402-413), with SC's Hessian
    variance and (``args.partial_spectra``) each layer's spectrum; the settings
    are the supervised agent's (``clenv.supervised_args``: ``metric_samples``,
    ``curvature_*``, ``seed``)."""
    device = next(model.parameters()).device
    batch = task_tensors(base, task_id, "train", args.metric_samples, device,
                         new_classes_only=args.curvature_classes == "new")  # fmt: skip
    loss_fn = task_loss(args, task_info, model.head.out_features, device)
    # Ritz values and weights at a fixed length (HDF5 rows: Lanczos may stop early).
    log_curvature(
        logger, model, loss_fn, [batch], when=when, task_id=task_id, step=step,
        epsilons=args.curvature_epsilons, order=args.curvature_order,
        trace_matvecs=args.curvature_trace_matvecs, seed=args.seed,
        array_length=args.curvature_order, variance=True,
        partial_spectra=args.partial_spectra,
    )  # fmt: skip


# One seed's run as a generator: it yields (model, method, fast_path, run) once built
# and receives its fast-path trainer (None: it trains with autograd), then yields
# each chunk (inputs (K, ...), labels (K,)) the fast path is to train on and receives
# (predictions (K,), losses (K,)); it returns when the run ends.
SeedRun = Generator[Any, Any, None]


def run_in_lockstep(
    seeds: Sequence[SeedRun], lr: float, loss: str = "cross_entropy"
) -> None:
    """Drive the runs of one or several seeds (``--num-seeds``) to their end.

    Each run builds its network, method, env and run directory exactly as a run of
    its own (its seeding block first), then gets its trainer: one seed a
    :class:`~clenv.fastpath.FastMLPTrainer`, several seeds one
    :class:`~clenv.fastpath.BatchedMLPTrainer` over all their models (seed ``i``
    its :meth:`~clenv.fastpath.BatchedMLPTrainer.seed` view), built before any run
    restores its checkpoint so the restore loads into the shared tensors. Then every
    round each seed steps its env to its next chunk, one ``train`` call trains all
    chunks, and each seed does its bookkeeping (logs, task boundaries,
    checkpoints). All seeds take the same chunk and the same task lengths, so they
    stay in step to the end.

    Several seeds: each runs with its own global random generators (python,
    numpy, torch: what a reset's re-initialisation or a checkpoint's RNG state
    reads), swapped in for its turns, so each seed's run equals its own process. A
    seed whose run ends early (its divergence guard closes it and exits) drops out
    and the others go on, on a trainer regrouped without it; the group then exits as
    that seed's ``--on-divergence`` says (1 for ``fail``, after the others finish).

    Args:
        seeds: the runs, each a :data:`SeedRun` generator, not yet started.
        lr: the fast path's SGD step size (``--learning-rate``).
        loss: the fast path's loss (``--loss``: ``cross_entropy`` or ``mse``).
    """
    count = len(seeds)
    states: list[dict[str, Any] | None] = [None] * count
    ended: list[SystemExit] = []  # seeds that ended early (a divergence)
    dropped: set[int] = set()

    def turn(index: int, value: Any, training: bool = True) -> Any:
        """Seed ``index``'s run up to its next yield (None when it has ended)."""
        if count > 1 and states[index] is not None:
            restore_rng_state(states[index])
        try:
            return seeds[index].send(value)
        except StopIteration:
            return None
        except SystemExit as exit:  # its run is closed; the others go on
            if count == 1 or not training:
                raise
            ended.append(exit)
            dropped.add(index)
            return None
        finally:
            if count > 1:
                states[index] = capture_rng_state()

    built = [turn(index, None, training=False) for index in range(count)]
    models, methods = [b[0] for b in built], [b[1] for b in built]
    runs = [b[3] for b in built]
    if len({run.global_step for run in runs}) > 1:  # killed between their saves
        steps = {str(run.run_dir): run.global_step for run in runs}
        raise ValueError(
            f"the group's runs resume from different steps {steps}; delete the newer "
            "checkpoints (checkpoints/ckpt_<step>.pt) so that every run resumes from "
            f"step {min(steps.values())}, then --resume again"
        )
    record_seed_group(runs)
    trainers: list[Any] = [None] * count
    batched = None
    if built[0][2] and count == 1:
        trainers = [FastMLPTrainer(models[0], lr, method=methods[0], loss=loss)]
    elif built[0][2]:
        batched = BatchedMLPTrainer(models, lr, methods, loss=loss)
        trainers = [batched.seed(index) for index in range(count)]
    chunks = {index: turn(index, trainers[index]) for index in range(count)}
    active = [index for index, chunk in chunks.items() if chunk is not None]
    if active and len(active) < count - len(dropped):
        raise RuntimeError("the seeds of a group fell out of step at the start")
    while active:
        if batched is not None and batched.num_seeds != len(active):
            batched = _regroup(batched, [trainers[i] for i in active], lr, loss)
        if batched is None:
            results = {active[0]: trainers[active[0]].train(*chunks[active[0]])}
        else:
            predictions, losses = batched.train(
                torch.stack([chunks[i][0] for i in active]),
                torch.stack([chunks[i][1] for i in active]),
            )
            results = dict(
                zip(active, zip(predictions, losses, strict=True), strict=True)
            )
        chunks = {index: turn(index, results[index]) for index in active}
        going = [index for index in active if chunks[index] is not None]
        done = [i for i in active if chunks[i] is None and i not in dropped]
        if done and going:
            raise RuntimeError(f"the seeds of a group fell out of step: {done} ended")
        active = going
    failed = [exit for exit in ended if exit.code not in (None, 0)]
    if failed:  # --on-divergence fail: the group exits 1 with the first message
        raise failed[0]


def _regroup(batched: Any, views: list[Any], lr: float, loss: str) -> Any:
    """A new :class:`~clenv.fastpath.BatchedMLPTrainer` over the seeds still
    training (one ended early), with each seed's view (what its run checkpoints as
    its trainer) pointed at it and its step count kept."""
    batched.release()
    steps = [view.num_steps for view in views]
    regrouped = BatchedMLPTrainer(
        [view.model for view in views], lr, [view.method for view in views], loss=loss
    )
    for index, (view, num_steps) in enumerate(zip(views, steps, strict=True)):
        view.batched, view.index = regrouped, index
        view.load_state_dict({"num_steps": num_steps})
    return regrouped


def record_seed_group(runs: Sequence[Any]) -> None:
    """Write the group's run directories into each new member's ``args.json`` as
    ``seed_group`` (a run of one seed gets none), so ``--resume`` of any member
    finds the others (:func:`clenv.supervised_args.seed_group`)."""
    if len(runs) < 2 or runs[0].resumed:
        return
    members = [str(run.run_dir) for run in runs]
    for run in runs:
        run.logger.update_args(
            {**RunLogger.load_args(run.run_dir), "seed_group": members}
        )
