"""A run killed with SIGKILL mid-training resumes with exactly the same per-step losses."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from train_testkit import PY, TINY, cli_args, run_env


def losses(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_sigkill_then_resume_matches_uninterrupted(data_root, tmp_path):
    cfg = dict(TINY, framework="dino", method="simprune", local_views=2, epochs=0.75,
               deterministic=True, eval_at_end=False, ckpt_every=3, drop_path=0.1)
    env = run_env(data_root)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    cmd = [PY, "-m", "simprune.cli", "train"]
    subprocess.run(cmd + cli_args(**cfg, out=ref), env=env, check=True, capture_output=True)
    total = max(losses(ref))
    assert total == 12

    proc = subprocess.Popen(cmd + cli_args(**cfg, out=cut), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some steps past a checkpoint have been logged
        if (cut / "metrics.jsonl").exists() and len(losses(cut)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(losses(cut)) < total, "the run finished before it could be killed"
    out = subprocess.run(cmd + cli_args(**cfg, out=cut), env=env, check=True, capture_output=True,
                         text=True)
    assert "resuming" in out.stdout
    assert losses(cut) == losses(ref)  # exact, every step
