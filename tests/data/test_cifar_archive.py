"""The real CIFAR-10 JPEG archive of shared/data: decode, cache, hash check, errors.

The data folder is ``$SIMPRUNE_DATA`` if set, else ``<repo>/../shared/data``. The archive is
decoded once per session into a temporary cache folder (about 15 s).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simprune.data.cifar as cifar_module
from simprune.data import DataNotFoundError, WrongArchiveError, load_dataset, resolve_data_root
from simprune.data.cifar import CIFAR10_CLASSES, CIFAR10_JPG_NAME, CIFAR10_JPG_SHA256
from simprune.data.stats import dataset_stats

DATA_ROOT = Path(os.environ.get("SIMPRUNE_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
ARCHIVE = DATA_ROOT / CIFAR10_JPG_NAME
needs_archive = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")


@pytest.fixture(scope="session")
def jpg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only a link to the archive (so no other CIFAR format takes priority)."""
    root = tmp_path_factory.mktemp("cifar_root")
    (root / CIFAR10_JPG_NAME).symlink_to(ARCHIVE.resolve())
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cifar_cache")


@pytest.fixture(scope="session")
def cifar(jpg_root: Path, cache_dir: Path) -> dict:
    """Both splits, decoded from the archive once per session."""
    return {s: load_dataset("cifar10", jpg_root, s, cache_dir=cache_dir) for s in ("train", "test")}


def _read_members(names: set[str]) -> dict[str, np.ndarray]:
    """Decode a few members independently of the loader: uint8 [3, 32, 32] each."""
    out: dict[str, np.ndarray] = {}
    with tarfile.open(ARCHIVE, "r|gz") as tar:
        for m in tar:
            if m.name in names:
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                out[m.name] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
                if len(out) == len(names):
                    break
    return out


@needs_archive
def test_sizes_shapes_and_class_counts(cifar: dict) -> None:
    train, test = cifar["train"], cifar["test"]
    assert len(train) == 50_000 and len(test) == 10_000
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes == test.classes == CIFAR10_CLASSES
    img, label = train[0]
    assert img.shape == (3, 32, 32) and isinstance(label, int)


@needs_archive
def test_channel_statistics_match_readme(cifar: dict) -> None:
    images = cifar["train"].images
    total = images.sum(dim=(0, 2, 3), dtype=torch.int64).double()
    mean = total / (images.numel() // 3) / 255
    sample = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:5000]]
    std = sample.float().div_(255).std(dim=(0, 2, 3))
    ref_mean, ref_std = dataset_stats("cifar10")
    assert torch.allclose(mean.float(), torch.tensor(ref_mean), atol=2e-3), mean
    assert torch.allclose(std, torch.tensor(ref_std), atol=4e-3), std


@needs_archive
def test_label_and_order_match_archive_members(cifar: dict) -> None:
    members = {
        "train/airplane/0000.jpg": ("train", 0, 0),
        "train/cat/0123.jpg": ("train", 3, 3 * 5000 + 123),
        "test/truck/0999.jpg": ("test", 9, 9 * 1000 + 999),
    }
    pixels = _read_members(set(members))
    assert set(pixels) == set(members)
    for name, (split, label, index) in members.items():
        img, lab = cifar[split][index]
        assert lab == label, name
        assert np.array_equal(img.numpy(), pixels[name]), name


@needs_archive
def test_cache_reload_identical_without_decoding(cifar: dict, jpg_root: Path, cache_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    caches = list(cache_dir.glob("cifar10-jpg-*.npz"))
    assert [c.name for c in caches] == [f"cifar10-jpg-{CIFAR10_JPG_SHA256[:16]}.npz"]
    assert not list(cache_dir.glob("*.tmp"))  # the atomic write left no temporary file

    def no_decoding(*args, **kwargs):
        raise AssertionError("the archive was decoded again although its cache exists")

    # checked by what runs, not by a timing (a shared CI machine makes timings flaky)
    monkeypatch.setattr(cifar_module, "decode_jpeg_archive", no_decoding)
    again = load_dataset("cifar10", jpg_root, "train", cache_dir=cache_dir)
    assert torch.equal(again.images, cifar["train"].images)
    assert torch.equal(again.labels, cifar["train"].labels)


@needs_archive
def test_wrong_archive_names_expected_and_actual_hash(tmp_path: Path) -> None:
    with open(ARCHIVE, "rb") as f:
        head = f.read(1 << 20)
    bad = tmp_path / CIFAR10_JPG_NAME
    bad.write_bytes(head)
    with pytest.raises(WrongArchiveError) as err:
        load_dataset("cifar10", tmp_path, "train", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "wrong archive" in msg and str(bad) in msg
    assert CIFAR10_JPG_SHA256 in msg
    assert hashlib.sha256(head).hexdigest() in msg
    assert not (tmp_path / "cache").exists()  # nothing decoded or cached


def test_missing_root_mentions_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMPRUNE_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="SIMPRUNE_DATA"):
        resolve_data_root(None)
    with pytest.raises(DataNotFoundError, match="SIMPRUNE_DATA"):
        resolve_data_root(tmp_path / "nope")
    monkeypatch.setenv("SIMPRUNE_DATA", str(tmp_path / "also-missing"))
    with pytest.raises(DataNotFoundError, match="SIMPRUNE_DATA"):
        resolve_data_root(None)
    assert issubclass(DataNotFoundError, FileNotFoundError)


def test_empty_root_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", tmp_path, "train", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    for name in (CIFAR10_JPG_NAME, "cifar-10-python.tar.gz", "cifar-10-batches-py", "SIMPRUNE_DATA"):
        assert name in msg


@needs_archive
def test_env_var_root(monkeypatch: pytest.MonkeyPatch, jpg_root: Path) -> None:
    monkeypatch.setenv("SIMPRUNE_DATA", str(jpg_root))
    assert resolve_data_root(None) == jpg_root
    assert resolve_data_root(str(DATA_ROOT)) == DATA_ROOT  # --data wins over the variable
