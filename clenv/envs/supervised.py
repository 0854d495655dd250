"""The base class of clenv's supervised streams (Permuted MNIST, Continual ImageNet,
incremental CIFAR-100): a labelled data stream as a Gymnasium environment.

One step = one batch: the observation is ``batch_size`` inputs, the action is the
predicted class of each, the reward is the fraction predicted correctly (online
accuracy: the prediction is made before the label is seen), and ``info["label"]``
reveals the labels of that batch after the step, so a supervised learner trains on
them. With ``batch_size=1`` an RL library sees a contextual bandit.

A subclass supplies the data of each task; this module owns the stream, the task
schedule (through :class:`clenv.protocol.ContinualEnv`), action checks, pickling and
the evaluation API. See docs/envs/*.md for the three envs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from clenv.checks import check_flags, check_range
from clenv.data.transforms import PixelScaler
from clenv.protocol import ContinualEnv, TaskSchedule

_CLASS_ORDER_STREAM = 2**31 - 1


class StreamSchedule(TaskSchedule):
    """A :class:`TaskSchedule` whose tasks may differ in length (in steps).

    Task k lasts ``lengths[k]`` steps (the last entry repeats for later tasks), so an
    epoch-based task over a growing training set (incremental CIFAR-100) switches after
    exactly its number of epochs. Switches happen exactly at the boundary
    (``switch_at="step"``); ``switch_every`` holds the first task's length.
    """

    def __init__(
        self, lengths: Sequence[int], num_tasks: int | None, task_seed: int
    ) -> None:
        super().__init__(int(lengths[0]), "step", num_tasks, task_seed)
        for length in lengths:
            if length <= 0:
                raise ValueError(f"every task needs at least one step, got {lengths}")
        self.lengths = tuple(int(length) for length in lengths)

    def task_length(self, task_id: int) -> int:
        """Steps in task ``task_id``."""
        return self.lengths[min(task_id, len(self.lengths) - 1)]

    def on_step(self) -> bool:
        self.total_steps += 1
        self.task_step += 1
        if self.task_step < self.task_length(self.task_id) or not self._has_next_task:
            return False
        self._next_task()
        return True


def steps_for(examples: int, batch_size: int) -> int:
    """Steps that show at least ``examples`` examples at ``batch_size`` per step."""
    return math.ceil(examples / batch_size)


class SupervisedStreamEnv(ContinualEnv, gym.Env):
    """A continual supervised data stream: observe a batch, predict, get accuracy.

    Subclasses implement :meth:`_make_task` (the task's parameters, from ``rng``),
    :meth:`_task_train_data` (uint8 inputs and int labels of a task's training set),
    :meth:`_task_eval_data` (the same for a held-out split), and may override
    :meth:`_transform` (uint8 batch -> float32 observation; default ``x / 255``,
    optionally normalised). Large arrays they hold are named in ``_DATA_ATTRS`` and
    reloaded by :meth:`_load_data` after unpickling instead of being pickled.

    Args:
        batch_size: examples per step.
        num_classes: size of the label space (actions are in ``[0, num_classes)``).
        example_shape: shape of one observation example.
        task_lengths: steps of each task (the last one repeats).
        num_tasks: length of the task sequence, or None for endless.
        task_seed: the task sequence depends only on it.
        switch_at: must be ``"step"`` (kept for the protocol's signature).
        scaler: uint8 -> float32 conversion (and normalisation).
        eval_splits: names accepted by :meth:`task_data`.
        reshuffle_each_epoch: draw a new order of the task's examples for every
            epoch (True), or keep the order drawn at the task's start for all its
            epochs (False).
    """

    metadata: dict[str, Any] = {"render_modes": []}
    _DATA_ATTRS: tuple[str, ...] = ()
    _TRANSIENT = ("_pool_inputs", "_pool_labels", "_pool_subset")

    def __init__(
        self,
        *,
        batch_size: int,
        num_classes: int,
        example_shape: tuple[int, ...],
        task_lengths: Sequence[int],
        num_tasks: int | None,
        task_seed: int,
        switch_at: str,
        scaler: PixelScaler,
        eval_splits: tuple[str, ...],
        reshuffle_each_epoch: bool = True,
    ) -> None:
        if switch_at != "step":
            raise ValueError(
                f"switch_at must be 'step' for supervised streams, got {switch_at!r}: "
                "a task ends after a fixed number of examples (or epochs) and every "
                "task is one episode, so the switch always falls on an episode end"
            )
        self._batch_size = check_positive_int("batch_size", batch_size)
        check_flags(reshuffle_each_epoch=reshuffle_each_epoch)
        self._reshuffle = bool(reshuffle_each_epoch)
        self._num_classes = num_classes
        self._scaler = scaler
        self._eval_splits = eval_splits
        self._example_shape = tuple(example_shape)
        low, high = scaler.bounds(self._example_shape)
        if self._batch_size == 1:
            self.action_space = gym.spaces.Discrete(num_classes)
        else:
            self.action_space = gym.spaces.MultiDiscrete(
                np.full(self._batch_size, num_classes, np.int64)
            )
            low = np.broadcast_to(low, (self._batch_size, *low.shape))
            high = np.broadcast_to(high, (self._batch_size, *high.shape))
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self._order: np.ndarray | None = None
        self._position = 0
        self._epoch = 0
        self._pending_obs: np.ndarray | None = None
        self._pending_labels: np.ndarray | None = None
        self._pending_epoch = 0
        self._init_schedule(int(task_lengths[0]), "step", num_tasks, task_seed)
        self._schedule = StreamSchedule(task_lengths, num_tasks, task_seed)

    # -- to implement ------------------------------------------------------------------
    def _load_data(self) -> None:
        """(Re)load the dataset arrays named in ``_DATA_ATTRS``."""

    def _task_train_data(
        self, task: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A task's training set: uint8 inputs ``(N, ...)``, int64 labels ``(N,)`` and
        the indices of the task's examples among them (None: all N).

        Also sets whatever :meth:`_transform` and :meth:`_fill_task_info` need for this
        task (e.g. a permutation).
        """
        raise NotImplementedError

    def _fill_task_info(self, info: dict[str, Any]) -> None:
        """Add ``info`` entries that describe the current task (e.g. active classes)."""

    def _task_eval_data(
        self, task_id: int, task: dict[str, Any], split: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 inputs and int64 labels of a held-out split of task ``task_id``."""
        raise NotImplementedError

    def _transform(
        self, inputs: np.ndarray, task: dict[str, Any], train: bool
    ) -> np.ndarray:
        """uint8 batch -> float32 observations; ``train`` batches may be augmented."""
        return self._scaler(inputs)

    # -- public ------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Examples per step."""
        return self._batch_size

    @property
    def n_classes(self) -> int:
        """Size of the label space (actions are in ``[0, n_classes)``)."""
        return self._num_classes

    @property
    def steps_per_task(self) -> int:
        """Steps in the current task (see :meth:`task_length` for any task)."""
        return self._schedule.task_length(self.task_id)

    def task_length(self, task_id: int) -> int:
        """Steps in task ``task_id``."""
        return self._schedule.task_length(self._schedule.check_task_id(task_id))

    def task_data(
        self,
        task_id: int | None = None,
        split: str = "test",
        max_examples: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Held-out data of any task, current or past: the evaluation API.

        Inputs are transformed exactly as observations are (float32, normalised if the
        env normalises) but never augmented. The env's stream is not touched.

        Args:
            task_id: the task (default: the current one).
            split: one of the env's ``eval_splits`` (``"test"`` everywhere; also
                ``"train"``, and ``"validation"`` for CIFAR-100).
            max_examples: keep a fixed random subset of this many examples (the same
                subset on every call and, where tasks share images as in Permuted
                MNIST, for every task; e.g. 2000 samples for a Hessian spectrum).

        Returns:
            ``(inputs, labels)``: float32 ``(N, *example_shape)`` and int64 ``(N,)``.
        """
        task_id = self.task_id if task_id is None else task_id
        task_id = self._schedule.check_task_id(task_id)
        if split not in self._eval_splits:
            raise ValueError(f"split must be one of {self._eval_splits}, got {split!r}")
        task = self._task_params(task_id)
        inputs, labels = self._task_eval_data(task_id, task, split)
        if max_examples is not None and max_examples < len(labels):
            check_positive_int("max_examples", max_examples)
            # Seeded by the split's size, not the task: Permuted MNIST evaluates every
            # task on the same images.
            rng = np.random.default_rng([self._schedule.task_seed, len(labels)])
            keep = np.sort(rng.permutation(len(labels))[:max_examples])
            inputs, labels = inputs[keep], labels[keep]
        return self._transform(inputs, task, train=False), labels.astype(np.int64)

    def get_schedule_state(self) -> dict[str, Any]:
        """The schedule's state plus the data stream's (shuffle, position, generator,
        the batch on display), so a restored env continues with the same examples."""
        state = super().get_schedule_state()
        state["stream"] = {
            "rng": self.np_random.bit_generator.state,
            "order": _own(self._order),
            "position": self._position,
            "epoch": self._epoch,
            "pending_obs": _own(self._pending_obs),
            "pending_labels": _own(self._pending_labels),
            "pending_epoch": self._pending_epoch,
        }
        return state

    def set_schedule_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_schedule_state`; ``reset()`` (no seed) then returns the
        batch that was on display when the state was saved."""
        super().set_schedule_state(state)
        stream = state.get("stream")
        if stream is not None:
            missing = set(STREAM_KEYS) - set(stream if isinstance(stream, dict) else ())
            if missing:
                raise ValueError(
                    "schedule state 'stream' must be the dict get_schedule_state() "
                    f"saved (keys {list(STREAM_KEYS)}), got {stream!r}"
                )
            try:
                self.np_random.bit_generator.state = stream["rng"]
            except (TypeError, ValueError, KeyError) as error:
                raise ValueError(
                    f"schedule state stream['rng'] is not a generator state "
                    f"({error}); restore a state saved by get_schedule_state"
                ) from None
            # Copies: the caller keeps its state, and step() hands the pending labels
            # out in info["label"], so neither may alias the other.
            self._order = _own(stream["order"])
            self._position = stream["position"]
            self._epoch = stream["epoch"]
            self._pending_obs = _own(stream["pending_obs"])
            self._pending_labels = _own(stream["pending_labels"])
            self._pending_epoch = stream["pending_epoch"]

    # -- gymnasium API -----------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the stream (with a seed: over, at task 0) or continue it.

        ``reset()`` without a seed never skips data: it returns the pending
        observation, the one that came with the last step (after ``truncated`` at a
        task end, the first batch of the next task).
        """
        super().reset(seed=seed)
        if seed is not None:  # the stream starts over too, also while a task is pinned
            self._restart_stream()
        info = self._schedule_reset({}, seed)
        if self._pending_obs is None:
            self._draw_batch()
        info["epoch"] = self._pending_epoch
        self._fill_task_info(info)
        # A copy: the same batch came with the last step, and users keep what they get.
        return self._pending_obs.copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._pending_labels is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        labels = self._pending_labels
        if self._batch_size == 1:
            label = int(labels[0])
            reward = float(self._check_single_action(action) == label)
        else:
            predicted = self._check_batch_action(action)
            reward = np.count_nonzero(predicted == labels) / self._batch_size
            label = labels
        info = self._schedule_step({"label": label})
        obs = self._draw_batch()
        info["epoch"] = self._pending_epoch
        self._fill_task_info(info)
        task_step = info["task_step"]
        truncated = info["task_switch"] or (
            task_step % self._schedule.task_length(info["task_id"]) == 0
        )
        return obs, reward, False, truncated, info

    # -- the stream --------------------------------------------------------------------
    def _apply_task(self, task: dict[str, Any]) -> None:
        self._load_pool(task)
        self._restart_stream()

    def _restart_stream(self) -> None:
        # A new task starts its own stream: new shuffle, epoch 0. The labels of the
        # batch on display are kept (the next action is still scored against them).
        self._order = None
        self._position = 0
        self._epoch = 0
        self._pending_obs = None

    def _load_pool(self, task: dict[str, Any]) -> None:
        inputs, labels, subset = self._task_train_data(task)
        self._pool_inputs, self._pool_labels, self._pool_subset = inputs, labels, subset
        self._pool_size = len(labels) if subset is None else len(subset)

    def _draw_batch(self) -> np.ndarray:
        """Cut the next batch from the task's stream of shuffled epochs."""
        size = self._pool_size
        if self._order is None:
            self._order = self.np_random.permutation(size)
            self._position = 0
            self._epoch = 0
        if self._position == size:
            self._new_epoch(size)
        self._pending_epoch = self._epoch
        end = self._position + self._batch_size
        if end <= size:
            index = self._order[self._position : end]
            self._position = end
        else:  # the batch runs into the next epoch(s)
            parts, needed = [], self._batch_size
            while needed:
                if self._position == size:
                    self._new_epoch(size)
                take = min(needed, size - self._position)
                parts.append(self._order[self._position : self._position + take])
                self._position += take
                needed -= take
            index = np.concatenate(parts)
        if self._pool_subset is not None:
            index = self._pool_subset[index]
        if self._batch_size == 1:  # a view; every transform returns a new array
            row = int(index[0])
            inputs = self._pool_inputs[row : row + 1]
        else:
            inputs = self._pool_inputs.take(index, axis=0)
        obs = self._transform(inputs, self._task, train=True)
        if self._batch_size == 1:
            obs = obs[0]
        self._pending_obs = obs
        self._pending_labels = self._pool_labels[index]
        return obs

    def _new_epoch(self, size: int) -> None:
        if self._reshuffle:
            self._order = self.np_random.permutation(size)
        self._position = 0
        self._epoch += 1

    # -- actions -----------------------------------------------------------------------
    def _check_single_action(self, action: Any) -> int:
        if isinstance(action, int | np.integer) and not isinstance(action, bool):
            value = int(action)
        else:
            array = np.asarray(action)
            if array.shape not in ((), (1,)) or array.dtype.kind not in "iu":
                raise ValueError(
                    "action must be one integer class index (batch_size=1), got "
                    f"{action!r} (shape {array.shape}, dtype {array.dtype})"
                )
            value = int(array.reshape(()))
        if not 0 <= value < self._num_classes:
            raise ValueError(
                f"action {value} is outside [0, {self._num_classes}): it must be a "
                "class index"
            )
        return value

    def _check_batch_action(self, action: Any) -> np.ndarray:
        array = np.asarray(action)
        if array.shape != (self._batch_size,):
            raise ValueError(
                f"action must have shape ({self._batch_size},), one predicted class "
                f"per example of the batch, got shape {array.shape}"
            )
        if array.dtype.kind not in "iu":
            raise ValueError(
                f"action must hold integer class indices, got dtype {array.dtype}"
            )
        if array.min() < 0 or array.max() >= self._num_classes:
            position = int(
                np.flatnonzero((array < 0) | (array >= self._num_classes))[0]
            )
            raise ValueError(
                f"action[{position}] = {array[position]} is outside "
                f"[0, {self._num_classes}): every entry must be a class index"
            )
        return array

    # -- pickling: state yes, dataset no -----------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._DATA_ATTRS + self._TRANSIENT:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load_data()
        self._load_pool(self._task)


STREAM_KEYS = (
    "rng",
    "order",
    "position",
    "epoch",
    "pending_obs",
    "pending_labels",
    "pending_epoch",
)


def _own(value: Any) -> Any:
    """A copy of an array (anything else, None included, as it is): the stream state
    saved and the one restored never share an array with the env (a restored
    state's other values are checked where they are used)."""
    return value.copy() if isinstance(value, np.ndarray) else value


#: The largest ``batch_size`` a supervised env takes: a batch this size of CIFAR images
#: is already 12 GB of float32; beyond numpy's limits an array cannot even be made.
MAX_BATCH_SIZE = 2**20


def check_positive_int(name: str, value: Any, upper: int | None = None) -> int:
    """``value`` as an int (``<= upper`` when given), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be <= {upper}, got {value}")
    return int(value)


def resolve_task_lengths(
    switch_every: int | None,
    examples_per_task: Sequence[int] | None,
    batch_size: int,
    examples_name: str,
) -> list[int]:
    """Steps per task from either ``switch_every`` or a number of examples per task.

    Exactly one of the two may be given: ``switch_every`` fixes the steps of every
    task; otherwise task k lasts ``ceil(examples_per_task[k] / batch_size)`` steps.
    """
    if switch_every is not None:
        if examples_per_task is not None:
            raise ValueError(
                f"give either switch_every (steps per task) or {examples_name}, not "
                f"both: the steps per task follow from {examples_name} and batch_size"
            )
        return [check_positive_int("switch_every", switch_every)]
    return [
        steps_for(check_positive_int(examples_name, examples), batch_size)
        for examples in examples_per_task
    ]


def seeded_class_order(task_seed: Any, num_classes: int) -> np.ndarray:
    """The per-seed order in which an env introduces classes.

    Drawn from its own generator, seeded with ``(task_seed, num_classes)`` and a
    constant that keeps it apart from the per-task generators of the protocol.
    """
    if isinstance(task_seed, bool) or not isinstance(task_seed, int | np.integer):
        raise ValueError(f"task_seed must be an int, got {task_seed!r}")
    check_range("task_seed", task_seed, 0)
    rng = np.random.default_rng([int(task_seed), _CLASS_ORDER_STREAM, num_classes])
    return rng.permutation(num_classes)
