"""CIFAR-100 from the official python pickle tarball (``cifar-100-python.tar.gz``).

The tarball lives in ``<root>/cifar100/`` (torchvision's ``<root>/`` is searched too);
it is md5-verified and read in place, without extracting it. An already extracted
``cifar-100-python/`` folder (torchvision's layout) is read instead when present; its
``train`` and ``test`` files are md5-verified one by one.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from clenv.data.files import (
    CorruptFileError,
    FileSpec,
    data_root,
    missing_files_error,
    require_file,
)

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
TARBALL = FileSpec(
    "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", (URL,)
)
# md5 of the files inside the tarball (as torchvision checks them once extracted).
MEMBERS: dict[str, FileSpec] = {
    "train": FileSpec("train", "16019d7e3df5f24257cddd939b257f8d"),
    "test": FileSpec("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
}
FOLDER = "cifar-100-python"
SPLITS = ("train", "test")
NUM_CLASSES = 100
HOW_TO_GET = (
    "Pass download=True (or run `clenv download cifar100 --data-dir DIR`), or put "
    f"{URL} into that directory."
)


def cifar100_directories(root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for the tarball (or its extracted folder), in order."""
    base = data_root(root)
    return [base / "cifar100", base]


def load_cifar100(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR-100 split as uint8 images and fine labels.

    Args:
        split: ``"train"`` (50,000 images, 500 per class) or ``"test"`` (10,000).
        root: data root (see :func:`clenv.data.data_root`).
        download: fetch a missing or corrupt tarball first (md5-verified).

    Returns:
        ``(images, labels)``: images ``(N, 3, 32, 32)`` uint8 (channels first, as
        stored), labels ``(N,)`` int64 fine labels in 0..99.

    Raises:
        FileNotFoundError: no tarball or extracted folder and ``download`` is False.
        CorruptFileError: a file fails its md5 check or does not unpickle.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directories = cifar100_directories(root)
    for directory in directories:
        extracted = directory / FOLDER
        if (extracted / split).is_file():
            path = require_file(MEMBERS[split], [extracted], "CIFAR-100")
            with open(path, "rb") as f:
                return _parse_batch(f.read(), str(path))
    if not download and not any((d / TARBALL.filename).is_file() for d in directories):
        raise missing_files_error(
            "CIFAR-100", directories[0], [TARBALL.filename], HOW_TO_GET
        )
    tarball = require_file(TARBALL, directories, "CIFAR-100", download, HOW_TO_GET)
    member = f"{FOLDER}/{split}"
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            raw = archive.extractfile(member).read()
    except (tarfile.TarError, KeyError, AttributeError, OSError, EOFError) as error:
        raise CorruptFileError(
            f"{tarball} has no readable {member}: {error}"
        ) from error
    return _parse_batch(raw, f"{tarball}:{member}")


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(raw, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    except Exception as error:  # any unpickling failure means a bad file
        raise CorruptFileError(f"{where} is not a CIFAR-100 batch: {error}") from error
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise CorruptFileError(
            f"{where} is not a CIFAR-100 batch: data {data.shape}, labels {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise CorruptFileError(f"{where} has fine labels outside 0..{NUM_CLASSES - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def download_cifar100(
    root: str | os.PathLike | None = None, mirror: str | None = None
) -> Path:
    """Download the CIFAR-100 tarball into ``<root>/cifar100`` (md5-verified, atomic).

    Args:
        root: data root.
        mirror: a base URL to use instead of the canonical host.

    Returns:
        The path of the verified tarball.
    """
    directory = cifar100_directories(root)[0]
    return require_file(TARBALL, [directory], "CIFAR-100", download=True, mirror=mirror)
