"""clenv.data: loaders on small files in the real formats, downloads from a local
HTTP server, integrity checks, transforms against closed forms, and the real MNIST."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CIFAR_TRAIN_PER_CLASS,
    REAL_DATA_DIR,
    cifar_batch,
    idx_bytes,
    register_md5,
    write_cifar100,
    write_mnist,
)

import clenv.data as data
from clenv.data import cifar100, mnist
from clenv.data.files import CorruptFileError, FileSpec, md5sum

# -- the data root -------------------------------------------------------------------


def test_data_root_argument_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CLENV_DATA_DIR", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root() == tmp_path / "env"
    monkeypatch.delenv("CLENV_DATA_DIR")
    assert data.data_root() == Path("~/.cache/clenv").expanduser()


# -- MNIST ---------------------------------------------------------------------------


@pytest.fixture
def mnist_root(tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path / "mnist", seed=3)
    register_md5(monkeypatch, tmp_path)
    return tmp_path, arrays


def test_load_mnist_reads_idx_gz(mnist_root):
    root, arrays = mnist_root
    for split in ("train", "test"):
        images, labels = data.load_mnist(split, root)
        expected = arrays[f"{split}_images"]
        assert images.dtype == np.uint8 and images.shape == (len(expected), 784)
        np.testing.assert_array_equal(images, expected.reshape(len(expected), -1))
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])
        assert labels.dtype == np.int64


def test_load_mnist_finds_torchvision_layout(mnist_root):
    root, _ = mnist_root
    (root / "MNIST").mkdir()
    (root / "mnist").rename(root / "MNIST" / "raw")
    assert data.load_mnist("test", root)[0].shape[1] == 784


def test_corrupt_file_is_reported_and_never_parsed(mnist_root, monkeypatch):
    root, _ = mnist_root
    path = root / "mnist" / mnist.FILES["train_labels"].filename
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    monkeypatch.setattr(mnist, "read_idx", lambda p: pytest.fail(f"parsed {p}"))
    with pytest.raises(CorruptFileError, match="corrupt or truncated: md5"):
        data.load_mnist("train", root)


def test_read_idx_rejects_bad_headers_and_lengths(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(data.read_idx(good), array)
    cases = {
        "short.gz": gzip.compress(idx_bytes(array)[:-1]),
        "long.gz": gzip.compress(idx_bytes(array) + b"\0"),
        "magic.gz": gzip.compress(b"\1\2\3\4" + idx_bytes(array)[4:]),
        "cut.gz": gzip.compress(idx_bytes(array))[:-6],  # gzip stream cut off
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(CorruptFileError):
            data.read_idx(tmp_path / name)


def test_missing_mnist_error_says_what_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.load_mnist("train", tmp_path)
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message
    assert "CLENV_DATA_DIR" in message and "download=True" in message


# -- downloads -----------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 serving ``tmp_path / "served"``."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_verifies_md5_and_writes_atomically(
    http_server, tmp_path, monkeypatch
):
    served, url = http_server
    arrays = write_mnist(served, seed=5)
    for key, spec in mnist.FILES.items():
        md5 = md5sum(served / spec.filename)
        urls = (url + spec.filename,)  # as if the canonical host were this server
        monkeypatch.setitem(mnist.FILES, key, FileSpec(spec.filename, md5, urls))
    root = tmp_path / "root"
    directory = data.download("mnist", root, mirror=url)
    assert directory == root / "mnist"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        s.filename for s in mnist.FILES.values()
    )
    images, _ = data.load_mnist("train", root)
    np.testing.assert_array_equal(images, arrays["train_images"].reshape(-1, 784))
    # A corrupt local file is replaced by a fresh download (load with download=True).
    labels = directory / mnist.FILES["test_labels"].filename
    labels.write_bytes(b"garbage")
    assert len(data.load_mnist("test", root, download=True)[1]) == len(
        arrays["test_labels"]
    )


def test_corrupted_download_is_rejected_and_leaves_nothing(
    http_server, tmp_path, monkeypatch
):
    served, url = http_server
    write_mnist(served, seed=6)
    spec = mnist.FILES["train_labels"]
    monkeypatch.setitem(
        mnist.FILES,
        "train_labels",
        FileSpec(spec.filename, md5sum(served / spec.filename)),
    )
    (served / spec.filename).write_bytes(b"this is not what was published")
    directory = tmp_path / "root" / "mnist"
    with pytest.raises(CorruptFileError, match="md5"):
        data.download_file(
            mnist.FILES["train_labels"], directory, [url + spec.filename]
        )
    assert list(directory.iterdir()) == []  # neither the file nor a temporary one


def test_download_cifar100_from_a_mirror(http_server, tmp_path, monkeypatch):
    served, url = http_server
    arrays = write_cifar100(served, seed=2)
    md5 = md5sum(served / cifar100.TARBALL.filename)
    monkeypatch.setattr(cifar100, "TARBALL", FileSpec(cifar100.TARBALL.filename, md5))
    tarball = data.download("cifar100", tmp_path / "root", mirror=url)
    assert tarball == tmp_path / "root" / "cifar100" / cifar100.TARBALL.filename
    np.testing.assert_array_equal(
        data.load_cifar100("test", tmp_path / "root")[1], arrays["test"][1]
    )


def test_unreachable_download_names_the_url(http_server, tmp_path):
    _, url = http_server
    spec = FileSpec("absent.gz", "0" * 32)
    with pytest.raises(OSError, match="absent.gz") as error:
        data.download_file(spec, tmp_path / "d", [url + "absent.gz"], progress=False)
    assert "404" in str(error.value)
    assert list((tmp_path / "d").iterdir()) == []


def test_download_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="mnist"):
        data.download("svhn", tmp_path)


# -- CIFAR-100 -----------------------------------------------------------------------


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    arrays = write_cifar100(tmp_path / "cifar100", seed=4)
    register_md5(monkeypatch, tmp_path)
    return tmp_path, arrays


def test_load_cifar100_from_the_tarball(cifar_root):
    root, arrays = cifar_root
    for split in ("train", "test"):
        images, labels = data.load_cifar100(split, root)
        assert images.shape == (len(labels), 3, 32, 32) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
    assert len(data.load_cifar100("train", root)[1]) == 100 * CIFAR_TRAIN_PER_CLASS


def test_load_cifar100_from_an_extracted_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.arange(100).repeat(2)
    images = rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8)
    folder = tmp_path / cifar100.FOLDER
    folder.mkdir()
    (folder / "train").write_bytes(cifar_batch(images, labels))
    monkeypatch.setitem(
        cifar100.MEMBERS, "train", FileSpec("train", md5sum(folder / "train"))
    )
    np.testing.assert_array_equal(data.load_cifar100("train", tmp_path)[0], images)
    (folder / "train").write_bytes(cifar_batch(images[:5], labels[:5]))
    with pytest.raises(CorruptFileError, match="md5"):
        data.load_cifar100("train", tmp_path)


def test_corrupt_cifar_tarball_is_rejected(cifar_root):
    root, _ = cifar_root
    tarball = root / "cifar100" / cifar100.TARBALL.filename
    tarball.write_bytes(tarball.read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match="corrupt or truncated"):
        data.load_cifar100("train", root)


def test_missing_cifar_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz") as error:
        data.load_cifar100("train", tmp_path)
    assert str(tmp_path / "cifar100") in str(error.value)


# -- ImageNet 32x32 ------------------------------------------------------------------


def test_load_imagenet_class_layouts(tmp_path):
    classes = tmp_path / "imagenet32" / "classes"
    classes.mkdir(parents=True)
    chw = np.random.default_rng(0).integers(0, 256, (9, 3, 32, 32), dtype=np.uint8)
    np.save(classes / "0.npy", chw)
    np.save(classes / "1.npy", chw.transpose(0, 2, 3, 1))
    np.save(classes / "2.npy", chw.reshape(9, -1))
    np.save(classes / "3.npy", chw / np.float32(255))
    for k in range(4):
        np.testing.assert_array_equal(data.load_imagenet32_class(k, tmp_path, 9), chw)
    with pytest.raises(CorruptFileError, match="at least 10"):
        data.load_imagenet32_class(0, tmp_path, 10)
    raw = (classes / "0.npy").read_bytes()
    (classes / "4.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="corrupt or truncated"):
        data.load_imagenet32_class(4, tmp_path, 1)
    np.save(classes / "5.npy", np.zeros((9, 3, 16, 16), np.uint8))
    with pytest.raises(CorruptFileError, match="shape"):
        data.load_imagenet32_class(5, tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="image-net.org"):
        data.check_imagenet32_classes(8, tmp_path)


def write_official_batches(directory: Path, per_class: int = 5, classes: int = 4):
    """Two pickled batches in the official format; labels 1..classes."""
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.tile(np.arange(1, classes + 1), per_class))
    images = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    half = len(labels) // 2
    for number, part in ((1, slice(0, half)), (2, slice(half, None))):
        batch = {"data": images[part], "labels": labels[part].tolist(), "mean": None}
        (directory / f"train_data_batch_{number}").write_bytes(pickle.dumps(batch))
    return images.reshape(-1, 3, 32, 32), labels


def expected_classes(images, labels, per_class, classes):
    return [images[labels == k + 1][:per_class] for k in range(classes)]


@pytest.mark.parametrize("as_zip", [False, True])
def test_convert_official_batches_to_per_class_files(tmp_path, as_zip, capsys):
    images, labels = write_official_batches(tmp_path / "raw")
    source = tmp_path / "raw"
    if as_zip:
        source = tmp_path / "imagenet32" / "Imagenet32_train.zip"
        source.parent.mkdir()
        with zipfile.ZipFile(source, "w") as archive:
            for path in (tmp_path / "raw").iterdir():
                archive.write(path, f"Imagenet32_train/{path.name}")
        source = None  # found in <root>/imagenet32 by default
    out = data.convert_imagenet32(
        source, tmp_path, images_per_class=4, num_classes=4, progress=True
    )
    assert "convert imagenet32" in capsys.readouterr().err  # the progress bar
    assert out == tmp_path / "imagenet32" / "classes"
    for k, expected in enumerate(expected_classes(images, labels, 4, 4)):
        np.testing.assert_array_equal(
            data.load_imagenet32_class(k, tmp_path, 4), expected
        )
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".classes-")]


def test_conversion_with_too_few_images_leaves_nothing(tmp_path):
    write_official_batches(tmp_path / "raw", per_class=3)
    with pytest.raises(ValueError, match="fewer than 4 images"):
        data.convert_imagenet32(tmp_path / "raw", tmp_path, 4, 4, progress=False)
    assert list((tmp_path / "imagenet32").iterdir()) == []


def test_download_imagenet32_converts_or_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs a login"):
        data.download("imagenet32", tmp_path)


# -- transforms ----------------------------------------------------------------------


def test_flip_crop_rotation_against_closed_forms():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(
        data.random_horizontal_flip(images, rng, p=1.0), images[..., ::-1]
    )
    np.testing.assert_array_equal(
        data.random_horizontal_flip(images, rng, p=0.0), images
    )
    np.testing.assert_array_equal(data.random_crop(images, rng, padding=0), images)
    # A crop reads the reflect-padded image at the offsets drawn from the generator.
    cropped = data.random_crop(images, np.random.default_rng(5), padding=2)
    draw = np.random.default_rng(5)
    top, left = draw.integers(0, 5, 6), draw.integers(0, 5, 6)
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)), "reflect")
    for i in range(6):
        np.testing.assert_array_equal(
            cropped[i], padded[i, :, top[i] : top[i] + 8, left[i] : left[i] + 8]
        )
    # 90 degrees counter-clockwise is np.rot90; 0 degrees is the identity.
    np.testing.assert_array_equal(
        data.rotate(images, np.full(6, 90.0)), np.rot90(images, 1, axes=(2, 3))
    )
    np.testing.assert_array_equal(data.rotate(images, np.zeros(6)), images)
    corner = data.rotate(images, np.full(6, 45.0), fill=(1, 2, 3))
    assert corner[:, :, 0, 0].tolist() == [[1, 2, 3]] * 6


def test_fused_augment_equals_flip_then_crop_then_rotation():
    images = np.random.default_rng(1).integers(0, 256, (16, 3, 12, 12), dtype=np.uint8)
    for seed in range(4):
        fused = data.augment(images, np.random.default_rng(seed), 3, 30.0, (1, 2, 3))
        rng = np.random.default_rng(seed)
        composed = data.random_rotation(
            data.random_crop(data.random_horizontal_flip(images, rng), rng, 3),
            rng,
            30.0,
            (1, 2, 3),
        )
        np.testing.assert_array_equal(fused, composed)
    no_op = data.augment(images, np.random.default_rng(0), 0, 0.0)
    flipped = np.random.default_rng(0).random(16) < 0.5
    np.testing.assert_array_equal(no_op[~flipped], images[~flipped])
    np.testing.assert_array_equal(no_op[flipped], images[flipped][..., ::-1])


def test_pixel_scaler_matches_formula_and_bounds():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16).repeat(3, axis=1)
    plain = data.PixelScaler()
    np.testing.assert_array_equal(plain(pixels), (pixels / 255.0).astype(np.float32))
    assert plain(np.uint8(255)) == 1.0
    scaler = data.PixelScaler(3, data.CIFAR100_MEAN, data.CIFAR100_STD)
    mean = np.array(data.CIFAR100_MEAN)[:, None, None]
    std = np.array(data.CIFAR100_STD)[:, None, None]
    np.testing.assert_allclose(
        scaler(pixels)[0], (pixels[0] / 255 - mean) / std, rtol=1e-6, atol=1e-6
    )
    low, high = scaler.bounds((3, 2, 2))
    np.testing.assert_allclose(low[:, 0, 0], -mean[:, 0, 0] / std[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        high[:, 0, 0], (1 - mean[:, 0, 0]) / std[:, 0, 0], rtol=1e-6
    )
    with pytest.raises(ValueError, match="one value per channel"):
        data.PixelScaler(3, (0.5,), (0.2,))
    # divisor=1 keeps the pixel values (Continual ImageNet as both papers feed it).
    raw = data.PixelScaler(divisor=1)
    np.testing.assert_array_equal(raw(pixels), pixels.astype(np.float32))
    assert raw.bounds((1,))[1][0] == 255
    with pytest.raises(ValueError, match="divisor must be positive"):
        data.PixelScaler(divisor=0)


# -- the real MNIST ------------------------------------------------------------------


@pytest.mark.skipif(
    not (REAL_DATA_DIR / "mnist").is_dir(), reason="real MNIST not in REAL_DATA_DIR"
)
def test_real_mnist_files_match_published_md5():
    for spec in mnist.FILES.values():
        assert md5sum(REAL_DATA_DIR / "mnist" / spec.filename) == spec.md5
    images, labels = data.load_mnist("train", REAL_DATA_DIR)
    assert images.shape == (60000, 784) and labels.shape == (60000,)
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert data.load_mnist("test", REAL_DATA_DIR)[0].shape == (10000, 784)


# -- concurrent access ----------------------------------------------------------------


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` in ten pieces over ~0.5 s and counts the requests."""

    payload = b""
    requests = None  # a multiprocessing-safe counter, set by the test

    def do_GET(self):  # noqa: N802 (http.server's naming)
        with self.requests.get_lock():
            self.requests.value += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        step = len(self.payload) // 10 + 1
        for start in range(0, len(self.payload), step):
            self.wfile.write(self.payload[start : start + step])
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


