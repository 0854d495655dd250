"""clenv/ContinualImageNet-v0: a sequence of binary classification tasks over pairs of
downsampled-ImageNet classes (Dohare et al. 2024, "Loss of plasticity in deep continual
learning", Continual ImageNet; SC)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from clenv.data.files import CorruptFileError, data_root
from clenv.data.imagenet32 import (
    IMAGE_SHAPE,
    IMAGES_PER_CLASS,
    NUM_CLASSES,
    check_imagenet32_classes,
    load_imagenet32_class,
)
from clenv.data.transforms import PixelScaler
from clenv.envs.supervised import (
    MAX_BATCH_SIZE,
    SupervisedStreamEnv,
    check_positive_int,
    resolve_task_lengths,
    seeded_class_order,
)

# What the uint8 pixels are divided by.
PIXEL_SCALES = {"raw": 1.0, "unit": 255.0}


class ContinualImageNetEnv(SupervisedStreamEnv):
    """## Description

    Continual ImageNet (LoP): every task is a binary classification between two new
    classes of ImageNet downsampled to 32x32, trained for a number of epochs over the
    task's 1,200 training images (600 per class) in minibatches of 100, and tested on
    its 200 held-out images (100 per class).

    ## Action Space

    ``Discrete(2)`` for ``batch_size=1``, else ``MultiDiscrete([2] * batch_size)``:
    0 for the task's first class, 1 for its second.

    ## Observation Space

    ``Box(0, 1, (batch_size, 3, 32, 32), float32)``: channels first, the stored pixel
    values divided by 255 (``pixel_scale="unit"``, v0's released behaviour).
    ``pixel_scale="raw"`` gives the values 0..255 as float32 (``Box(0, 255, ...)``),
    which is what both papers' code feeds: it casts the stored images to float without
    dividing (``lop/imagenet/single_expr.py:136``, SC's
    ``imagenet/train_imagenet.py:184``); ``agents/supervised_l2er.py`` passes it under
    both protocols (docs/protocols.md). ``(3, 32, 32)`` for ``batch_size=1``.

    ## Rewards

    The fraction of the batch classified correctly, predicted before the labels are
    revealed in ``info["label"]``.

    ## Starting State

    ``reset(seed=s)`` restarts the stream at task 0 (epoch shuffles from ``s``);
    ``reset()`` without a seed continues it (returns the pending batch).

    ## Episode End

    An episode is one task: the step that completes a task's last epoch returns
    ``truncated=True`` with the first batch of the next task. Never ``terminated``.

    ## Task Schedule

    The classes are paired in a per-seed order (``env.unwrapped.class_order``): task
    k classifies ``order[2k]`` (label 0) against ``order[2k + 1]`` (label 1); after 500
    tasks the order repeats, as in LoP. A task lasts
    ``ceil(epochs_per_task * 1200 / batch_size)`` steps (3,000 at LoP's 250 epochs and
    batch 100); ``switch_every`` may be given instead. Each epoch is a fresh shuffle of
    the task's 1,200 images; ``info["epoch"]`` is the epoch the next batch starts in.
    ``info["task"] = {"classes": (a, b)}`` (ImageNet32 class indices, label - 1).
    ``env.unwrapped.task_data(k, "test")`` returns task k's 200 held-out images.

    LoP zeroes the output layer at each task start; SC does not. That is the learner's
    choice, on ``info["task_switch"]``.

    ## Arguments

    | argument | default | meaning |
    |---|---|---|
    | `batch_size` | 100 | examples per step (LoP and SC: 100) |
    | `epochs_per_task` | 250 | epochs per task (LoP 250; SC 20) |
    | `switch_every` | None | steps per task, instead of `epochs_per_task` |
    | `num_tasks` | 2000 | tasks (LoP ran 5000 for some methods) |
    | `task_seed` | 0 | seeds the class order |
    | `num_classes` | 1000 | classes in the data (files `classes/0..N-1.npy`) |
    | `train_images_per_class` | 600 | leading images of a class file used for training |
    | `test_images_per_class` | 100 | following images held out |
    | `pixel_scale` | "unit" | "unit": / 255; "raw": pixel values 0..255 (LoP, SC) |
    | `data_dir` | None | data root (else `$CLENV_DATA_DIR`, else `~/.cache/clenv`) |

    ```python
    env = gym.make("clenv/ContinualImageNet-v0", epochs_per_task=20)  # SC's setting
    ```

    ## Version History

    * v0: initial version. Observations divided by 255; ``pixel_scale="raw"`` (added
      later, default off so v0 observations stay as released) gives the papers'
      0..255 values.
    """

    def __init__(
        self,
        batch_size: int = 100,
        epochs_per_task: int | None = None,
        num_tasks: int | None = 2000,
        task_seed: int = 0,
        switch_every: int | None = None,
        switch_at: str = "step",
        num_classes: int = NUM_CLASSES,
        train_images_per_class: int = 600,
        test_images_per_class: int = 100,
        data_dir: str | os.PathLike | None = None,
        pixel_scale: str = "unit",
    ) -> None:
        check_positive_int("batch_size", batch_size, upper=MAX_BATCH_SIZE)
        self._pixel_scale = pixel_scale
        if not isinstance(pixel_scale, str) or pixel_scale not in PIXEL_SCALES:
            raise ValueError(
                f"pixel_scale must be one of {list(PIXEL_SCALES)} ('raw': the stored "
                f"0..255 values, as LoP and SC; 'unit': divided by 255), got "
                f"{pixel_scale!r}"
            )
        self._root = data_root(data_dir)
        self._train_per_class = check_positive_int(
            "train_images_per_class", train_images_per_class
        )
        self._test_per_class = check_positive_int(
            "test_images_per_class", test_images_per_class
        )
        if self._train_per_class + self._test_per_class > IMAGES_PER_CLASS:
            raise ValueError(
                f"train_images_per_class + test_images_per_class must be <= "
                f"{IMAGES_PER_CLASS} (the images of a class file), got "
                f"{train_images_per_class} + {test_images_per_class}"
            )
        # <= the dataset's classes: each one is a file to check and to load.
        check_positive_int("num_classes", num_classes, upper=NUM_CLASSES)
        if num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 to form pairs, got {num_classes}"
            )
        check_imagenet32_classes(num_classes, self._root)
        order = seeded_class_order(task_seed, num_classes)
        self._class_order = order[: len(order) - len(order) % 2]
        if epochs_per_task is None and switch_every is None:
            epochs_per_task = 250
        examples = None
        if epochs_per_task is not None:
            epochs = check_positive_int("epochs_per_task", epochs_per_task)
            examples = [epochs * 2 * self._train_per_class]
        lengths = resolve_task_lengths(
            switch_every, examples, batch_size, "epochs_per_task"
        )
        super().__init__(
            batch_size=batch_size,
            num_classes=2,
            example_shape=IMAGE_SHAPE,
            task_lengths=lengths,
            num_tasks=num_tasks,
            task_seed=task_seed,
            switch_at=switch_at,
            scaler=PixelScaler(divisor=PIXEL_SCALES[pixel_scale]),
            eval_splits=("test", "train"),
        )

    @property
    def pixel_scale(self) -> str:
        """``"raw"`` (observations are the pixel values 0..255) or ``"unit"`` (/ 255)."""
        return self._pixel_scale

    @property
    def class_order(self) -> np.ndarray:
        """The order in which classes are paired (task k: entries 2k and 2k + 1)."""
        return self._class_order.copy()

    def _make_task(self, task_id: int, rng: np.random.Generator) -> dict[str, Any]:
        first = (2 * task_id) % len(self._class_order)
        return {"classes": tuple(int(c) for c in self._class_order[first : first + 2])}

    def _load_classes(
        self, task: dict[str, Any], start: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray]:
        needed = self._train_per_class + self._test_per_class
        try:
            images = [
                load_imagenet32_class(c, self._root, needed)[start:stop]
                for c in task["classes"]
            ]
        except CorruptFileError as error:
            raise CorruptFileError(
                f"{error} (train_images_per_class={self._train_per_class} + "
                f"test_images_per_class={self._test_per_class})"
            ) from error
        labels = np.repeat(np.arange(2, dtype=np.int64), stop - start)
        return np.concatenate(images), labels

    def _task_train_data(
        self, task: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, None]:
        return (*self._load_classes(task, 0, self._train_per_class), None)

    def _task_eval_data(
        self, task_id: int, task: dict[str, Any], split: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if split == "train":
            return self._load_classes(task, 0, self._train_per_class)
        end = self._train_per_class + self._test_per_class
        return self._load_classes(task, self._train_per_class, end)
