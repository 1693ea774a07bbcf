"""A Dynamic SimPrune run killed with SIGKILL resumes with the same gates and exactly the same
per-step losses (the gates are in the checkpoint and the optimiser state)."""

from __future__ import annotations

import torch
from train_testkit import TINY, kill_and_resume, losses

from simprune.checkpoint import load_checkpoint


def test_sigkill_then_resume_keeps_the_gates(data_root, tmp_path):
    cfg = dict(TINY, framework="mocov3", method="dynamic_simprune", epochs=0.75, deterministic=True,
               eval_at_end=False, ckpt_every=3,
               reducer_options='{"flops_budget": 0.8, "warmup": 0.0}')
    ref, cut, stdout = kill_and_resume(cfg, data_root, tmp_path, kill_after=5)
    assert "resuming" in stdout
    assert losses(cut) == losses(ref)  # exact, every step
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (ref, cut))
    gates = [k for k in a["framework"] if k.startswith("student.reducer.")]
    assert len(gates) == 6
    for k in gates:
        assert torch.equal(a["framework"][k], b["framework"][k])
    init = load_checkpoint(ref / "checkpoint.pt")["framework"]["student.reducer.gates.0.bias"]
    assert init.abs().sum() > 0  # trained away from its zero initialisation
