"""Downsampled ImageNet 32x32 in LoP's per-class layout, and the conversion to it.

**LoP's layout** (Dohare et al. 2024, ``lop/imagenet``): ``<root>/imagenet32/classes/
<k>.npy`` for k = 0..999, each holding the images of one class (LoP: 700 of them, the
first 600 for training, the last 100 held out). clenv writes ``(700, 3, 32, 32)`` uint8
arrays and also reads ``(N, 32, 32, 3)`` and ``(N, 3072)`` files.

**The official format** (Chrabaszcz et al. 2017, "A Downsampled Variant of ImageNet",
``Imagenet32_train.zip`` from image-net.org, which needs a login, so clenv cannot
download it): pickled batches ``train_data_batch_1`` .. ``train_data_batch_10``, each a
dict with ``'data'`` (N, 3072) uint8 in channel-first order and ``'labels'`` (1..1000).
:func:`convert_imagenet32` turns them, once, into the per-class layout by keeping the
first ``images_per_class`` images of each class in batch order.

The per-class files have no published checksums; each file's header, shape and size are
checked when it is read, so a truncated file is reported and never loaded.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clenv.data.files import (
    CorruptFileError,
    data_root,
    directory_lock,
    missing_files_error,
)

NUM_CLASSES = 1000
IMAGES_PER_CLASS = 700
IMAGE_SHAPE = (3, 32, 32)
MANIFEST = "MANIFEST.json"
_BATCH_NAME = re.compile(r"(?:^|/)train_data_batch_(\d+)$")
HOW_TO_GET = (
    "Either extract LoP's per-class files there (classes/0.npy ... classes/999.npy), "
    "or download Imagenet32_train.zip (downsampled 32x32 ImageNet, image-net.org, needs "
    "a login) into <root>/imagenet32/ and run `clenv download imagenet32 --data-dir "
    "<root>`, which converts it once (clenv.data.convert_imagenet32)."
)


def imagenet32_dir(root: str | os.PathLike | None = None) -> Path:
    """``<root>/imagenet32``."""
    return data_root(root) / "imagenet32"


def class_file(class_id: int, root: str | os.PathLike | None = None) -> Path:
    """Path of one class's ``.npy`` file in the per-class layout."""
    return imagenet32_dir(root) / "classes" / f"{int(class_id)}.npy"


def check_imagenet32_classes(
    num_classes: int = NUM_CLASSES, root: str | os.PathLike | None = None
) -> None:
    """Raise FileNotFoundError naming the missing class files, if any."""
    directory = imagenet32_dir(root) / "classes"
    missing = [
        f"{k}.npy" for k in range(num_classes) if not (directory / f"{k}.npy").is_file()
    ]
    if missing:
        shown = missing[:5] + (
            [f"... ({len(missing)} missing in all)"] * (len(missing) > 5)
        )
        raise missing_files_error(
            "ImageNet 32x32 (per-class)", directory, shown, HOW_TO_GET
        )


def load_imagenet32_class(
    class_id: int,
    root: str | os.PathLike | None = None,
    min_images: int = IMAGES_PER_CLASS,
) -> np.ndarray:
    """Load one class's images as ``(N, 3, 32, 32)`` uint8.

    Args:
        class_id: class index (0-based, the official label minus one).
        root: data root.
        min_images: fewer images than this is an error (LoP needs 700).

    Raises:
        FileNotFoundError: the file is missing.
        CorruptFileError: the file is truncated, not an ``.npy`` or of a wrong shape.
    """
    path = class_file(class_id, root)
    if not path.is_file():
        raise missing_files_error(
            "ImageNet 32x32 (per-class)", path.parent, [path.name], HOW_TO_GET
        )
    try:
        # mmap first: a truncated file fails here, before any data is used.
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CorruptFileError(f"{path} is corrupt or truncated: {error}") from error
    images = _to_chw(np.asarray(images), path)
    if len(images) < min_images:
        raise CorruptFileError(
            f"{path} holds {len(images)} images, at least {min_images} are needed"
        )
    return images


