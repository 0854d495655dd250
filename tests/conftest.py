"""Data fixtures: small datasets written in the real file formats; agent imports.

The files hold random pixels, so their md5s differ from the published ones; the
fixtures register the fixtures' md5s in the loaders' tables (monkeypatch) for the
duration of a test, and point ``CLENV_DATA_DIR`` at them. Tests import the plain
functions (``from conftest import load_agent_module``).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import struct
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from clenv.data import cifar100, mnist
from clenv.data.files import FileSpec, md5sum

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

MNIST_TRAIN, MNIST_TEST = 120, 30
CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 6, 2
IMAGENET_CLASSES, IMAGENET_PER_CLASS = 6, 14


def idx_bytes(array: np.ndarray) -> bytes:
    """An array of uint8 in the IDX format (big-endian header, then the bytes)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(directory: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (MNIST_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(MNIST_TRAIN, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (MNIST_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, MNIST_TEST, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        (directory / mnist.FILES[key].filename).write_bytes(
            gzip.compress(idx_bytes(array))
        )
    return arrays


def cifar_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    batch = {
        "data": images.reshape(len(images), -1),
        "fine_labels": labels.tolist(),
        "coarse_labels": (labels // 5).tolist(),
        "filenames": [f"{i}.png" for i in range(len(labels))],
        "batch_label": "fixture",
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar100(directory: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (
        ("train", CIFAR_TRAIN_PER_CLASS),
        ("test", CIFAR_TEST_PER_CLASS),
    ):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        arrays[split] = (images, labels)
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / cifar100.TARBALL.filename, "w:gz") as archive:
        for split, (images, labels) in arrays.items():
            raw = cifar_batch(images, labels)
            info = tarfile.TarInfo(f"{cifar100.FOLDER}/{split}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return arrays


def write_imagenet_classes(directory: Path, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = directory / "imagenet32" / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    arrays = []
    for k in range(IMAGENET_CLASSES):
        images = rng.integers(0, 256, (IMAGENET_PER_CLASS, 3, 32, 32), dtype=np.uint8)
        np.save(classes / f"{k}.npy", images)
        arrays.append(images)
    return arrays


def register_md5(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make the loaders accept the fixture files' md5s."""
    for key, spec in mnist.FILES.items():
        path = root / "mnist" / spec.filename
        if path.is_file():
            monkeypatch.setitem(mnist.FILES, key, FileSpec(spec.filename, md5sum(path)))
    tarball = root / "cifar100" / cifar100.TARBALL.filename
    if tarball.is_file():
        monkeypatch.setattr(
            cifar100, "TARBALL", FileSpec(tarball.name, md5sum(tarball))
        )


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with small MNIST, CIFAR-100 and per-class ImageNet32 files."""
    root = tmp_path_factory.mktemp("clenv_data")
    write_mnist(root / "mnist")
    write_cifar100(root / "cifar100")
    write_imagenet_classes(root)
    return root


@pytest.fixture
def data_dir(fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``fake_data_dir`` as ``CLENV_DATA_DIR``, its md5s accepted by the loaders."""
    register_md5(monkeypatch, fake_data_dir)
    monkeypatch.setenv("CLENV_DATA_DIR", str(fake_data_dir))
    return fake_data_dir


def load_agent_module(path: Path) -> ModuleType:
    """Import an agent script (e.g. agents/supervised_l2er.py) as a module named
    after its file, without running its ``__main__`` block.

    The module is put in ``sys.modules`` first: its dataclasses look it up there.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no agent script at {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
