"""Image folders: one class list for every split, empty class folders, corrupt files, the decode
size and the cache of small folders."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simprune.data.folder as folder
from simprune.data import CorruptImageError, DataWarning, load_dataset
from simprune.data.base import cache_limit_mb
from simprune.data.folder import default_load_size, load_image

COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 220), "owl": (200, 200, 40)}


def _jpegs(d: Path, colour: tuple[int, int, int], n: int, seed: int, size=(40, 48)) -> None:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 20, (*size, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(d / f"{i:03d}.jpg", quality=90)


def make_folder(root: Path, train=("cat", "dog", "fox"), test=("cat", "dog", "fox"), empty=("bird",),
                n_train: int = 6, n_test: int = 3) -> Path:
    """``root/train/{empty..., train...}`` and ``root/test/{test...}``: noisy JPEGs of one colour
    per class."""
    for c in empty:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(train):
        _jpegs(root / "train" / c, COLOURS[c], n_train, seed=i)
    for i, c in enumerate(test):
        _jpegs(root / "test" / c, COLOURS[c], n_test, seed=100 + i)
    return root


def load(root: Path, split: str, cache: Path | None = None, **kw):
    kw.setdefault("cache_mb", 0 if cache is None else 64)
    return load_dataset("imagefolder", root, split, cache, **kw)


# ------------------------------------------------------------------ one class list


def test_an_empty_class_folder_does_not_shift_the_labels(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    with pytest.warns(DataWarning, match=r"1 of 4 class folders .*train.* hold no images .*: bird"):
        train = load(root, "train", load_size=8)
    test = load(root, "test", load_size=8)
    assert train.classes == test.classes == ["cat", "dog", "fox"]
    # a test image has the label of its class in the training split: the mean colour tells
    for ds in (train, test):
        for i in range(len(ds)):
            img, label = ds[i]
            assert int(img.float().mean(dim=(1, 2)).argmax()) == label  # cat red, dog green, fox blue
    assert test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_a_test_class_the_training_split_lacks_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path, test=("cat", "dog", "fox", "owl"))
    with pytest.raises(ValueError, match=r"class folder\(s\) owl of .*test.* are not classes of the "
                                         r"training split .*train.*valid classes: cat, dog, fox"):
        load(root, "test", load_size=8)
    # its training folder exists but is empty: the same error
    root2 = make_folder(tmp_path / "b", test=("cat",), train=("cat", "dog"), empty=("bird",))
    _jpegs(root2 / "test" / "bird", COLOURS["owl"], 2, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(ValueError, match="bird"):
            load(root2, "test", load_size=8)


def test_a_split_may_lack_training_classes_and_without_train_uses_its_own(tmp_path: Path) -> None:
    root = make_folder(tmp_path, test=("dog",), empty=())
    test = load(root, "test", load_size=8)
    assert test.classes == ["cat", "dog", "fox"] and set(test.labels.tolist()) == {1}
    only = make_folder(tmp_path / "only", train=(), test=("fox", "owl"), empty=())
    assert not (only / "train").exists()
    assert load(only, "test", load_size=8).classes == ["fox", "owl"]


# ------------------------------------------------------------------ corrupt files


def test_a_corrupt_image_names_the_file_and_the_fix(tmp_path: Path) -> None:
    root = make_folder(tmp_path, empty=())
    bad = root / "train" / "dog" / "zz_truncated.jpg"
    good = (root / "train" / "dog" / "000.jpg").read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    (root / "train" / "cat" / "zero.png").write_bytes(b"")
    for path in (bad, root / "train" / "cat" / "zero.png"):
        with pytest.raises(CorruptImageError) as err:
            load_image(path, 16)
        msg = str(err.value)
        assert str(path) in msg and "Replace it" in msg and "delete it" in msg
    with pytest.raises(CorruptImageError, match="zero.png.*Replace it"):  # while caching
        load(root, "train", tmp_path / "cache", load_size=8)


# ------------------------------------------------------------------ decode size


def test_default_load_size_follows_the_crop_size() -> None:
    assert default_load_size(224) == 256  # ImageNet recipes decode as before
    assert default_load_size(32) == 37 and default_load_size(64) == 74


def test_large_jpegs_decode_at_a_reduced_scale_to_the_same_picture(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((100, 100, 1))).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)  # 800x600, blocks of one colour
    small = load_image(tmp_path / "big.jpg", 30)
    assert small.shape == (3, 30, 30) and small.dtype == torch.uint8
    with Image.open(tmp_path / "big.jpg") as img:  # full decode, then the same resize and crop
        full = img.convert("RGB").resize((40, 30), Image.Resampling.BICUBIC).crop((5, 0, 35, 30))
    ref = torch.from_numpy(np.array(full)).permute(2, 0, 1).float()
    assert (small.float() - ref).abs().mean() < 6


# ------------------------------------------------------------------ cache


def test_small_folders_are_decoded_once_and_cached(tmp_path: Path, monkeypatch) -> None:
    root = make_folder(tmp_path / "data", empty=())
    cache = tmp_path / "cache"
    lazy = load(root, "train", load_size=12)
    assert lazy.images is None
    first = load(root, "train", cache, load_size=12)
    [npy] = cache.glob("imagefolder-train-12px-*.npy")
    assert first.images is not None and first.images.shape == (18, 3, 12, 12)
    idx = torch.tensor([17, 0, 5])
    assert torch.equal(first.get_batch(idx)[0], lazy.get_batch(idx)[0])
    assert torch.equal(first.get_batch(idx)[1], lazy.labels[idx])
    assert torch.equal(first[3][0], lazy[3][0])
    assert not list(cache.glob(".*.tmp"))  # written atomically

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder, "load_image", no_decoding)
    again = load(root, "train", cache, load_size=12)  # read back (memory-mapped), not decoded
    assert isinstance(again.images, np.memmap) and torch.equal(again.get_batch(idx)[0],
                                                              first.get_batch(idx)[0])
    monkeypatch.undo()
    # another decode size is another file
    load(root, "train", cache, load_size=10)
    assert len(list(cache.glob("imagefolder-train-10px-*.npy"))) == 1
    # an edited folder is decoded again, and its older cache is removed
    new = root / "train" / "cat" / "new.jpg"
    new.write_bytes((root / "train" / "dog" / "000.jpg").read_bytes())
    os.utime(new, (time.time() + 5, time.time() + 5))
    edited = load(root, "train", cache, load_size=12)
    [npy2] = cache.glob("imagefolder-train-12px-*.npy")
    assert npy2 != npy and edited.images.shape[0] == 19
    # a damaged cache file is rebuilt
    npy2.write_bytes(npy2.read_bytes()[:200])
    rebuilt = load(root, "train", cache, load_size=12)
    assert torch.equal(rebuilt.get_batch(idx)[0], edited.get_batch(idx)[0])


def test_the_cache_size_limit(tmp_path: Path, monkeypatch) -> None:
    root = make_folder(tmp_path / "data", empty=())
    cache = tmp_path / "cache"
    big = load(root, "train", cache, load_size=128, cache_mb=0)  # 0: off
    assert big.images is None and not cache.exists()
    monkeypatch.setenv("SIMPRUNE_CACHE_MB", "1")  # 18 x 3 x 256 x 256 = 3.4 MB > 1 MB
    over = load_dataset("imagefolder", root, "train", cache, load_size=256)
    assert over.images is None and not cache.exists()
    fits = load_dataset("imagefolder", root, "train", cache, load_size=64)  # 0.2 MB
    assert fits.images is not None
    monkeypatch.setenv("SIMPRUNE_CACHE_MB", "lots")
    with pytest.raises(ValueError, match=r"\$SIMPRUNE_CACHE_MB must be a whole number of MB >= 0.*'lots'"):
        load_dataset("imagefolder", root, "train", cache, load_size=64)
    with pytest.raises(ValueError, match="cache_mb must be"):
        cache_limit_mb(-1)
    monkeypatch.delenv("SIMPRUNE_CACHE_MB")
    assert cache_limit_mb() == 2048
