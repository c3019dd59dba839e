"""MNIST and Fashion-MNIST IDX files: told apart by their test split's class counts (a recompressed copy
still loads), and every missing file named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _write_idx(path: Path, array: np.ndarray, *, mtime: float = 0.0) -> None:
    import gzip

    import numpy as np

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _idx_folder(folder: Path, labels_test: np.ndarray) -> Path:
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (len(labels_test), 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels_test)
    return folder


def test_another_datasets_idx_files_are_refused(tmp_path: Path) -> None:
    import numpy as np

    from pemn.errors import DatasetError
    from pemn.training.data import clear_cache, load_dataset

    clear_cache()
    balanced = np.repeat(np.arange(10), 1000)  # Fashion-MNIST's test split: 1,000 of every class
    digits = np.concatenate([np.full(n, c) for c, n in enumerate((980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                                                  1009))])  # MNIST's test counts
    fashion = _idx_folder(tmp_path / "f", balanced)
    mnist = _idx_folder(tmp_path / "m", digits)
    assert load_dataset("fashion-mnist", fashion, split="test")[1].bincount().tolist() == [1000] * 10
    assert load_dataset("mnist", mnist, split="test")[1].shape == (10000,)
    with pytest.raises(DatasetError, match=r"not Fashion-MNIST's files .* 892..1,135 per class: MNIST's digits"):
        load_dataset("fashion-mnist", mnist, split="test")
    with pytest.raises(DatasetError, match=r"not MNIST's files .*exactly 1,000 images of every class"):
        load_dataset("mnist", fashion, split="test")
    # a subset (not an official file) is not judged
    small = _idx_folder(tmp_path / "s", digits[:500])
    assert load_dataset("fashion-mnist", small, split="test")[1].shape == (500,)


REAL_MNIST = Path("/work/shared/data/mnist")


@pytest.mark.skipif(not (REAL_MNIST / "t10k-labels-idx1-ubyte.gz").exists() and
                    not (REAL_MNIST / "t10k-labels-idx1-ubyte").exists(), reason="no MNIST files here")
def test_real_mnist_as_fashion_is_refused_but_a_recompressed_copy_loads(tmp_path: Path) -> None:
    import gzip

    from pemn.training.data import clear_cache, load_dataset

    clear_cache()
    copy = tmp_path / "copy"
    copy.mkdir()
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = REAL_MNIST / f"{base}.gz"
        data = gzip.decompress(src.read_bytes()) if src.exists() else (REAL_MNIST / base).read_bytes()
        with open(copy / f"{base}.gz", "wb") as raw, gzip.GzipFile(filename=base, mode="wb", fileobj=raw,
                                                                   mtime=1234567890, compresslevel=1) as f:
            f.write(data)  # another gzip header and compression level, the same content
        if src.exists():
            assert (copy / f"{base}.gz").read_bytes() != src.read_bytes()
    x, y = load_dataset("mnist", copy, split="test")
    want_x, want_y = load_dataset("mnist", REAL_MNIST, split="test")
    assert torch.equal(x, want_x) and torch.equal(y, want_y)
    from pemn.errors import DatasetError

    with pytest.raises(DatasetError, match=r"not Fashion-MNIST's files"):
        load_dataset("fashion-mnist", REAL_MNIST, split="test")


def test_missing_mnist_files_are_all_named(tmp_path: Path) -> None:
    from pemn.errors import DatasetError
    from pemn.training.data import clear_cache, load_dataset

    clear_cache()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as train_error:
        load_dataset("mnist", empty, split="train")
    message = str(train_error.value)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in message, message
    with pytest.raises(DatasetError) as test_error:  # evaluation needs (and names) the test files only
        load_dataset("mnist", empty, split="test")
    assert "t10k-images" in str(test_error.value) and "train-images" not in str(test_error.value)
