"""MAE and PCAE through the real trainer: a run killed with SIGKILL resumes with the same per-step
losses, and a 2-process gloo run matches one process (the masks come from (seed, step, dataset
row), not from each process's RNG). Tiny decoders; the end-of-run evaluation is the k-NN protocol
on the patch-token mean."""

from __future__ import annotations

import json
import subprocess

import pytest
from train_testkit import PY, TINY, cli_args, kill_and_resume, losses, records, run_env

#: tiny decoders, and PCAE's teacher with a fast EMA so that it moves within a few steps
MIM = {
    "mae": {"framework": "mae", "decoder_depth": 2, "decoder_dim": 16, "decoder_heads": 2,
            "pos_embed": "sincos"},
    "pcae": {"framework": "pcae", "decoder_depth": 2, "decoder_dim": 16, "decoder_heads": 2,
             "pos_embed": "sincos", "momentum": 0.9},
}
#: DDP averages gradients in another order than one process sums them: float noise only.
TOLERANCE = 1e-4


@pytest.mark.parametrize("framework", ["mae", "pcae"])
def test_sigkill_then_resume_matches_uninterrupted(framework, data_root, tmp_path):
    cfg = dict(TINY, **MIM[framework], epochs=0.75, deterministic=True, eval_at_end=False,
               ckpt_every=3, drop_path=0.1)
    ref, cut, stdout = kill_and_resume(cfg, data_root, tmp_path)
    assert max(losses(ref)) == 12
    assert "resuming" in stdout
    assert losses(cut) == losses(ref)  # exact, every step
    if framework == "pcae":
        assert all(r["teacher_tokens/3"] == 6 and r["decoded"] == 6 for r in records(ref) if "loss" in r)


@pytest.mark.parametrize("framework", ["mae", "pcae"])
def test_two_process_gloo_matches_one_process(framework, data_root, tmp_path):
    cfg = dict(TINY, **MIM[framework], epochs=0.25, deterministic=True, device="cpu")
    env = run_env(data_root)
    one, two = tmp_path / "one", tmp_path / "two"
    res1 = subprocess.run([PY, "-m", "simprune.cli", "train", *cli_args(**cfg, out=one)], env=env,
                          check=True, capture_output=True, text=True)
    res = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "simprune.cli", "train", *cli_args(**cfg, out=two)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = list(losses(one).values()), list(losses(two).values())
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b)) < TOLERANCE, (a, b)
    # the run ends with its evaluation: k-NN on the student's patch-token mean
    assert "patch mean" in res1.stdout
    assert json.loads((one / "results.json").read_text())["knn_top1"] >= 0.0
