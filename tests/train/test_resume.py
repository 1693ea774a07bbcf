"""A run killed with SIGKILL mid-training resumes with exactly the same per-step losses: DINO
with SimPrune; DINOv2-style training with SimPrune's A.4 pairing; Tri-Level E-ViT with every level
on and a remove-and-restore round on each side of the kill (the sampler's subset, pool and
forgetting statistics come back from the checkpoint); and distillation into an EViT student (MAE
and PCAE: test_mim_runs.py)."""

from __future__ import annotations

import pytest
from train_testkit import TINY, kill_and_resume, losses

BASE = dict(TINY, epochs=0.75, deterministic=True, eval_at_end=False, ckpt_every=3, drop_path=0.1)
CASES = {
    "dino": dict(framework="dino", method="simprune", local_views=2),
    # iBOT + KoLeo, block masks drawn per (seed, step, row, view): the resumed run masks alike
    "dinov2": dict(framework="dinov2", method="simprune", local_views=2),
    # 51 of 64 examples, 3 batches of 16 per epoch, 4 epochs: rounds at the start of epochs 1 and
    # 2 (steps 3 and 6); the kill comes after the step-3 checkpoint, so the resumed run redoes
    # the first round from the saved statistics and then runs the second
    "trilevel": dict(framework="trilevel", method="attn_topk", keep_rate=0.8, train_subset=64,
                     epochs=4.0, reducer_options='{"attn_keep": 0.3}', example="forgetting",
                     example_keep=0.8, rounds_at=[0.25, 0.5]),
    "distill": dict(framework="distill", method="evit", keep_rate=0.5, kd_random_teacher=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sigkill_then_resume_matches_uninterrupted(case, data_root, tmp_path):
    cfg = dict(BASE, **CASES[case])
    ref, cut, stdout = kill_and_resume(cfg, data_root, tmp_path, kill_after=5)
    assert max(losses(ref)) >= 9
    assert "resuming" in stdout
    assert losses(cut) == losses(ref)  # exact, every step
    if case == "trilevel":  # the same rounds, subset, pool and statistics
        import torch

        from simprune.checkpoint import load_checkpoint

        a, b = (load_checkpoint(d / "checkpoint.pt")["sampler_filter"] for d in (ref, cut))
        assert a["rounds_done"] == b["rounds_done"] == 2 and a["history"] == b["history"]
        assert torch.equal(a["active"], b["active"]) and torch.equal(a["pool"], b["pool"])
        assert all(torch.equal(a["stats"][k], b["stats"][k]) for k in a["stats"])
