"""Tests for pemn.training.data: real files (when present), hostile/corrupt inputs, downloads from a local server."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from pemn.training import data
from pemn.training.data import DatasetInfo, dataset_info, list_datasets, load_dataset
from pemn.training.errors import DatasetError

SHARED = Path(os.environ.get("PEMN_SHARED_DATA", "/work/shared/data"))
MNIST_FILES = data.CHECKSUMS["mnist"].keys()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    data.clear_cache()
    yield
    data.clear_cache()


def _channel_stats(images: torch.Tensor) -> list[tuple[float, float]]:
    """Exact per-channel mean/std in [0, 1] units, via a 256-bin histogram (no float copy of the data)."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    out = []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).long(), minlength=256).double()
        mean = (hist * values).sum() / hist.sum()
        std = ((hist * (values - mean) ** 2).sum() / hist.sum()).sqrt()
        out.append((mean.item(), std.item()))
    return out


# ---------------------------------------------------------------------------------------------- helpers


def _idx_bytes(array: np.ndarray, dims: tuple[int, ...] | None = None, magic: bytes | None = None) -> bytes:
    dims = array.shape if dims is None else dims
    magic = bytes([0, 0, 0x08, len(dims)]) if magic is None else magic
    return magic + b"".join(struct.pack(">I", d) for d in dims) + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            raw = _idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
            else:
                (folder / name).write_bytes(raw)


