"""A run on a split that is not cached (an image folder over the cache limit, tar shards), read by 2
worker processes, resumes bitwise after SIGKILL; the checkpoint keeps the shard position."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from train_testkit import kill_and_resume, losses

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_loader import photo_folder  # noqa: E402

from simprune.data.shards import write_shards  # noqa: E402

CFG = dict(framework="dino", method="simprune", model="vit_nano_patch4_32", dataset="imagefolder",
           global_size=32, local_size=16, local_views=2, batch_size=8, steps=12, log_every=1,
           ckpt_every=2, eval_at_end=False, progress_bar=False, drop_path=0.1, num_workers=2,
           device="cpu", test_split="train")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_a_streamed_run_with_two_workers_resumes_bitwise(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMPRUNE_CACHE_MB", "0")  # the folder is streamed, not cached
    monkeypatch.setenv("SIMPRUNE_CACHE", str(tmp_path / "cache"))
    data = photo_folder(tmp_path / "folder", n=10, size=(60, 45))
    if kind == "shards":
        write_shards(data, tmp_path / "shards", shard_size=4)
        data = tmp_path / "shards"
    ref, cut, stdout = kill_and_resume(CFG, data, tmp_path, kill_after=5)
    assert "resuming" in stdout
    assert max(losses(ref)) == 12
    assert losses(cut) == losses(ref)  # exact, every step
    if kind == "shards":
        from simprune.checkpoint import load_checkpoint

        pos = load_checkpoint(cut / "checkpoint.pt")["data_position"]
        assert pos["kind"] == "shards" and (pos["epoch"], pos["step_in_epoch"]) == divmod(12, 2)
