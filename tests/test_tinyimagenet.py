"""Tiny-ImageNet in its official tiny-imagenet-200 layout, on small layouts the tests write (Pillow needed)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import test_data
from pemn.errors import DatasetError
from pemn.training import data
from pemn.training.data import dataset_info, load_dataset

Image = pytest.importorskip("PIL.Image")
http_server = test_data.http_server  # the local HTTP server fixture
_md5 = test_data._md5

WNIDS = ["n09999999", "n01443537", "n02085620"]  # deliberately unsorted in wnids.txt


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    data.clear_cache()
    yield
    data.clear_cache()


def _jpeg(path: Path, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    shape = (64, 64, 3) if mode == "RGB" else (64, 64)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path, format="JPEG")


def write_tiny(folder: Path, n_train: int = 3, val_per_class: int = 2) -> dict[str, list[tuple[str, str]]]:
    """A tiny-imagenet-200 folder with the official layout; returns {split: [(file, wnid)]} in loader order."""
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "test" / "images").mkdir(parents=True)  # unlabelled in the official set; ignored
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tsomething\n" for w in WNIDS))
    train, val = [], []
    seed = 0
    for wnid in sorted(WNIDS):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(n_train):
            seed += 1
            _jpeg(images / f"{wnid}_{i}.JPEG", seed, mode="L" if i == 0 else "RGB")  # some are grayscale
            train.append((str(images / f"{wnid}_{i}.JPEG"), wnid))
    rows = []
    for i in range(val_per_class * len(WNIDS)):
        wnid = WNIDS[i % len(WNIDS)]
        seed += 1
        _jpeg(folder / "val" / "images" / f"val_{i}.JPEG", seed)
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
        val.append((str(folder / "val" / "images" / f"val_{i}.JPEG"), wnid))
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return {"train": train, "test": val}


def _decoded(path: str) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy())


def test_info_and_aliases() -> None:
    info = dataset_info("tiny-imagenet")
    assert (info.num_classes, info.in_channels, info.image_size) == (200, 3, 64)
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)  # the official code's
    assert "tiny-imagenet-200/val/val_annotations.txt" in info.files
    for alias in ("tinyimagenet", "tiny_imagenet", "Tiny-ImageNet-200", "tiny"):
        assert dataset_info(alias) is info
    assert "tiny-imagenet" in data.list_datasets()
    assert data.CHECKSUMS["tiny-imagenet"] == {"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"}
    with pytest.raises(DatasetError, match="64x64"):
        dataset_info("tiny-imagenet", image_size=32)


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_official_layout_loads(tmp_path: Path, point_at: str) -> None:
    expected = write_tiny(tmp_path / "tiny-imagenet-200")
    root = tmp_path if point_at == "parent" else tmp_path / "tiny-imagenet-200"
    classes = sorted(WNIDS)
    for split, files in expected.items():
        x, y = load_dataset("tiny-imagenet", root, split=split)
        assert x.dtype == torch.uint8 and x.shape == (len(files), 3, 64, 64) and y.dtype == torch.int64
        assert y.tolist() == [classes.index(w) for _, w in files]
        for i, (path, _) in enumerate(files):
            assert torch.equal(x[i], _decoded(path)), path
    gray = load_dataset("tiny-imagenet", root)[0][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # grayscale JPEG -> RGB


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: (f / "wnids.txt").unlink(), r"not found.*wnids\.txt.*--download"),
        (lambda f: (f / "wnids.txt").write_text("n1\nn1\n"), "distinct"),
        (lambda f: (f / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n"),
         r"val_annotations\.txt:1:.*wnid"),
        (lambda f: (f / "val" / "val_annotations.txt").write_text("../escape.JPEG\tn01443537\n"),
         r"val_annotations\.txt:1"),
        (lambda f: (f / "val" / "val_annotations.txt").write_text("missing.JPEG\tn01443537\n"), "does not exist"),
        (lambda f: (f / "val" / "images" / "val_0.JPEG").write_bytes(b"not a jpeg"), "unreadable"),
    ],
)
def test_bad_layouts_are_clear_errors(tmp_path: Path, mutate, match: str) -> None:
    folder = tmp_path / "tiny-imagenet-200"
    write_tiny(folder)
    mutate(folder)
    with pytest.raises(DatasetError, match=match):
        load_dataset("tiny-imagenet", tmp_path, split="test")


def test_missing_class_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-imagenet-200"
    write_tiny(folder)
    for f in (folder / "train" / "n02085620" / "images").iterdir():
        f.unlink()
    (folder / "train" / "n02085620" / "images").rmdir()
    with pytest.raises(DatasetError, match=r"n02085620/images not found"):
        load_dataset("tiny-imagenet", tmp_path)


# ---------------------------------------------------------------------------------------------- download


def _zip_folder(src: Path, dest: Path, extra: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent).as_posix())
        for name, blob in (extra or {}).items():
            zf.writestr(name, blob)


def test_download_zip_with_checksum(tmp_path: Path, http_server: tuple[str, Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, srv = http_server
    expected = write_tiny(tmp_path / "staged" / "tiny-imagenet-200")
    _zip_folder(tmp_path / "staged" / "tiny-imagenet-200", srv / "tiny-imagenet-200.zip")
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="checksum"):  # the real MD5 refuses the synthetic zip
        load_dataset("tiny-imagenet", dest, download=True, base_url=base_url)
    assert not (dest / "tiny-imagenet-200").exists()
    monkeypatch.setitem(data.CHECKSUMS["tiny-imagenet"], "tiny-imagenet-200.zip", _md5(srv / "tiny-imagenet-200.zip"))
    x, _ = load_dataset("tiny-imagenet", dest, split="test", download=True, base_url=base_url)
    assert x.shape == (len(expected["test"]), 3, 64, 64)
    assert (dest / "tiny-imagenet-200" / "train" / "n01443537" / "images" / "n01443537_0.JPEG").is_file()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # temp dirs cleaned up
    # present now: no server needed
    xt, _ = load_dataset("tiny-imagenet", dest, download=True, base_url="http://127.0.0.1:9/")
    assert xt.shape == (len(expected["train"]), 3, 64, 64)


@pytest.mark.parametrize("evil", ["../escaped", "/tmp/pemn-zip-absolute-escape", "tiny-imagenet-200/../../escaped"])
def test_download_zip_traversal_refused(tmp_path: Path, http_server: tuple[str, Path],
                                        monkeypatch: pytest.MonkeyPatch, evil: str) -> None:
    base_url, srv = http_server
    write_tiny(tmp_path / "staged" / "tiny-imagenet-200", n_train=1, val_per_class=1)
    _zip_folder(tmp_path / "staged" / "tiny-imagenet-200", srv / "tiny-imagenet-200.zip", {evil: b"owned"})
    monkeypatch.setitem(data.CHECKSUMS["tiny-imagenet"], "tiny-imagenet-200.zip", _md5(srv / "tiny-imagenet-200.zip"))
    dest = tmp_path / "a" / "data"
    dest.mkdir(parents=True)
    with pytest.raises(DatasetError, match="unsafe member"):
        load_dataset("tiny-imagenet", dest, download=True, base_url=base_url)
    assert not (tmp_path / "a" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/pemn-zip-absolute-escape").exists()
    assert not (dest / "tiny-imagenet-200").exists()


def test_download_zip_symlink_and_corrupt_refused(tmp_path: Path, http_server: tuple[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, srv = http_server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("tiny-imagenet-200/wnids.txt")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    (srv / "tiny-imagenet-200.zip").write_bytes(buf.getvalue())
    monkeypatch.setitem(data.CHECKSUMS["tiny-imagenet"], "tiny-imagenet-200.zip", _md5(srv / "tiny-imagenet-200.zip"))
    with pytest.raises(DatasetError, match="links"):
        load_dataset("tiny-imagenet", tmp_path / "d1", download=True, base_url=base_url)
    (srv / "tiny-imagenet-200.zip").write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.setitem(data.CHECKSUMS["tiny-imagenet"], "tiny-imagenet-200.zip", _md5(srv / "tiny-imagenet-200.zip"))
    with pytest.raises(DatasetError, match="corrupt archive"):
        load_dataset("tiny-imagenet", tmp_path / "d2", download=True, base_url=base_url)


# ---------------------------------------------------------------------------------------------- training


def test_trains_from_the_official_layout(tmp_path: Path) -> None:
    """`pemn train` on the layout with the paper's Tiny-ImageNet augmentation (pad-8 crop + flip)."""
    from pemn.training.cli import main

    write_tiny(tmp_path / "data" / "tiny-imagenet-200", n_train=4, val_per_class=2)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "tiny-imagenet", "--data-dir", str(tmp_path / "data"), "--model",
                 "convmixer-16-1", "--strategy", "rp", "--augment", "flip-crop8", "--epochs", "1", "--batch-size", "6",
                 "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    assert (out / "model.pemn").is_file()
    assert main(["eval", str(out / "model.pemn"), "--data-dir", str(tmp_path / "data")]) == 0  # rebuilt from app