def _cifar_batch(n: int, seed: int, label_key: bytes = b"labels", classes: int = 10) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic",
        label_key: [int(v) for v in rng.integers(0, classes, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write_cifar10(folder: Path, n: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(n, i), protocol=2))


class _Hostile:
    """Unpickling this calls ``func(arg)``: the classic pickle code-execution payload."""

    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.func, (self.arg,)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving tmp_path/srv; yields (base_url, folder)."""
    root = tmp_path / "srv"
    root.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- basics


def test_list_and_info() -> None:
    assert list_datasets() == ["digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "tiny-imagenet",
                               "imagefolder", "text"]
    info = dataset_info("cifar10")
    assert isinstance(info, DatasetInfo)
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    assert len(info.mean) == len(info.std) == 3
    assert "cifar-10-batches-py/data_batch_1" in info.files
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("mnist").files == tuple(MNIST_FILES)
    assert dataset_info("fashion-mnist").in_channels == 1
    with pytest.raises(dataclass_frozen_error()):
        info.name = "x"  # type: ignore[misc]


def dataclass_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset("imagenet")
    for name in list_datasets():
        assert name in str(exc.value)
    with pytest.raises(DatasetError, match="cifar10"):
        dataset_info("svhn")
    assert issubclass(DatasetError, ValueError)


@pytest.mark.parametrize(("spelling", "name"), [
    ("CIFAR-10", "cifar10"), ("cifar_100", "cifar100"), ("Fashion MNIST", "fashion-mnist"),
    ("fashionmnist", "fashion-mnist"), (" tiny ", "tiny-imagenet"), ("tiny-imagenet-200", "tiny-imagenet"),
    ("Image_Folder", "imagefolder"), ("TEXT", "text"), ("mnist", "mnist"),
])
def test_one_name_normalisation(spelling: str, name: str) -> None:
    """Every spelling the CLI or the loaders ever accepted names its dataset, the same way for both: the CLI asks
    the catalog (the model files' --dataset check, artifacts._dataset_name, and the workload of a file measured on
    a named dataset, workloads.workload_of_file) instead of normalising on its own; a name that spells nothing is a
    usage error (ValueError), not missing data."""
    from pemn.errors import DatasetError
    from pemn.training import artifacts
    from pemn.training.workloads import CharLM, workload_of_file

    assert data.find_dataset(spelling) == data.canonical_name(spelling) == name
    if name not in ("imagefolder", "text"):  # those two read data_dir
        assert dataset_info(spelling).name == name
    artifacts._dataset_name(spelling)
    assert (workload_of_file(None, spelling) is CharLM) == (name == "text")
    assert data.find_dataset("svhn") is None
    assert workload_of_file(None, "svhn") is not CharLM and workload_of_file(None, None) is not CharLM
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'; valid names: digits, mnist") as raised:
        artifacts._dataset_name("svhn")
    assert not isinstance(raised.value, DatasetError)


def test_register_dataset_table() -> None:
    """A format registers an entry; its name and aliases then resolve, and a second claim on a spelling is
    refused (the catalog is left as it was)."""
    entry = data.DatasetEntry(
        "blobs", lambda data_dir, image_size: DatasetInfo("blobs", 2, 1, 4, (0.5,), (0.5,), (), "two blobs"),
        lambda data_dir, split, **_: (torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1])),
        aliases=("blob-set",))
    catalog = data.catalog
    before = (dict(catalog._REGISTRY), dict(catalog._SPELLINGS))
    try:
        data.register_dataset(entry)
        assert list_datasets()[-1] == "blobs" and data.find_dataset("Blob_Set") == "blobs"
        assert dataset_info("blobs").num_classes == 2
        x, y = load_dataset("blob set", split="test")
        assert x.shape == (3, 1, 4, 4) and y.tolist() == [0, 1, 1]
        with pytest.raises(DatasetError, match="split"):
            load_dataset("blobs", split="val")
        for clash in (entry, data.DatasetEntry("other", entry.describe, None, aliases=("CIFAR-10",))):
            with pytest.raises(ValueError, match="already registered"):
                data.register_dataset(clash)
        assert data.find_dataset("other") is None
    finally:
        catalog._REGISTRY.clear()
        catalog._REGISTRY.update(before[0])
        catalog._SPELLINGS.clear()
        catalog._SPELLINGS.update(before[1])
    assert "blobs" not in list_datasets()


def test_text_is_not_images() -> None:
    with pytest.raises(DatasetError, match=r"text: a character-level corpus, not images and labels"):
        load_dataset("text", split="validation")


def test_bad_split_and_image_size() -> None:
    with pytest.raises(DatasetError, match="split"):
        load_dataset("digits", split="validation")
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset("digits", image_size=16)


def test_digits() -> None:
    xtr, ytr = load_dataset("digits")
    xte, yte = load_dataset("digits", split="test")
    assert xtr.shape == (1438, 1, 8, 8) and xte.shape == (359, 1, 8, 8)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert ytr.shape == (1438,) and yte.shape == (359,)
    assert set(ytr.tolist()) == set(range(10)) and set(yte.tolist()) == set(range(10))
    assert int(xtr.max()) == 255 and int(xtr.min()) == 0
    # deterministic split: a second (uncached) load gives identical tensors
    data.clear_cache()
    xtr2, ytr2 = load_dataset("digits")
    assert torch.equal(xtr, xtr2) and torch.equal(ytr, ytr2)
    info = dataset_info("digits")
    (mean, std) = _channel_stats(xtr)[0]
    assert mean == pytest.approx(info.mean[0], abs=1e-3) and std == pytest.approx(info.std[0], abs=1e-3)
    # the split is the documented seeded permutation
    from sklearn.datasets import load_digits

    perm = np.random.default_rng(0).permutation(1797)
    assert torch.equal(ytr, torch.from_numpy(load_digits().target[perm[:1438]]))


def test_returned_tensors_are_copies() -> None:
    x, _ = load_dataset("digits", split="test")
    x.zero_()
    x2, _ = load_dataset("digits", split="test")
    assert int(x2.max()) == 255


# ---------------------------------------------------------------------------------------------- real files


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"real MNIST not present in {SHARED}/mnist")
def test_real_mnist() -> None:
    xtr, ytr = load_dataset("mnist", SHARED, split="train")
    xte, yte = load_dataset("mnist", SHARED / "mnist", split="test")
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert int(ytr.min()) == 0 and int(ytr.max()) == 9 and int(yte.max()) == 9
    assert int((ytr == 1).sum()) == 6742 and int((yte == 1).sum()) == 1135  # README
    mean, std = _channel_stats(xtr)[0]
    assert mean == pytest.approx(0.1307, abs=1e-3) and std == pytest.approx(0.3081, abs=1e-3)
    info = dataset_info("mnist")
    assert info.mean[0] == pytest.approx(mean, abs=1e-3)


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(), reason=f"real CIFAR-10 not present in {SHARED}")
def test_real_cifar10() -> None:
    xtr, ytr = load_dataset("cifar10", SHARED, split="train")
    xte, yte = load_dataset("cifar10", SHARED / "cifar-10-batches-py", split="test")
    assert xtr.shape == (50000, 3, 32, 32) and xte.shape == (10000, 3, 32, 32)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert torch.bincount(ytr).tolist() == [5000] * 10
    assert torch.bincount(yte).tolist() == [1000] * 10
    stats = _channel_stats(xtr)
    readme_mean, readme_std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)  # the official PEMN code's
    for (mean, std), m, s in zip(stats, readme_mean, readme_std):
        assert mean == pytest.approx(m, abs=1e-3) and std == pytest.approx(s, abs=1e-3)
    info = dataset_info("cifar10")
    assert info.mean == pytest.approx(readme_mean, abs=1e-4)


# ---------------------------------------------------------------------------------------------- MNIST / IDX


def test_mnist_layouts(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "a")  # gz, flat
    x, y = load_dataset("mnist", tmp_path / "a")
    assert x.shape == (12, 1, 28, 28) and y.shape == (12,) and y.dtype == torch.int64
    _write_mnist(tmp_path / "b" / "MNIST" / "raw", gz=False)  # torchvision layout, un-gzipped
    x2, _ = load_dataset("mnist", tmp_path / "b", split="test")
    assert x2.shape == (5, 1, 28, 28)
    _write_mnist(tmp_path / "c" / "mnist")
    x3, _ = load_dataset("mnist", tmp_path / "c")
    assert torch.equal(x3, x)  # same seed, gz vs. same content
    raw = gzip.decompress((tmp_path / "a" / "train-images-idx3-ubyte.gz").read_bytes())
    assert torch.equal(x[:, 0], torch.from_numpy(np.frombuffer(raw[16:], np.uint8).reshape(12, 28, 28).copy()))
    _write_mnist(tmp_path / "d" / "fashion-mnist")
    assert load_dataset("fashion-mnist", tmp_path / "d")[0].shape == (12, 1, 28, 28)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_lying_header(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path, gz=gz)
    images = np.zeros((12, 28, 28), np.uint8)
    raw = _idx_bytes(images, dims=(1_000_000_000, 28, 28))  # claims 1e9 images, holds 12
    name = "train-images-idx3-ubyte"
    if gz:
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(raw))
    else:
        (tmp_path / name).write_bytes(raw)
    with pytest.raises(DatasetError, match=name):
        load_dataset("mnist", tmp_path)


def test_idx_header_claims_slightly_more(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    raw = _idx_bytes(np.zeros((12, 28, 28), np.uint8), dims=(13, 28, 28))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        load_dataset("mnist", tmp_path)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"PK\x03\x04" + b"junk" * 10))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz.*magic"):
        load_dataset("mnist", tmp_path)


def test_idx_swapped_files(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    images = tmp_path / "train-images-idx3-ubyte.gz"
    tmp = labels.read_bytes()
    labels.write_bytes(images.read_bytes())
    images.write_bytes(tmp)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)


def test_idx_truncated_gz(tmp_path: Path) -> None:
    _write_mnist(tmp_path, n_train=200)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path)


def test_idx_count_mismatch_and_bad_labels(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(11, np.uint8))))
    with pytest.raises(DatasetError, match=r"12 images.*11 labels"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.full(12, 10, np.uint8))))
    with pytest.raises(DatasetError, match="out of range"):
        load_dataset("mnist", tmp_path)


def test_missing_dir_names_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset("mnist", tmp_path / "nowhere")
    msg = str(exc.value)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        assert f in msg
    assert str(tmp_path / "nowhere") in msg and "--download" in msg and data.DOWNLOAD_URLS["mnist"] in msg
    # every way of pointing at a folder is named: the CLI flag, the Python argument and the environment variable
    assert "--data-dir" in msg and "data_dir=" in msg and "PEMN_DATA_DIR" in msg
    # incomplete: only one file present
    _write_mnist(tmp_path / "part")
    (tmp_path / "part" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing: train-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", tmp_path / "part")
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    msg = str(exc.value)
    assert "cifar-10-batches-py/data_batch_1" in msg and "test_batch" in msg
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg


# ---------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_synthetic_py3_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    x, y = load_dataset("cifar10", tmp_path)
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    expected = _cifar_batch(4, 0)[b"data"]
    assert torch.equal(x[:4].reshape(4, -1), torch.from_numpy(expected))
    xt, _ = load_dataset("cifar10", folder, split="test")
    assert xt.shape == (4, 3, 32, 32)
    # protocol 4/5 pickles (numpy._core.numeric._frombuffer) are admitted too
    for proto in (4, 5):
        (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(3, 9), protocol=proto))
        assert load_dataset("cifar10", folder, split="test")[0].shape == (3, 3, 32, 32)


def test_cifar100_synthetic(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for i, name in enumerate(("train", "test")):
        batch = _cifar_batch(6, i, label_key=b"fine_labels", classes=100)
        batch[b"coarse_labels"] = [0] * 6
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    x, y = load_dataset("cifar100", tmp_path)
    assert x.shape == (6, 3, 32, 32) and int(y.max()) < 100


@pytest.mark.parametrize(
    ("func", "code", "refused"),
    [
        (os.system, "touch {marker}", "system"),
        (builtins.eval, "open({marker!r}, 'w').close()", "eval"),
        (builtins.exec, "open({marker!r}, 'w').close()", "exec"),
    ],
)
def test_hostile_cifar_pickle_refused(tmp_path: Path, func: object, code: str, refused: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    marker = tmp_path / "pwned"
    batch = _cifar_batch(4, 1)
    batch[b"data"] = _Hostile(func, code.format(marker=str(marker)))
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3" in str(exc.value) and refused in str(exc.value)
    assert not marker.exists()


def test_hostile_payload_is_real(tmp_path: Path) -> None:
    """Positive control: the same kind of payload does run under a plain pickle.load."""
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Hostile(builtins.eval, f"open({str(marker)!r}, 'w').close()")}, protocol=2)
    pickle.loads(blob)
    assert marker.exists()


def test_cifar_direct_ndarray_call_refused(tmp_path: Path) -> None:
    """A pickle calling numpy.ndarray(huge shape) directly must not allocate it."""
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    payload = (
        b"\x80\x02}q\x00(U\x04dataq\x01cnumpy\nndarray\nq\x02J\x00\x00\x00\x40J\x00\x00\x00\x40\x86q\x03"
        b"\x85Rq\x04U\x06labelsq\x05]q\x06u."
    )
    (folder / "data_batch_1").write_bytes(payload)
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b.update({b"data": np.zeros((4, 3072), np.float32)}), "uint8"),
        (lambda b: b.update({b"data": np.zeros((4, 1024), np.uint8)}), "3072"),
        (lambda b: b.update({b"labels": [0, 1, 2, 10]}), "out of range"),
        (lambda b: b.update({b"labels": [0, 1, 2]}), "4 images but 3 labels"),
        (lambda b: b.pop(b"data"), "lacks"),
    ],
)
def test_cifar_validation(tmp_path: Path, mutate: object, match: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    batch = _cifar_batch(4, 0)
    mutate(batch)  # type: ignore[operator]
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=match):
        load_dataset("cifar10", tmp_path, split="test")


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", tmp_path, split="test")


# ---------------------------------------------------------------------------------------------- downloads


def test_download_mnist_via_local_server(
    tmp_path: Path, http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, srv = http_server
    _write_mnist(srv)
    for name in MNIST_FILES:
        monkeypatch.setitem(data.CHECKSUMS["mnist"], name, _md5(srv / name))
    dest = tmp_path / "data"
    x, y = load_dataset("mnist", dest, download=True, base_url=base_url)
    assert x.shape == (12, 1, 28, 28) and y.shape == (12,)
    for name in MNIST_FILES:
        assert _md5(dest / "mnist" / name) == _md5(srv / name)
    assert sorted(p.name for p in (dest / "mnist").iterdir()) == sorted(MNIST_FILES)  # no leftovers
    # now present: no server needed
    xt, _ = load_dataset("mnist", dest, split="test", download=True, base_url="http://127.0.0.1:9/")
    assert xt.shape == (5, 1, 28, 28)


def test_download_bad_checksum_refused(
    tmp_path: Path, http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, srv = http_server
    _write_mnist(srv)
    for name in MNIST_FILES:
        monkeypatch.setitem(data.CHECKSUMS["mnist"], name, _md5(srv / name))
    monkeypatch.setitem(data.CHECKSUMS["mnist"], "train-labels-idx1-ubyte.gz", "0" * 32)
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz.*(?i:checksum)"):
        load_dataset("mnist", dest, download=True, base_url=base_url)
    names = [p.name for p in (dest / "mnist").iterdir()]
    assert "train-labels-idx1-ubyte.gz" not in names
    assert not [n for n in names if n.endswith(".part")]


def test_download_real_checksums_refuse_synthetic(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    base_url, srv = http_server
    _write_mnist(srv)
    with pytest.raises(DatasetError, match="checksum"):
        load_dataset("mnist", tmp_path, download=True, base_url=base_url)


def test_download_http_error(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    base_url, _ = http_server  # serves nothing: 404
    with pytest.raises(DatasetError, match=r"download of .*failed"):
        load_dataset("fashion-mnist", tmp_path, download=True, base_url=base_url)


def _make_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_download_cifar10_tar(tmp_path: Path, http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, srv = http_server
    staged = tmp_path / "staged"
    _write_cifar10(staged)
    _make_tar(
        srv / "cifar-10-python.tar.gz",
        {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in sorted(staged.iterdir())},
    )
    monkeypatch.setitem(data.CHECKSUMS["cifar10"], "cifar-10-python.tar.gz", _md5(srv / "cifar-10-python.tar.gz"))
    dest = tmp_path / "data"
    x, _ = load_dataset("cifar10", dest, download=True, base_url=base_url)
    assert x.shape == (20, 3, 32, 32)
    assert (dest / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # temp dirs cleaned up


@pytest.mark.parametrize("evil", ["../escaped", "/tmp/pemn-absolute-escape", "cifar-10-batches-py/../../escaped"])
def test_download_tar_traversal_refused(
    tmp_path: Path, http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, evil: str
) -> None:
    base_url, srv = http_server
    _make_tar(srv / "cifar-10-python.tar.gz", {"cifar-10-batches-py/test_batch": b"x", evil: b"owned"})
    monkeypatch.setitem(data.CHECKSUMS["cifar10"], "cifar-10-python.tar.gz", _md5(srv / "cifar-10-python.tar.gz"))
    dest = tmp_path / "a" / "data"
    dest.mkdir(parents=True)
    with pytest.raises(DatasetError, match="unsafe member"):
        load_dataset("cifar10", dest, download=True, base_url=base_url)
    assert not (tmp_path / "a" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/pemn-absolute-escape").exists()


def test_download_tar_symlink_refused(
    tmp_path: Path, http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, srv = http_server
    with tarfile.open(srv / "cifar-10-python.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    monkeypatch.setitem(data.CHECKSUMS["cifar10"], "cifar-10-python.tar.gz", _md5(srv / "cifar-10-python.tar.gz"))
    with pytest.raises(DatasetError, match="links"):
        load_dataset("cifar10", tmp_path, download=True, base_url=base_url)


# ---------------------------------------------------------------------------------------------- imagefolder


def _has_pillow() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_pillow(), reason="Pillow is not installed (pip install pillow)")
def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    info = dataset_info("imagefolder", tmp_path, image_size=16)
    assert (info.num_classes, info.in_channels, info.image_size) == (2, 3, 16)
    x, y = load_dataset("imagefolder", tmp_path, image_size=16)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 0, 1, 1, 1]
    xt, yt = load_dataset("imagefolder", tmp_path, split="test")
    assert xt.shape == (4, 3, 64, 64) and yt.tolist() == [0, 0, 1, 1]
    # a truncated PNG is named in the error
    bad = tmp_path / "train" / "dog" / "9.png"
    blob = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(blob, format="PNG")
    bad.write_bytes(blob.getvalue()[: len(blob.getvalue()) // 2])
    with pytest.raises(DatasetError, match=r"9\.png"):
        load_dataset("imagefolder", tmp_path)


@pytest.mark.skipif(_has_pillow(), reason="Pillow is installed")
def test_imagefolder_without_pillow(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DatasetError, match="pip install pillow"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train"):
        load_dataset("imagefolder", tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "0.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="val"):
        load_dataset("imagefolder", tmp_path, split="test")


@pytest.mark.slow  # a fresh interpreter
def test_dataset_error_needs_no_import_of_the_application() -> None:
    """pemn.DatasetError is defined in the core beside the other errors (no lazy import from the core into the
    application: the import circle errors <-> training.errors is gone); the application re-exports the same class,
    and importing pemn still loads nothing of the training stack."""
    code = ("import sys, pemn, pemn.errors\n"
            "e = pemn.DatasetError\n"
            "assert not [m for m in sys.modules if m.startswith('pemn.training')]\n"
            "assert e is pemn.errors.DatasetError and e.__module__ == 'pemn.errors'\n"
            "assert issubclass(e, pemn.PEMNError) and issubclass(e, ValueError)\n"
            "import pemn.training.errors\n"
            "assert pemn.training.errors.DatasetError is e\n"
            # pemn's lazy public names (pemn --version stays torch-free) all come from the core
            "assert not [m for m in pemn._EXPORTS.values() if m.startswith('pemn.training')], pemn._EXPORTS\n"
            "assert not hasattr(pemn.errors, '__getattr__')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_dataset_descriptions_need_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pemn datasets`: one row per catalog entry, in its order; a dataset read from a folder you give (text,
    imagefolder) is described by its entry's summary where the default folder does not hold it, and by its data
    where it does."""
    monkeypatch.setenv("PEMN_DATA_DIR", str(tmp_path))
    rows = data.dataset_descriptions()
    assert [name for name, _ in rows] == list_datasets()
    described = dict(rows)
    assert described["text"].startswith("character-level text: DIR/input.txt (UTF-8)")
    assert described["imagefolder"].startswith("class-per-folder RGB images: DIR/train/<class>/")
    assert described["mnist"] == dataset_info("mnist").description
    (tmp_path / "input.txt").write_text("abcab" * 20)
    assert dict(data.dataset_descriptions())["text"] == dataset_info("text", tmp_path).description
