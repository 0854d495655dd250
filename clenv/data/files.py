"""Where datasets live, how their files are checked, and how they are downloaded.

Every dataset file clenv reads is described by a :class:`FileSpec` (name, md5, download
URLs). Loaders call :func:`require_file`, which finds the file, verifies its md5 and,
with ``download=True``, fetches a missing or corrupt file first. A file that fails its
check is never parsed: the loader raises :class:`CorruptFileError` instead.

Downloads go to a temporary file in the target directory and are renamed into place
only after the md5 matched, so an interrupted or corrupted download never leaves a file
that looks complete. A download holds an exclusive lock on its directory
(:func:`directory_lock`), so processes fetching the same dataset at once (sweep trials)
take turns: the first downloads, the others find its verified file and use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

DATA_DIR_ENV = "CLENV_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/clenv")
_CHUNK = 1 << 20


class CorruptFileError(ValueError):
    """A dataset file exists but is truncated or corrupt (wrong md5, size or header)."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset.

    Args:
        filename: name of the file inside the dataset's directory.
        md5: its published md5 checksum (hex).
        urls: where to download it from, tried in order (canonical first).
    """

    filename: str
    md5: str
    urls: tuple[str, ...] = ()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The directory that holds clenv's datasets.

    Resolution order: the ``root`` argument, else the ``CLENV_DATA_DIR`` environment
    variable, else ``~/.cache/clenv``. Each dataset lives in a subdirectory
    (``mnist/``, ``cifar100/``, ``imagenet32/``).

    Args:
        root: an explicit directory, or None.

    Returns:
        The resolved directory (``~`` expanded; it need not exist).
    """
    if root is None:
        root = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(root).expanduser()


def md5sum(path: str | os.PathLike) -> str:
    """The md5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, spec: FileSpec) -> None:
    """Raise :class:`CorruptFileError` unless ``path`` has the md5 of ``spec``."""
    actual = md5sum(path)
    if actual != spec.md5:
        raise CorruptFileError(
            f"{path} is corrupt or truncated: md5 {actual}, expected {spec.md5} "
            f"({path.stat().st_size} bytes). Delete it and download it again "
            "(download=True, or `clenv download <dataset>`)."
        )


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` (created if missing).

    Processes that download or convert into the same dataset directory take turns
    (``flock`` on the directory itself, so no lock file is left behind; the lock is
    released when the holder exits, even by a kill). Where ``flock`` is unavailable
    (Windows) nothing is locked; the writes stay atomic.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def missing_files_error(
    dataset: str, directory: Path, filenames: Sequence[str], how_to_get: str
) -> FileNotFoundError:
    """The error for data that is not on disk: what, where, and how to fix it."""
    listed = "\n".join(f"  {name}" for name in filenames)
    return FileNotFoundError(
        f"{dataset} data not found. Expected these files in {directory}:\n{listed}\n"
        f"The data root is the data_dir/root argument, else ${DATA_DIR_ENV}, else "
        f"{DEFAULT_DATA_DIR}. {how_to_get}"
    )


def download_file(
    spec: FileSpec,
    directory: Path,
    urls: Sequence[str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download one file into ``directory``, verify its md5, then move it into place.

    Holds :func:`directory_lock` throughout; a file with the right md5 already there
    (put by a process that held the lock first) is returned without downloading.
    Each URL is tried in turn. The bytes go to a temporary file in ``directory`` that
    is renamed to ``spec.filename`` only after its md5 matched; on any failure the
    temporary file is removed, so no partial or corrupt file is ever left behind.

    Args:
        spec: the file to fetch.
        directory: where it goes (created if needed).
        urls: full URLs to try instead of ``spec.urls`` (e.g. a local mirror).
        progress: show a tqdm progress bar.
        timeout: socket timeout in seconds per attempt.

    Returns:
        The path of the verified file.

    Raises:
        CorruptFileError: every URL answered, but the data failed the md5 check.
        OSError: no URL could be downloaded (offline, HTTP error, ...).
    """
    urls = list(spec.urls if urls is None else urls)
    if not urls:
        raise ValueError(f"no download URL known for {spec.filename}")
    with directory_lock(directory):
        target = directory / spec.filename
        if target.is_file():
            try:
                check_md5(target, spec)
                return target
            except CorruptFileError:
                pass  # replaced below
        return _download_unlocked(spec, target, urls, progress, timeout)


def _download_unlocked(
    spec: FileSpec, target: Path, urls: list[str], progress: bool, timeout: float
) -> Path:
    directory = target.parent
    failures: list[str] = []
    corrupt = False
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", dir=directory)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, spec.filename, progress, timeout)
            check_md5(tmp, spec)
            os.replace(tmp, target)
            return target
        except CorruptFileError as error:
            corrupt = True
            failures.append(f"{url}: downloaded data failed the md5 check ({error})")
        except (urllib.error.URLError, OSError) as error:
            failures.append(f"{url}: {error}")
        finally:
            tmp.unlink(missing_ok=True)
    summary = "\n  ".join(failures)
    message = f"could not download {spec.filename} into {directory}:\n  {summary}"
    if corrupt:
        raise CorruptFileError(message + "\nNothing was written.")
    raise OSError(
        message + "\nCheck the network, or download the file by hand and put it there."
    )


def _fetch(url: str, out, name: str, progress: bool, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "clenv"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total else None,
            unit="B",
            unit_scale=True,
            desc=f"download {name}",
            disable=not progress,
        ) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def require_file(
    spec: FileSpec,
    directories: Sequence[Path],
    dataset: str,
    download: bool = False,
    how_to_get: str = "",
    mirror: str | None = None,
) -> Path:
    """Find a dataset file, md5-verified, downloading it first if asked.

    Args:
        spec: the file.
        directories: where to look, in order; a download goes to the first.
        dataset: dataset name for messages (e.g. ``"MNIST"``).
        download: fetch the file from ``spec.urls`` when it is missing or corrupt.
        how_to_get: the fix to suggest when the file is missing and not downloaded.
        mirror: a base URL to download from instead of ``spec.urls``.

    Returns:
        The path of a file whose md5 matches ``spec``.

    Raises:
        FileNotFoundError: the file is in none of ``directories`` and ``download`` is
            False.
        CorruptFileError: the file found fails its md5 check and ``download`` is False.
    """
    urls = None if mirror is None else [mirror.rstrip("/") + "/" + spec.filename]
    for directory in directories:
        path = directory / spec.filename
        if path.is_file():
            try:
                _check_md5_cached(path, spec)
                return path
            except CorruptFileError:
                if not download:
                    raise
                return download_file(spec, directory, urls)
    if download:
        return download_file(spec, directories[0], urls)
    raise missing_files_error(dataset, directories[0], [spec.filename], how_to_get)


_VERIFIED: dict[tuple[str, int, int, str], bool] = {}


def _check_md5_cached(path: Path, spec: FileSpec) -> None:
    # Hash each (file, size, mtime) once per process: vector envs load the same files
    # several times, and CIFAR-100's tarball takes a noticeable fraction of a second.
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, spec.md5)
    if key not in _VERIFIED:
        check_md5(path, spec)
        _VERIFIED[key] = True
