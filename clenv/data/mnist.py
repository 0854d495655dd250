"""MNIST from the original IDX files (``train-images-idx3-ubyte.gz``, ...).

The four gzipped IDX files live in ``<root>/mnist/`` (torchvision's ``<root>/MNIST/raw/``
is searched too). Each is md5-verified before it is parsed.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from clenv.data.files import (
    CorruptFileError,
    FileSpec,
    data_root,
    require_file,
)

# Canonical host first; the S3 mirror is the one torchvision uses (the canonical site
# often refuses scripted downloads).
MIRRORS = (
    "http://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)


def _spec(filename: str, md5: str) -> FileSpec:
    return FileSpec(filename, md5, tuple(mirror + filename for mirror in MIRRORS))


FILES: dict[str, FileSpec] = {
    "train_images": _spec(
        "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    ),
    "train_labels": _spec(
        "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"
    ),
    "test_images": _spec(
        "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"
    ),
    "test_labels": _spec(
        "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"
    ),
}
SPLITS = ("train", "test")
HOW_TO_GET = (
    "Pass download=True (or run `clenv download mnist --data-dir DIR`), or copy the "
    "four .gz files from http://yann.lecun.com/exdb/mnist/ into that directory."
)

# IDX magic numbers: 0x0000 + type code 0x08 (unsigned byte) + number of dimensions.
_IDX_UBYTE = 0x08


def mnist_directories(root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for the MNIST files, in order."""
    base = data_root(root)
    return [base / "mnist", base / "MNIST" / "raw"]


def load_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Load an MNIST split as uint8 arrays.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: data root (see :func:`clenv.data.data_root`).
        download: fetch missing or corrupt files first (md5-verified).

    Returns:
        ``(images, labels)``: images ``(N, 784)`` uint8 (row-major 28x28 pixels),
        labels ``(N,)`` int64 in 0..9.

    Raises:
        FileNotFoundError: files missing and ``download`` is False.
        CorruptFileError: a file fails its md5 or IDX header check.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directories = mnist_directories(root)
    images_path, labels_path = (
        require_file(
            FILES[f"{split}_{part}"], directories, "MNIST", download, HOW_TO_GET
        )
        for part in ("images", "labels")
    )
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise CorruptFileError(
            f"{images_path} and {labels_path} do not form an MNIST split: images "
            f"{images.shape}, labels {labels.shape}"
        )
    return images.reshape(len(images), -1), labels.astype(np.int64)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse a (gzipped) IDX file of unsigned bytes, checking its header and length.

    Raises:
        CorruptFileError: bad magic number, truncated data or trailing bytes.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise CorruptFileError(f"{path} is corrupt or truncated: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise CorruptFileError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise CorruptFileError(f"{path} is truncated inside its IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header_end + int(np.prod(shape))
    if len(raw) != expected:
        raise CorruptFileError(
            f"{path} is corrupt or truncated: its IDX header announces shape {shape} "
            f"({expected} bytes) but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, np.uint8, offset=header_end).reshape(shape)


def download_mnist(
    root: str | os.PathLike | None = None, mirror: str | None = None
) -> Path:
    """Download the four MNIST files into ``<root>/mnist`` (md5-verified, atomic).

    Files already there with the right md5 are kept; missing or corrupt ones are
    fetched.

    Args:
        root: data root.
        mirror: a base URL to use instead of the canonical hosts.

    Returns:
        The directory holding the files.
    """
    directory = mnist_directories(root)[0]
    for spec in FILES.values():
        require_file(spec, [directory], "MNIST", download=True, mirror=mirror)
    return directory
