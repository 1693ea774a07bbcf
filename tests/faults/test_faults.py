"""Fault injection: tiny real runs in a subprocess are killed, damaged or starved; each ends with
one clear line and the right exit status, its files are intact, and the same command then
resumes to per-step losses bitwise equal to the uninterrupted reference run.

Random moments are drawn from ``$SIMPRUNE_FAULT_SEED`` (default: the clock); a failure message
names the seed, so ``SIMPRUNE_FAULT_SEED=<seed> pytest tests/faults`` replays it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time

import pytest
import torch
from faultkit import (
    TOTAL_STEPS,
    dead_pid,
    kill_at_step,
    run,
    signal_at_step,
    step_losses,
    temp_files,
    train_argv,
)

SEED = int(os.environ.get("SIMPRUNE_FAULT_SEED") or time.time_ns() % 1_000_000)


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def one_line(stderr: str) -> str:
    """The error line of a failed command: no traceback, exactly one ``simprune: error:`` line."""
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("simprune: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def assert_resumes_exactly(run_dir, data_root, reference, **over):
    res = run(train_argv(run_dir, **over), data_root)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert step_losses(run_dir) == reference[1]  # bitwise, every step
    assert temp_files(run_dir) == []
    return res


def test_sigkill_at_a_random_step_then_resume(reference, data_root, tmp_path):
    step = random.Random(SEED).randint(2, TOTAL_STEPS - 2)
    run_dir = tmp_path / "run"
    logged = kill_at_step(train_argv(run_dir), data_root, run_dir, step)
    assert logged < TOTAL_STEPS, f"seed {SEED}"
    res = assert_resumes_exactly(run_dir, data_root, reference)
    # the first checkpoint (step 3) is written after step 3's log line: a kill seen at 3 logged
    # steps may come before it, and the run then starts again from step 0
    assert "resuming" in res.stdout or logged <= 3, f"seed {SEED}: {res.stdout}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_sigterm_or_ctrl_c_saves_the_step_reached_then_resumes(signum, reference, data_root, tmp_path):
    """A stop by SIGTERM (a scheduler, ``kill``) or Ctrl-C waits for the step to end, writes a
    checkpoint at the step reached (none of the periodic ones is due: every 100 steps here) and
    exits 143/130 with one line; the same command resumes from that step, bitwise."""
    step = random.Random(SEED).randint(2, TOTAL_STEPS - 3)
    run_dir = tmp_path / "run"
    sent, res = signal_at_step(train_argv(run_dir, ckpt_every=100, keep_every=0), data_root, run_dir,
                               step, signum)
    assert res.returncode == 128 + signum, f"seed {SEED}: {res.stderr}"
    assert "Traceback" not in res.stderr
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["step"]
    assert sent <= saved < TOTAL_STEPS, f"seed {SEED}"
    assert f"stopped at step {saved}/{TOTAL_STEPS}; checkpoint saved" in res.stderr
    assert "interrupted; run the same command to resume" in res.stderr
    assert temp_files(run_dir) == []
    out = assert_resumes_exactly(run_dir, data_root, reference, ckpt_every=100, keep_every=0)
    assert f"resuming {run_dir} at step {saved}/{TOTAL_STEPS}" in out.stdout


def test_sigkill_during_a_checkpoint_write_then_resume(reference, data_root, tmp_path):
    """The n-th ``torch.save`` (checkpoint.pt and its kept copy alternate) is cut part-way by a
    SIGKILL: the previous checkpoint is whole, the partial temporary file is removed on the next
    start (as is a dead writer's temporary file in the data cache), and the run resumes exactly."""
    rng = random.Random(SEED)
    nth, fraction = rng.randint(2, 6), round(rng.uniform(0.05, 0.95), 2)
    run_dir = tmp_path / "run"
    res = run(train_argv(run_dir), data_root, kill_in_save=nth, fraction=fraction)
    assert res.returncode == -9, f"seed {SEED}: {res.stderr}"
    assert len(temp_files(run_dir)) == 1, f"seed {SEED}: {sorted(os.listdir(run_dir))}"
    cache = os.environ["SIMPRUNE_CACHE"]
    stale = os.path.join(cache, f".cifar10-jpg-0000.npz.{dead_pid()}@{os.uname().nodename}.abcd1234.tmp")
    with open(stale, "wb") as f:
        f.write(b"\0" * 1000)
    try:
        res = assert_resumes_exactly(run_dir, data_root, reference)
        assert not os.path.exists(stale)
        assert "removed 1 temporary file(s) left in" in res.stderr
    finally:
        if os.path.exists(stale):
            os.unlink(stale)


def test_truncated_checkpoint_resumes_from_the_newest_intact_copy(reference, stopped, data_root):
    run_dir = stopped(6, logged=8)
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (run_dir / "checkpoint_0000006.pt").write_bytes(b"")
    res = assert_resumes_exactly(run_dir, data_root, reference)
    assert f"{ckpt} is truncated or corrupt" in res.stderr
    assert "checkpoint_0000006.pt is empty (0 bytes)" in res.stderr
    assert "resuming from the newest intact copy" in res.stderr
    assert "checkpoint_0000003.pt (step 3)" in res.stderr


def test_damaged_checkpoint_without_a_copy_is_named_and_nothing_changes(stopped, data_root):
    run_dir = stopped(3)
    for p in run_dir.glob("checkpoint_*.pt"):
        p.unlink()
    (run_dir / "checkpoint.pt").write_bytes(b"")
    before = snapshot(run_dir)
    res = run(train_argv(run_dir), data_root)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert f"{run_dir / 'checkpoint.pt'} is empty (0 bytes)" in line and "move" in line, line
    assert snapshot(run_dir) == before


def test_torn_metrics_line_resumes(reference, stopped, data_root):
    """A run killed while appending to metrics.jsonl resumes: the torn line is dropped with one
    line on stderr. Evaluation and time-limit settings changed on resume do not make the
    checkpoint incompatible."""
    run_dir = stopped(6, logged=7)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 8, "epoch": 0.5, "loss": 3.1')
    res = assert_resumes_exactly(run_dir, data_root, reference, knn_k=5, knn_train=128,
                                 knn_temperature=0.1, time_limit=60)
    torn = [ln for ln in res.stderr.splitlines() if "torn" in ln]
    assert len(torn) == 1 and "metrics.jsonl" in torn[0] and "line 8" in torn[0], res.stderr


def test_bad_metrics_line_elsewhere_is_an_error(stopped, data_root):
    run_dir = stopped(3)
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(run_dir)
    res = run(train_argv(run_dir), data_root)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert f"{path} line 2 is not a JSON record" in line, line
    assert snapshot(run_dir) == before


def test_nonfinite_loss_never_leaves_a_nonfinite_checkpoint(data_root, tmp_path):
    """Checkpoints every 2 steps, log lines every 5: the loss blows up in between, and the last
    checkpoint is still the last good one (it was overwritten by a NaN one before)."""
    run_dir = tmp_path / "run"
    res = run(train_argv(run_dir, lr=1e6, log_every=5, ckpt_every=2, keep_every=0), data_root)
    assert res.returncode == 2, res.stderr
    line = one_line(res.stderr)
    assert "NaN or inf" in line and "no checkpoint was written from the broken state" in line, line
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert f"last good checkpoint (step {saved['step']})" in line
    floats = [t for t in saved["framework"].values() if t.is_floating_point()]
    assert saved["step"] >= 2 and all(torch.isfinite(t).all() for t in floats)


def test_out_folder_is_a_file(data_root, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    res = run(train_argv(out), data_root)
    assert res.returncode == 2
    assert f"the out folder {out} is a file" in one_line(res.stderr)
    assert out.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder(stopped, data_root):
    run_dir = stopped(3)
    before = snapshot(run_dir)
    run_dir.chmod(0o555)
    try:
        res = run(train_argv(run_dir), data_root)
    finally:
        run_dir.chmod(0o755)
    assert res.returncode == 2
    assert f"cannot write in the out folder {run_dir}" in one_line(res.stderr)
    assert snapshot(run_dir) == before


def test_full_disk_keeps_the_last_checkpoint_then_resumes(reference, stopped, data_root):
    """Under ``ulimit -f`` 1 MiB the next checkpoint cannot be written (EFBIG): one line naming the
    file, exit 1, the previous checkpoint and copies untouched, no temporary file; once there is
    room, the same command resumes exactly."""
    run_dir = stopped(6)
    kept = {n: d for n, d in snapshot(run_dir).items() if n.startswith("checkpoint")}
    res = run(train_argv(run_dir), data_root, max_file_bytes=1 << 20)
    assert res.returncode == 1, res.stderr
    line = one_line(res.stderr)
    assert f"cannot write {run_dir / 'checkpoint.pt'}: File too large" in line and "ulimit -f" in line
    assert {n: d for n, d in snapshot(run_dir).items() if n.startswith("checkpoint")} == kept
    assert temp_files(run_dir) == []
    assert_resumes_exactly(run_dir, data_root, reference)


def test_bad_evaluation_key_fails_before_the_first_step(data_root, tmp_path):
    out = tmp_path / "run"
    started = time.perf_counter()
    res = run(train_argv(out, knn_k=0), data_root)
    assert res.returncode == 2
    assert "knn_k must be >= 1, got 0" in one_line(res.stderr)
    assert not out.exists() and "step 1" not in res.stdout
    assert time.perf_counter() - started < 60


def test_finished_run_is_evaluated_once(reference, data_root, tmp_path):
    """A finished run whose final evaluation never ran (here: it was off) is evaluated on the next
    start; once evaluated, the same command says it is finished and offers ``simprune eval``,
    writing nothing (no second evaluation line)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    res = run(train_argv(run_dir, eval_at_end=True), data_root)
    assert res.returncode == 0, res.stderr
    assert f"has trained all {TOTAL_STEPS} steps; evaluating it" in res.stdout
    assert "resuming" not in res.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and "knn_top1" in results
    before = snapshot(run_dir)
    res = run(train_argv(run_dir, eval_at_end=True), data_root)
    assert res.returncode == 0, res.stderr
    assert "is already finished" in res.stdout and f"simprune eval --ckpt {run_dir}" in res.stdout
    assert "resuming" not in res.stdout and "To train longer, start a new run" in res.stdout
    assert "k-NN top-1" in res.stdout  # the stored result, not a new evaluation
    assert snapshot(run_dir) == before
    evals = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in ln]
    assert len(evals) == 1


def test_eval_takes_evaluation_overrides(reference, data_root, capsys):
    from simprune.cli import main

    ckpt = ["--ckpt", str(reference[0]), "--data", str(data_root)]
    assert main(["eval", *ckpt, "--knn-k", "5", "--knn-train", "128",
                 "--knn-test", "32", "--knn-temperature", "0.1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["knn_train"] == 128 and res["knn_test"] == 32 and res["step"] == TOTAL_STEPS
    assert main(["eval", *ckpt, "--knn-k", "0"]) == 2
    assert "knn_k must be >= 1" in capsys.readouterr().err