def _to_chw(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim == 2 and images.shape[1] == 3072:
        images = images.reshape(-1, *IMAGE_SHAPE)
    elif images.ndim == 4 and images.shape[1:] == (32, 32, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise CorruptFileError(
            f"{path} has shape {images.shape}; expected (N, 3, 32, 32), (N, 32, 32, 3) "
            "or (N, 3072)"
        )
    if images.dtype != np.uint8:
        # LoP-style float files: values in [0, 1] or [0, 255].
        scale = 255.0 if float(images.max(initial=0)) <= 1.0 else 1.0
        images = np.clip(np.rint(images * scale), 0, 255)
    return np.ascontiguousarray(images, dtype=np.uint8)


# -- conversion from the official pickled batches ------------------------------------
def _official_batches(source: Path) -> list[tuple[str, object]]:
    """(name, opener) for every train batch in a directory or in the zip."""
    if source.is_dir():
        files = [p for p in source.rglob("*") if _BATCH_NAME.search(p.as_posix())]
        found = [(p.as_posix(), p) for p in files]
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            found = [
                (name, (source, name))
                for name in archive.namelist()
                if _BATCH_NAME.search(name)
            ]
    else:
        raise FileNotFoundError(
            f"{source} is neither a directory nor a zip file holding the official "
            "train_data_batch_* files"
        )
    return sorted(found, key=lambda item: int(_BATCH_NAME.search(item[0]).group(1)))


def _read_batch(where: object) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(where, tuple):
        archive_path, name = where
        with zipfile.ZipFile(archive_path) as archive:
            raw = archive.read(name)
        label = f"{archive_path}:{name}"
    else:
        raw = Path(where).read_bytes()
        label = str(where)
    try:
        batch = pickle.loads(raw, encoding="latin1")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as error:  # any failure to unpickle means a bad batch file
        raise CorruptFileError(
            f"{label} is not an ImageNet32 batch: {error}"
        ) from error
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise CorruptFileError(
            f"{label}: data {data.shape} and labels {labels.shape} do not match"
        )
    return data, labels


def convert_imagenet32(
    source: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    images_per_class: int = IMAGES_PER_CLASS,
    num_classes: int = NUM_CLASSES,
    progress: bool = True,
) -> Path:
    """Convert the official pickled train batches to LoP's per-class layout, once.

    Keeps, for every class, the first ``images_per_class`` images in batch order
    (``train_data_batch_1`` first) and writes ``classes/<label - 1>.npy`` as
    ``(images_per_class, 3, 32, 32)`` uint8. The files are filled in a temporary
    directory that is renamed to ``classes/`` only when every class is complete, so an
    interrupted conversion leaves nothing half-written. Processes converting at once
    take turns (:func:`~clenv.data.files.directory_lock`); one that finds a complete
    conversion with the same ``images_per_class`` and ``num_classes`` returns it
    without converting again. Memory use stays around two batches (under 1 GB; the
    outputs are memory-mapped).

    Args:
        source: the extracted batches' directory or ``Imagenet32_train.zip``; default
            ``<root>/imagenet32/`` (searched for the zip, then for batch files).
        root: data root.
        images_per_class: images kept per class (LoP: 700 = 600 train + 100 test).
        num_classes: number of classes (1000; labels must lie in 1..num_classes).
        progress: show a tqdm progress bar over the batches.

    Returns:
        The ``classes/`` directory.

    Raises:
        FileNotFoundError: no batch files found.
        CorruptFileError: a batch does not unpickle, or labels are out of range.
        ValueError: some class has fewer than ``images_per_class`` images.
    """
    out_dir = imagenet32_dir(root)
    if source is None:
        zips = sorted(out_dir.glob("Imagenet32_train*.zip"))
        source = zips[0] if zips else out_dir
    source = Path(source)
    batches = _official_batches(source) if source.exists() else []
    if not batches:
        raise missing_files_error(
            "ImageNet 32x32 (official batches)",
            source,
            ["Imagenet32_train.zip, or train_data_batch_1 ... train_data_batch_10"],
            HOW_TO_GET,
        )
    with directory_lock(out_dir):
        final = out_dir / "classes"
        manifest = {"images_per_class": images_per_class, "num_classes": num_classes}
        try:
            if json.loads((final / MANIFEST).read_text()) == manifest:
                return final  # converted by another process while this one waited
        except (OSError, ValueError):
            pass
        return _convert(batches, out_dir, manifest, progress)


def _convert(
    batches: list[tuple[str, object]],
    out_dir: Path,
    manifest: dict[str, int],
    progress: bool,
) -> Path:
    images_per_class = manifest["images_per_class"]
    num_classes = manifest["num_classes"]
    tmp_dir = Path(tempfile.mkdtemp(prefix=".classes-", dir=out_dir))
    try:
        arrays = [
            np.lib.format.open_memmap(
                tmp_dir / f"{k}.npy", "w+", np.uint8, (images_per_class, *IMAGE_SHAPE)
            )
            for k in range(num_classes)
        ]
        counts = np.zeros(num_classes, np.int64)
        bar = tqdm(
            batches, desc="convert imagenet32", unit="batch", disable=not progress
        )
        for _, where in bar:
            data, labels = _read_batch(where)
            classes = labels - 1
            if classes.min(initial=0) < 0 or classes.max(initial=0) >= num_classes:
                raise CorruptFileError(
                    f"ImageNet32 labels must lie in 1..{num_classes}, found "
                    f"{labels.min()}..{labels.max()}"
                )
            images = data.reshape(-1, *IMAGE_SHAPE)
            # Group the batch by class once; a stable sort keeps the batch order
            # within each class, so "first images" means first in the files.
            by_class = np.argsort(classes, kind="stable")
            bounds = np.searchsorted(classes[by_class], np.arange(num_classes + 1))
            for k in np.flatnonzero(np.diff(bounds)):
                need = images_per_class - counts[k]
                if need > 0:
                    index = by_class[bounds[k] : bounds[k + 1]][:need]
                    arrays[k][counts[k] : counts[k] + len(index)] = images[index]
                    counts[k] += len(index)
            complete = int((counts == images_per_class).sum())
            bar.set_postfix(complete_classes=complete)
            if complete == num_classes:
                break  # the remaining batches would add nothing
        bar.close()
        short = np.flatnonzero(counts < images_per_class)
        if len(short):
            raise ValueError(
                f"{len(short)} classes have fewer than {images_per_class} images "
                f"(e.g. class {short[0]}: {counts[short[0]]}); lower images_per_class"
            )
        for array in arrays:
            array.flush()
        del arrays
        (tmp_dir / MANIFEST).write_text(json.dumps(manifest))
        final = out_dir / "classes"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_dir, final)
        return final
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
