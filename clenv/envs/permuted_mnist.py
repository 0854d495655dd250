"""clenv/PermutedMNIST-v0: online MNIST classification under a new pixel permutation
per task (Dohare et al. 2024, "Loss of plasticity in deep continual learning"; SC)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from clenv.data.cache import SharedArrays, shared_arrays
from clenv.data.files import data_root
from clenv.data.mnist import load_mnist
from clenv.data.transforms import PixelScaler
from clenv.envs.supervised import (
    MAX_BATCH_SIZE,
    SupervisedStreamEnv,
    check_flags,
    check_positive_int,
    resolve_task_lengths,
)

NUM_PIXELS = 28 * 28
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def pixel_permutation(task: dict[str, Any]) -> np.ndarray | None:
    """The pixel permutation of a Permuted MNIST task (None for the identity)."""
    seed = task["permutation_seed"]
    return None if seed is None else np.random.default_rng(seed).permutation(NUM_PIXELS)


class PermutedMNISTEnv(SupervisedStreamEnv):
    """## Description

    Online classification of the 60,000 MNIST training images, where every task shuffles
    the 784 pixels with its own fixed permutation (the labels are unchanged). The
    learner predicts each example before it sees its label, once per example: Permuted
    MNIST as in LoP and SC (one pass per task, batch 1, 800 tasks of 60,000 examples).

    ## Action Space

    ``Discrete(10)`` for ``batch_size=1``; ``MultiDiscrete([10] * batch_size)``
    otherwise: the predicted digit of each example.

    ## Observation Space

    ``Box(0, 1, (784,), float32)`` for ``batch_size=1`` (a flattened, permuted image,
    pixels / 255), ``(batch_size, 784)`` otherwise. With ``normalize=True`` pixels are
    standardised with MNIST's mean 0.1307 and std 0.3081 instead.

    ## Rewards

    The fraction of the batch predicted correctly (online accuracy, in [0, 1]).
    ``info["label"]`` holds the batch's true labels (an int for ``batch_size=1``, an
    int64 array otherwise), revealed after the prediction.

    ## Starting State

    ``reset(seed=s)`` starts the stream over at task 0 and shuffles with ``s``;
    ``reset()`` without a seed continues the stream (it returns the pending batch).

    ## Episode End

    An episode is one task: the step that completes a task returns ``truncated=True``
    with the first batch of the next task. ``terminated`` is always False. A supervised
    loop may ignore ``truncated`` and keep stepping; ``reset()`` never skips data.
    After the last task the stream stays in it (still truncating every task length).

    ## Task Schedule

    Task k's permutation is drawn from ``(task_seed, k)`` only
    (``np.random.default_rng(task["permutation_seed"]).permutation(784)``; task 0 is
    permuted too, as in LoP, unless ``first_task_identity=True``). Within a task the
    examples come in shuffled passes over the training set, reshuffled at every task
    and every pass, from the env's seed. A task lasts
    ``ceil(examples_per_task / batch_size)`` steps (``switch_every`` may be given
    instead, in steps). ``info`` holds the protocol's keys (``task`` =
    ``{"permutation_seed": int | None}``) plus ``label`` and ``epoch`` (the pass over the
    training set the next batch starts in). ``env.unwrapped.task_data(k, "test")``
    returns the 10,000 MNIST test images under task k's permutation.

    ## Arguments

    | argument | default | meaning |
    |---|---|---|
    | `batch_size` | 1 | examples per step |
    | `examples_per_task` | 60000 | examples per task (LoP also used 1e4..1e6) |
    | `switch_every` | None | steps per task, instead of `examples_per_task` |
    | `num_tasks` | 800 | tasks (None: endless) |
    | `task_seed` | 0 | seeds the permutations |
    | `first_task_identity` | False | task 0 shows unpermuted images |
    | `normalize` | False | standardise pixels (MNIST mean/std) |
    | `data_dir` | None | data root (else `$CLENV_DATA_DIR`, else `~/.cache/clenv`) |
    | `download` | False | fetch MNIST if missing (md5-verified) |

    ```python
    import gymnasium as gym, clenv
    gym.register_envs(clenv)
    env = gym.make("clenv/PermutedMNIST-v0", batch_size=1)  # `clenv download mnist`
    ```

    ## Version History

    * v0: initial version.
    """

    _DATA_ATTRS = ("_train", "_held_out")

    def __init__(
        self,
        batch_size: int = 1,
        examples_per_task: int | None = None,
        num_tasks: int | None = 800,
        task_seed: int = 0,
        switch_every: int | None = None,
        switch_at: str = "step",
        first_task_identity: bool = False,
        normalize: bool = False,
        data_dir: str | os.PathLike | None = None,
        download: bool = False,
    ) -> None:
        check_positive_int("batch_size", batch_size, upper=MAX_BATCH_SIZE)
        check_flags(
            first_task_identity=first_task_identity,
            normalize=normalize,
            download=download,
        )
        self._root = data_root(data_dir)
        self._download = download
        self._first_task_identity = bool(first_task_identity)
        self._load_data()
        if examples_per_task is None and switch_every is None:
            examples_per_task = 60_000
        lengths = resolve_task_lengths(
            switch_every,
            None if examples_per_task is None else [examples_per_task],
            batch_size,
            "examples_per_task",
        )
        super().__init__(
            batch_size=batch_size,
            num_classes=10,
            example_shape=(NUM_PIXELS,),
            task_lengths=lengths,
            num_tasks=num_tasks,
            task_seed=task_seed,
            switch_at=switch_at,
            scaler=PixelScaler(1, MNIST_MEAN, MNIST_STD, channel_axis=-1)
            if normalize
            else PixelScaler(),
            eval_splits=("test", "train"),
        )

    def _load_data(self) -> None:
        self._train = self._mnist("train")
        self._held_out: dict[str, SharedArrays] = {"train": self._train}

    def _mnist(self, split: str) -> SharedArrays:
        root, download = self._root, self._download
        return shared_arrays(
            ("mnist", split, str(root.resolve())),
            lambda: load_mnist(split, root, download),
        )

    def _make_task(self, task_id: int, rng: np.random.Generator) -> dict[str, Any]:
        if task_id == 0 and self._first_task_identity:
            return {"permutation_seed": None}
        return {"permutation_seed": int(rng.integers(2**32))}

    def _task_train_data(
        self, task: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, None]:
        self._permutation = pixel_permutation(task)
        images, labels = self._train.arrays
        return images, labels, None

    def _task_eval_data(
        self, task_id: int, task: dict[str, Any], split: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._held_out:  # loaded once, on first use
            self._held_out[split] = self._mnist(split)
        return self._held_out[split].arrays

    def _transform(
        self, inputs: np.ndarray, task: dict[str, Any], train: bool
    ) -> np.ndarray:
        permutation = (
            self._permutation if task is self._task else pixel_permutation(task)
        )
        if permutation is not None:
            inputs = inputs.take(permutation, axis=-1)
        return self._scaler(inputs)
