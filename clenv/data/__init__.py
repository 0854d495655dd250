"""Dataset loaders for clenv's supervised streams (numpy only, no torchvision).

Files live under a data root: the ``root`` argument, else ``$CLENV_DATA_DIR``, else
``~/.cache/clenv`` (see docs/data.md)::

    <root>/mnist/train-images-idx3-ubyte.gz ...     MNIST, IDX gz (md5-verified)
    <root>/cifar100/cifar-100-python.tar.gz         CIFAR-100, python pickles (md5)
    <root>/imagenet32/classes/<k>.npy               ImageNet 32x32, LoP's layout

Example:
    >>> from clenv.data import load_mnist
    >>> images, labels = load_mnist("train")  # after `clenv download mnist`  # doctest: +SKIP
    >>> images.shape, images.dtype
    ((60000, 784), dtype('uint8'))
"""

from __future__ import annotations

import os
from pathlib import Path

from clenv.data.cifar100 import download_cifar100, load_cifar100
from clenv.data.files import (
    CorruptFileError,
    FileSpec,
    data_root,
    download_file,
    md5sum,
)
from clenv.data.imagenet32 import (
    check_imagenet32_classes,
    convert_imagenet32,
    imagenet32_dir,
    load_imagenet32_class,
)
from clenv.data.mnist import download_mnist, load_mnist, read_idx
from clenv.data.transforms import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    PixelScaler,
    augment,
    random_crop,
    random_horizontal_flip,
    random_rotation,
    rotate,
)

DATASETS = ("mnist", "cifar100", "imagenet32")

__all__ = [
    # files and roots
    "DATASETS",
    "CorruptFileError",
    "FileSpec",
    "data_root",
    "download",
    "download_file",
    "md5sum",
    # loaders
    "load_mnist",
    "read_idx",
    "load_cifar100",
    "load_imagenet32_class",
    "check_imagenet32_classes",
    "convert_imagenet32",
    # transforms
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "PixelScaler",
    "augment",
    "random_crop",
    "random_horizontal_flip",
    "random_rotation",
    "rotate",
]


def download(
    name: str, root: str | os.PathLike | None = None, mirror: str | None = None
) -> Path:
    """Fetch (or, for ImageNet 32x32, convert) a dataset into the data root.

    What ``clenv download NAME`` runs. Files already present with the right md5 are
    kept; missing or corrupt ones are downloaded to a temporary file, md5-verified and
    renamed into place.

    Args:
        name: ``"mnist"``, ``"cifar100"`` or ``"imagenet32"``. ImageNet 32x32 needs an
            image-net.org login, so it cannot be fetched: ``"imagenet32"`` converts
            ``<root>/imagenet32/Imagenet32_train.zip`` (or the extracted batches) to
            LoP's per-class layout, once.
        root: data root (argument, else ``$CLENV_DATA_DIR``, else ``~/.cache/clenv``).
        mirror: base URL to download from instead of the canonical hosts.

    Returns:
        Where the dataset now lives.
    """
    if name == "mnist":
        return download_mnist(root, mirror)
    if name == "cifar100":
        return download_cifar100(root, mirror)
    if name == "imagenet32":
        classes = imagenet32_dir(root) / "classes"
        try:
            check_imagenet32_classes(root=root)
            return classes
        except FileNotFoundError:
            return convert_imagenet32(root=root)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
