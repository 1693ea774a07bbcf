"""A 2-process gloo run under torchrun matches a 1-process run with the same global batch."""

from __future__ import annotations

import json
import subprocess

from train_testkit import PY, TINY, cli_args, run_env

#: DDP averages gradients in another order than one process sums them: float noise only.
TOLERANCE = 1e-4


def losses(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_two_process_gloo_matches_one_process(data_root, tmp_path):
    cfg = dict(TINY, framework="dino", method="simprune", local_views=2, epochs=0.25,
               deterministic=True, eval_at_end=False, device="cpu")
    env = run_env(data_root)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([PY, "-m", "simprune.cli", "train", *cli_args(**cfg, out=one)], env=env,
                   check=True, capture_output=True)
    res = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "simprune.cli", "train", *cli_args(**cfg, out=two)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (two / "run.lock").exists()  # rank 0 held it, and released it at the end
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b)) < TOLERANCE, (a, b)


def test_under_torchrun_rank_0_holds_the_folder_and_a_busy_one_stops_the_job(data_root, tmp_path):
    """Rank 0 takes ``run.lock`` (the other ranks write nothing there); a folder a live process
    holds stops the job with rank 0's one line, without a hang."""
    import os
    import socket
    import time

    out = tmp_path / "busy"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "started": "t0", "command": "pytest"}))
    cfg = dict(TINY, framework="dino", epochs=0.25, eval_at_end=False, device="cpu")
    started = time.perf_counter()
    res = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "simprune.cli", "train", *cli_args(**cfg, out=out)],
                         env=run_env(data_root), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert f"simprune: error: the out folder {out} is in use by another run: pid {os.getpid()}" in res.stderr
    assert not (out / "metrics.jsonl").exists() and time.perf_counter() - started < 240


def test_dynamic_simprune_trains_under_torchrun_across_its_warm_up(data_root, tmp_path):
    """dynamic_simprune's gates take no part in the warm-up's steps: DDP must look for unused
    parameters (``Framework.idle_parameters``), or the first gated step stops the job."""
    out = tmp_path / "dyn"
    cfg = dict(TINY, method="dynamic_simprune", reducer_options='{"warmup": 0.3}',
               eval_at_end=False, device="cpu")
    res = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "simprune.cli", "train", *cli_args(**cfg, out=out)],
                         env=run_env(data_root), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    flops = [r["flops"] for r in recs if "flops" in r]
    assert len(flops) == 4 and flops[0] > 1.0 > flops[-1]  # idle gates first, then gated steps
