"""clenv/IncrementalCIFAR100-v0: class-incremental CIFAR-100, 5 new classes per task,
each task training on every class seen so far (Dohare et al. 2024, "Loss of
plasticity in deep continual learning", ``lop/incremental_cifar``; SC)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from clenv.data.cache import SharedArrays, shared_arrays
from clenv.data.cifar100 import NUM_CLASSES, load_cifar100
from clenv.data.files import data_root
from clenv.data.transforms import CIFAR100_MEAN, CIFAR100_STD, PixelScaler
from clenv.data.transforms import augment as lop_augment
from clenv.envs.supervised import (
    MAX_BATCH_SIZE,
    SupervisedStreamEnv,
    check_flags,
    check_positive_int,
    resolve_task_lengths,
    seeded_class_order,
)

IMAGE_SHAPE = (3, 32, 32)
IMAGES_PER_CLASS = 500  # CIFAR-100 training images per class
# Rotated-in corners get the mean colour, which is 0 after LoP's normalisation (LoP
# normalises before it augments).
MEAN_PIXEL = tuple(round(255 * m) for m in CIFAR100_MEAN)


class IncrementalCIFAR100Env(SupervisedStreamEnv):
    """## Description

    Class-incremental CIFAR-100 (LoP): the classes arrive 5 at a time in a per-seed
    order; task k trains for a number of epochs on the training images of all
    ``5 (k + 1)`` classes seen so far. Each class's 500 training images are split as
    LoP does: the first 50 (in file order) for validation, the other 450 for training;
    ``train_images_per_class=500`` trains on all of them with no validation split, as
    SC's code does.

    ## Action Space

    ``Discrete(100)`` for ``batch_size=1``, else ``MultiDiscrete([100] * batch_size)``:
    the predicted CIFAR-100 fine label. Restrict the logits to
    ``info["active_classes"]`` (the classes seen so far, in order of arrival); a
    prediction outside them is simply wrong.

    ## Observation Space

    ``Box(0, 1, (batch_size, 3, 32, 32), float32)`` (channels first, pixels / 255);
    with ``normalize=True``, LoP's per-channel normalisation
    ``(x - (0.5071, 0.4865, 0.4409)) / (0.2673, 0.2564, 0.2762)``.

    ## Rewards

    The fraction of the batch classified correctly; ``info["label"]`` reveals the
    batch's fine labels afterwards.

    ## Starting State

    ``reset(seed=s)`` restarts at task 0 (shuffles and augmentation from ``s``);
    ``reset()`` without a seed continues the stream.

    ## Episode End

    One episode per task: the step that completes a task returns ``truncated=True``.
    Never ``terminated``. After the last task (100 classes) the stream stays in it.

    ## Task Schedule

    Task k lasts ``ceil(epochs_per_task * 450 * 5 (k + 1) / batch_size)`` steps, so tasks
    grow longer as classes are added (``switch_every`` fixes every task's length
    instead). Each epoch is a fresh shuffle of the task's training images (LoP's
    shuffling data loader); with ``reshuffle_each_epoch=False`` the order drawn at the
    task's start is kept for all its epochs (SC's code shuffles the data set once and
    then walks it in the same order every epoch). A batch may straddle two epochs when
    ``batch_size`` does not divide the task's images.
    ``info``: the protocol's keys with ``task = {"num_classes": 5 (k + 1),
    "new_classes": (...)}``, plus ``label``, ``epoch`` (epoch of the next batch, for lr
    schedules such as LoP's x0.2 at epochs 60/120/160) and ``active_classes`` (int64
    array of the classes seen so far). ``env.unwrapped.task_data(k, split)`` returns
    the ``"validation"`` (50 per class, LoP's early stopping; absent with
    ``train_images_per_class=500``), ``"test"`` (the 100 test images per class) or
    ``"train"`` images of task k's classes, never augmented.

    With ``augment=True`` training batches are augmented as in LoP: horizontal flip
    (p = 0.5), 32x32 crop of the image padded by 4 (reflect), rotation by U[0, 15]
    degrees (nearest neighbour, corners filled with the mean colour).

    ## Arguments

    | argument | default | meaning |
    |---|---|---|
    | `batch_size` | 100 | examples per step (SC 100; LoP 90) |
    | `epochs_per_task` | 200 | epochs per task (LoP) |
    | `switch_every` | None | steps per task, instead of `epochs_per_task` |
    | `num_tasks` | 20 | tasks; at most 100 / `classes_per_task` |
    | `classes_per_task` | 5 | classes added per task |
    | `task_seed` | 0 | seeds the class order |
    | `train_images_per_class` | 450 | training images per class, the rest validate (LoP 450; SC 500, no validation) |
    | `reshuffle_each_epoch` | True | new order every epoch (LoP) or one per task (SC) |
    | `augment` | False | LoP's augmentation (SC: none) |
    | `normalize` | False | LoP's per-channel normalisation |
    | `data_dir` | None | data root (else `$CLENV_DATA_DIR`, else `~/.cache/clenv`) |
    | `download` | False | fetch CIFAR-100 if missing (md5-verified) |

    ```python
    lop = gym.make("clenv/IncrementalCIFAR100-v0", batch_size=90, augment=True,
                   normalize=True)
    sc = gym.make("clenv/IncrementalCIFAR100-v0", train_images_per_class=500,
                  reshuffle_each_epoch=False)
    ```

    ## Version History

    * v0: initial version.
    """

    _DATA_ATTRS = ("_train", "_test")

    def __init__(
        self,
        batch_size: int = 100,
        epochs_per_task: int | None = None,
        num_tasks: int | None = None,
        task_seed: int = 0,
        switch_every: int | None = None,
        switch_at: str = "step",
        classes_per_task: int = 5,
        train_images_per_class: int = 450,
        augment: bool = False,
        normalize: bool = False,
        data_dir: str | os.PathLike | None = None,
        download: bool = False,
        reshuffle_each_epoch: bool = True,
    ) -> None:
        check_positive_int("batch_size", batch_size, upper=MAX_BATCH_SIZE)
        check_flags(
            augment=augment,
            normalize=normalize,
            download=download,
            reshuffle_each_epoch=reshuffle_each_epoch,
        )
        self._root = data_root(data_dir)
        self._download = download
        self._augment = bool(augment)
        self._classes_per_task = check_positive_int(
            "classes_per_task", classes_per_task, upper=NUM_CLASSES
        )
        max_tasks = NUM_CLASSES // self._classes_per_task
        num_tasks = max_tasks if num_tasks is None else num_tasks
        if check_positive_int("num_tasks", num_tasks) > max_tasks:
            raise ValueError(
                f"num_tasks must be <= {max_tasks} (100 classes, {classes_per_task} per "
                f"task), got {num_tasks}"
            )
        self._train_per_class = check_positive_int(
            "train_images_per_class", train_images_per_class
        )
        if self._train_per_class > IMAGES_PER_CLASS:
            raise ValueError(
                f"train_images_per_class must be <= {IMAGES_PER_CLASS} (CIFAR-100's "
                f"training images per class), got {train_images_per_class}"
            )
        self._class_order = seeded_class_order(task_seed, NUM_CLASSES)
        self._load_data()
        if epochs_per_task is None and switch_every is None:
            epochs_per_task = 200
        examples = None
        if epochs_per_task is not None:
            epochs = check_positive_int("epochs_per_task", epochs_per_task)
            per_task = self._classes_per_task * self._train_per_class
            examples = [epochs * per_task * (k + 1) for k in range(num_tasks)]
        lengths = resolve_task_lengths(
            switch_every, examples, batch_size, "epochs_per_task"
        )
        scaler = (
            PixelScaler(3, CIFAR100_MEAN, CIFAR100_STD) if normalize else PixelScaler()
        )
        # Every training image trains (SC): there is no validation split.
        has_validation = len(self._train.arrays[3]) > 0
        splits = (
            ("test", "validation", "train") if has_validation else ("test", "train")
        )
        super().__init__(
            batch_size=batch_size,
            num_classes=NUM_CLASSES,
            example_shape=IMAGE_SHAPE,
            task_lengths=lengths,
            num_tasks=num_tasks,
            task_seed=task_seed,
            switch_at=switch_at,
            scaler=scaler,
            eval_splits=splits,
            reshuffle_each_epoch=reshuffle_each_epoch,
        )

    @property
    def class_order(self) -> np.ndarray:
        """The order in which the classes arrive (task k adds entries 5k .. 5k + 4)."""
        return self._class_order.copy()

    def active_classes(self, task_id: int | None = None) -> np.ndarray:
        """Classes seen up to task ``task_id`` (default: the current task)."""
        task_id = self.task_id if task_id is None else task_id
        task_id = self._schedule.check_task_id(task_id)
        return self._class_order[: self._classes_per_task * (task_id + 1)].copy()

    def _load_data(self) -> None:
        root, download, train_per_class = (
            self._root,
            self._download,
            self._train_per_class,
        )

        def load() -> tuple[np.ndarray, ...]:
            images, labels = load_cifar100("train", root, download)
            train, validation = split_per_class(labels, train_per_class)
            return images, labels, train, validation

        key = ("cifar100", "train", str(root.resolve()), train_per_class)
        self._train = shared_arrays(key, load)
        self._test: SharedArrays | None = None  # loaded on first use

    def _make_task(self, task_id: int, rng: np.random.Generator) -> dict[str, Any]:
        per_task = self._classes_per_task
        new = self._class_order[per_task * task_id : per_task * (task_id + 1)]
        return {
            "num_classes": per_task * (task_id + 1),
            "new_classes": tuple(int(c) for c in new),
        }

    def _members(self, labels: np.ndarray, index: np.ndarray, task: dict[str, Any]):
        active = self._class_order[: task["num_classes"]]
        return index[np.isin(labels[index], active)]

    def _task_train_data(
        self, task: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, labels, train, _ = self._train.arrays
        self._active = self._class_order[: task["num_classes"]]
        return images, labels, self._members(labels, train, task)

    def _fill_task_info(self, info: dict[str, Any]) -> None:
        info["active_classes"] = self._active.copy()  # users may keep and modify it

    def _task_eval_data(
        self, task_id: int, task: dict[str, Any], split: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if split == "test":
            if self._test is None:
                root, download = self._root, self._download
                self._test = shared_arrays(
                    ("cifar100", "test", str(root.resolve())),
                    lambda: load_cifar100("test", root, download),
                )
            images, labels = self._test.arrays
            index = self._members(labels, np.arange(len(labels)), task)
        else:
            images, labels, train, validation = self._train.arrays
            index = self._members(
                labels, train if split == "train" else validation, task
            )
        return images[index], labels[index]

    def _transform(
        self, inputs: np.ndarray, task: dict[str, Any], train: bool
    ) -> np.ndarray:
        if train and self._augment:
            inputs = lop_augment(inputs, self.np_random, fill=MEAN_PIXEL)
        return self._scaler(inputs)


def split_per_class(
    labels: np.ndarray, train_per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """LoP's split: per class, the first images (file order) validate, the last
    ``train_per_class`` train. Returns (train indices, validation indices), sorted."""
    train, validation = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < train_per_class:
            raise ValueError(
                f"class {label} has {len(members)} training images, fewer than "
                f"train_images_per_class={train_per_class}"
            )
        cut = len(members) - train_per_class
        validation.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))
