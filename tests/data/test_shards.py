"""Tar shards: the writer, reading them back, and each process reading its own shards."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from test_loader import photo_folder, small_augment

from simprune.data import CorruptImageError, load_dataset
from simprune.data.crops import crop_spec
from simprune.data.loader import StepBatches, TrainLoader
from simprune.data.shards import ShardedDataset, ShardSampler, shard_sampler, write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    src = photo_folder(root / "folder", n=8, size=(50, 40), classes=("a", "b", "c"))
    photo_folder(root / "folder_val", n=2, size=(50, 40), classes=("a", "b", "c"))
    (root / "folder_val" / "train").rename(src / "val")
    meta = write_shards(src, root / "out", shard_size=3)
    return src, root / "out", meta


def test_shards_hold_every_image_once_with_its_label(shards):
    src, out, meta = shards
    assert meta["classes"] == ["a", "b", "c"]
    assert meta["splits"]["train"]["counts"] == [3] * 8 and meta["splits"]["val"]["n"] == 6
    ds = load_dataset("imagefolder", out, "train", load_size=24)
    assert isinstance(ds, ShardedDataset) and len(ds) == 24 and ds.streamed
    seen = set()
    for i in range(len(ds)):
        data = ds.read(i)
        name = ds.member_name(i).split(":", 1)[1]
        cls, stem = name.split("/")
        assert (src / "train" / cls / stem).read_bytes() == data
        assert ds.classes[int(ds.labels[i])] == cls
        seen.add(name)
    assert len(seen) == 24
    with tarfile.open(out / "train-000000.tar") as tar:  # plain tars, webdataset's layout
        names = tar.getnames()
    assert len(names) == 6 and names[1] == names[0].rsplit(".", 1)[0] + ".cls"
    img, label = ds[0]
    assert img.shape == (3, 24, 24) and label == int(ds.labels[0])


def test_two_processes_read_disjoint_shards_that_cover_the_split_each_epoch(shards):
    _, out, _ = shards
    ds = ShardedDataset(out, "train")
    spec = crop_spec(small_augment())
    for epoch in range(2):
        read = {}
        for rank in range(2):
            sampler = ShardSampler(torch.arange(len(ds)), ds.shard, 6, seed=1, rank=rank, world=2)
            assert sampler.steps_per_epoch == 4  # 4 shards of 3 per process, 3 images per step
            src = StepBatches(ds, sampler, sampler.steps_per_epoch, 1, rank, 2, spec=spec)
            loader = TrainLoader(src, 1, stop=8)
            rows = torch.cat([loader.get(epoch * 4 + s)[2] for s in range(4)])
            loader.close()
            read[rank] = rows
            assert set(ds.shard[rows].tolist()) == set(sampler.shards_of(epoch))
        a, b = set(read[0].tolist()), set(read[1].tolist())
        assert not a & b and a | b == set(range(24)) and len(read[0]) == len(read[1]) == 12
        assert not set(ds.shard[read[0]].tolist()) & set(ds.shard[read[1]].tolist())
    s0 = ShardSampler(torch.arange(len(ds)), ds.shard, 6, seed=1, rank=0, world=2)
    assert s0.shards_of(0) != s0.shards_of(1)  # a new shard order every epoch


def test_the_position_is_checked_on_resume(shards):
    _, out, _ = shards
    ds = ShardedDataset(out, "train")
    s = shard_sampler(ds, torch.arange(len(ds)), 6, seed=1, rank=0, world=2)
    pos = s.position(5)
    assert (pos["epoch"], pos["step_in_epoch"], pos["next_sample"]) == (1, 1, 3)
    s.check_position(pos, 5)
    with pytest.raises(ValueError, match="other shards"):
        s.check_position({**pos, "fingerprint": "x"}, 5)
    with pytest.raises(ValueError, match="does not match step 6"):
        s.check_position(pos, 6)


def test_a_corrupt_shard_member_is_named(tmp_path):
    src = photo_folder(tmp_path / "folder", n=2, size=(50, 40))
    out = tmp_path / "out"
    write_shards(src, out, shard_size=10)
    ds = ShardedDataset(out, "train")
    shard = ds.shards[0]
    data = bytearray(shard.read_bytes())
    off = int(ds._offset[1])
    data[off:off + int(ds._size[1])] = b"\0" * int(ds._size[1])
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match=rf"cannot decode image '{shard}:(a|b)/0[01].jpg'"):
        ds.load_crops(1, crop_spec(small_augment()), torch.Generator())


def test_shard_command_refuses_an_existing_shard_folder(shards, tmp_path):
    src, out, _ = shards
    res = subprocess.run([sys.executable, "-m", "simprune.cli", "data", "shard", "--src", str(src),
                          "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"simprune: error: '{out}' already holds shards; pass an empty or new "
                                  "--out folder")
    res = subprocess.run([sys.executable, "-m", "simprune.cli", "data", "shard", "--src", str(src),
                          "--out", str(tmp_path / "new"), "--shard-size", "5", "--splits", "train"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.startswith("train: 24 images in 5 shards")
    assert np.load(tmp_path / "new" / "train.index.npz")["shard"].max() == 4
