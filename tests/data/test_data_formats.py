"""Loaders on tiny fake files: CIFAR pickles, IDX, image folders, small JPEG archives, registry."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simprune.data.fashion_mnist as fm
from simprune.data import (
    ArrayDataset,
    CorruptImageError,
    DataNotFoundError,
    ImageFolderDataset,
    dataset_names,
    dataset_stats,
    load_dataset,
)
from simprune.data.cifar import decode_jpeg_archive, load_jpeg_archive_cached

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ helpers


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


def _tar_folder(folder: Path, tarball: Path) -> None:
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def _fake_cifar10(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=n).tolist()
        _pickle(d / name, {b"data": data, b"labels": labels, b"batch_label": name.encode()})
        batches[name] = (data, labels)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _pickle(d / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return batches


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _fake_jpeg_archive(path: Path, corrupt: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 3), ("test", 2)):
            for cls in ("zebra", "ant"):
                for i in range(n):
                    name = f"{split}/{cls}/{i:04d}.jpg"
                    data = (
                        b"not a jpeg"
                        if name == corrupt
                        else _jpeg_bytes(
                            np.full((32, 32, 3), 40 * i + (100 if cls == "zebra" else 0), np.uint8)
                        )
                    )
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------ CIFAR pickles


@pytest.mark.parametrize("as_tarball", [False, True])
def test_cifar10_python_format(tmp_path: Path, as_tarball: bool) -> None:
    batches = _fake_cifar10(tmp_path / "src")
    root = tmp_path / "src"
    if as_tarball:
        root = tmp_path / "tar"
        root.mkdir()
        _tar_folder(tmp_path / "src" / "cifar-10-batches-py", root / "cifar-10-python.tar.gz")
    train = load_dataset("cifar10", root, "train")
    test = load_dataset("cifar10", root, "test")
    assert isinstance(train, ArrayDataset) and len(train) == 20 and len(test) == 4
    assert train.classes[0] == "airplane" and train.classes[-1] == "truck"
    data, labels = batches["data_batch_2"]
    img, lab = train[4]  # first image of the second batch
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert np.array_equal(img[0].flatten().numpy(), data[0, :1024])  # the red plane comes first
    assert np.array_equal(img[2].flatten().numpy(), data[0, 2048:])
    assert lab == labels[0]
    assert test.labels.tolist() == batches["test_batch"][1]


def test_cifar10_extracted_folder_as_root(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", "test")
    assert len(ds) == 4


@pytest.mark.parametrize("as_tarball", [False, True])
def test_cifar100_python_format(tmp_path: Path, as_tarball: bool) -> None:
    d = tmp_path / "src" / "cifar-100-python"
    d.mkdir(parents=True)
    for split, n in (("train", 6), ("test", 3)):
        _pickle(
            d / split,
            {
                b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": list(range(n)),
                b"coarse_labels": [0] * n,
            },
        )
    _pickle(
        d / "meta",
        {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": [b"x"] * 20},
    )
    root = d.parent
    if as_tarball:
        root = tmp_path / "tar"
        root.mkdir()
        _tar_folder(d, root / "cifar-100-python.tar.gz")
    train = load_dataset("cifar100", root, "train")
    assert len(train) == 6 and len(train.classes) == 100 and train.labels.tolist() == list(range(6))
    assert len(load_dataset("cifar100", root, "test")) == 3


def test_cifar_pickle_missing_key_names_file(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((1, 3072))})
    with pytest.raises(ValueError, match="test_batch.*labels"):
        load_dataset("cifar10", tmp_path, "test")


# ------------------------------------------------------------------ small JPEG archives


def test_jpeg_archive_decode_order_and_cache(tmp_path: Path) -> None:
    archive = tmp_path / "mini.tar.gz"
    _fake_jpeg_archive(archive)
    decoded = decode_jpeg_archive(archive)
    images, labels, classes = decoded["train"]
    assert classes == ["ant", "zebra"] and images.shape == (6, 3, 32, 32)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(int(images[3].mean()) - 100) <= 3  # zebra/0000 after the ants
    cache = tmp_path / "cache"
    first = load_jpeg_archive_cached(archive, "test", cache, expected_sha256=None)
    [cache_file] = cache.glob("*.npz")
    again = load_jpeg_archive_cached(archive, "test", cache, expected_sha256=None)
    assert np.array_equal(first[0], again[0]) and first[2] == again[2]
    # A cache built from another archive (its stored hash differs) is rebuilt, not trusted.
    np.savez(
        cache_file,
        source_sha256=np.array("0" * 64),
        version=np.array(1),
        classes=np.array(["x"]),
        test_images=np.zeros((1, 3, 32, 32), np.uint8),
        test_labels=np.zeros(1, np.int64),
    )
    rebuilt = load_jpeg_archive_cached(archive, "test", cache, expected_sha256=None)
    assert np.array_equal(rebuilt[0], first[0])
    # A truncated cache file is rebuilt too.
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    assert np.array_equal(load_jpeg_archive_cached(archive, "test", cache, None)[0], first[0])


def test_jpeg_archive_corrupt_member_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    _fake_jpeg_archive(archive, corrupt="train/zebra/0001.jpg")
    with pytest.raises(CorruptImageError, match="train/zebra/0001.jpg"):
        decode_jpeg_archive(archive)


# ------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_idx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    imgs = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(5))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs[:2])  # uncompressed works too
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 0]))
    train = load_dataset("fashion_mnist", tmp_path, "train")
    assert train.images.shape == (5, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), imgs)
    assert train.labels.tolist() == [0, 1, 2, 3, 4] and train.classes[9] == "Ankle boot"
    assert load_dataset("fashion-mnist", tmp_path, "test").labels.tolist() == [9, 0]


def test_fashion_mnist_errors_and_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "debian"
    debian.mkdir()
    monkeypatch.setattr(fm, "DEBIAN_FASHION_MNIST_DIR", debian)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashion_mnist", empty, "test")
    _write_idx(debian / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    _write_idx(debian / "t10k-labels-idx1-ubyte.gz", np.ones(3, np.uint8))
    assert len(load_dataset("fashion_mnist", empty, "test")) == 3  # Debian fallback
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    _write_idx(broken / "t10k-labels-idx1-ubyte", np.ones(5, np.uint8))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashion_mnist", broken, "test")


@pytest.mark.skipif(not fm.DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist(tmp_path: Path) -> None:
    test = load_dataset("fashion_mnist", tmp_path, "test")  # empty root: the Debian files
    assert test.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = test.images.float().mean().item() / 255
    assert abs(mean - dataset_stats("fashion_mnist")[0][0]) < 0.01


# ------------------------------------------------------------------ image folders


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_imagefolder_resize_and_center_crop(tmp_path: Path) -> None:
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 25:35] = 200  # a bright band in the centre: columns 4..12 of the 16-px crop
    _png(tmp_path / "train" / "dog" / "a.png", wide)
    _png(tmp_path / "train" / "cat" / "b.png", np.full((30, 30), 77, np.uint8))  # greyscale
    _png(tmp_path / "train" / "cat" / "c.PNG", np.full((16, 16, 3), 9, np.uint8))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    ds = load_dataset("imagefolder", tmp_path, "train", load_size=16, cache_mb=0)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 3
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    grey, label = ds[0]
    assert grey.shape == (3, 16, 16) and grey.dtype == torch.uint8 and label == 0
    assert int(grey.min()) == int(grey.max()) == 77
    img, label = ds[2]
    assert label == 1 and img.shape == (3, 16, 16)
    assert img[:, :, 6:10].float().mean() > 190  # the crop is centred on the band
    assert img[:, :, :2].float().mean() < 20 and img[:, :, -2:].float().mean() < 20


def test_imagefolder_errors(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images"):
        load_dataset("imagefolder", tmp_path, "train")
    with pytest.raises(DataNotFoundError, match="'val'.*train"):
        load_dataset("imagefolder", tmp_path, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="class sub-folders"):
        load_dataset("imagefolder", tmp_path, "empty")
    bad = tmp_path / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    ds = load_dataset("imagefolder", tmp_path, "train", load_size=8, cache_mb=0)  # lazy
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        ds[0]
    with pytest.raises(CorruptImageError, match="broken.jpg"):  # cached: found when decoding once
        load_dataset("imagefolder", tmp_path, "train", tmp_path / "cache", load_size=8)


# ------------------------------------------------------------------ registry & ArrayDataset


def test_registry_errors_list_valid_values(tmp_path: Path) -> None:
    assert {"cifar10", "cifar100", "fashion_mnist", "imagefolder"} <= set(dataset_names())
    with pytest.raises(KeyError, match="cifar10.*fashion_mnist"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="'val'.*train, test"):
        load_dataset("cifar10", tmp_path, "val")
    with pytest.raises(ValueError, match="load_size"):
        load_dataset("imagefolder", tmp_path, "train", crop=3)
    with pytest.raises(KeyError, match="cifar10"):
        dataset_stats("svhn")
    assert dataset_stats("cifar10") == ((0.491, 0.482, 0.447), (0.245, 0.243, 0.261))
    assert dataset_stats("fashion_mnist") == ((0.286,), (0.353,))


def test_array_dataset_gather_and_subset() -> None:
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).reshape(5, 3, 2, 2)
    ds = ArrayDataset(images, torch.tensor([0, 1, 0, 1, 1]), ["a", "b"])
    x, y = ds.get_batch(torch.tensor([4, 0]))
    assert x.shape == (2, 3, 2, 2) and torch.equal(x[0], images[4]) and y.tolist() == [1, 0]
    assert y.dtype == torch.int64
    sub = ds.subset(torch.tensor([1, 3]))
    assert len(sub) == 2 and sub[1][1] == 1 and sub.classes == ["a", "b"]
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(images.float(), torch.zeros(5), ["a"])
    with pytest.raises(ValueError, match="N=5"):
        ArrayDataset(images, torch.zeros(4), ["a"])


def test_jpeg_archive_truncated_is_reported(tmp_path: Path) -> None:
    archive = tmp_path / "mini.tar.gz"
    _fake_jpeg_archive(archive)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(ValueError, match="damaged"):
        decode_jpeg_archive(cut)