def _download_when_released(spec, directory, url, barrier, results):
    barrier.wait()
    path = data.download_file(spec, directory, [url], progress=False)
    results.put(md5sum(path))


def test_two_processes_downloading_at_once_end_with_one_verified_copy(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    payload = np.random.default_rng(0).bytes(200_000)
    _SlowHandler.payload = payload
    _SlowHandler.requests = context.Value("i", 0)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
        spec = FileSpec("blob.bin", hashlib.md5(payload).hexdigest())
        directory = tmp_path / "dataset"
        barrier, results = context.Barrier(2), context.Queue()
        workers = [
            context.Process(
                target=_download_when_released,
                args=(spec, directory, url, barrier, results),
            )
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert [worker.exitcode for worker in workers] == [0, 0]
    finally:
        server.shutdown()
        server.server_close()
    assert [results.get(timeout=5) for _ in range(2)] == [spec.md5] * 2
    # The second process waited for the lock, found the verified file, and used it.
    assert _SlowHandler.requests.value == 1
    assert [p.name for p in directory.iterdir()] == ["blob.bin"]  # no temporary file


def test_conversion_waits_for_another_and_reuses_its_result(tmp_path, capsys):
    from clenv.data.files import directory_lock

    write_official_batches(tmp_path / "raw")
    out_dir = tmp_path / "imagenet32"
    finished = threading.Event()

    def convert():
        data.convert_imagenet32(tmp_path / "raw", tmp_path, 4, 4, progress=True)
        finished.set()

    with directory_lock(out_dir):  # another process converting right now
        worker = threading.Thread(target=convert)
        worker.start()
        assert not finished.wait(0.5), "the conversion did not wait for the lock"
    worker.join(timeout=30)
    assert finished.is_set()
    capsys.readouterr()
    manifest = (out_dir / "classes" / "MANIFEST.json").stat().st_mtime_ns
    # A second conversion with the same parameters finds the complete one and keeps it.
    data.convert_imagenet32(tmp_path / "raw", tmp_path, 4, 4, progress=True)
    assert "convert imagenet32" not in capsys.readouterr().err
    assert (out_dir / "classes" / "MANIFEST.json").stat().st_mtime_ns == manifest
    # Other parameters convert again.
    data.convert_imagenet32(tmp_path / "raw", tmp_path, 3, 4, progress=False)
    assert data.load_imagenet32_class(0, tmp_path, 3).shape == (3, 3, 32, 32)
