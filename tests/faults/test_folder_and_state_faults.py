"""Faults of a run's folder and state, each in tiny real runs (subprocesses of ``simprune train``):
two runs started on one ``--out``, and checkpoints holding NaN or inf (written by a broken state,
or changed on disk). The second run stops at once with one line naming the holder; a non-finite
checkpoint is never resumed from, and never written."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch
from faultkit import REPO, TOTAL_STEPS, command, run, step_losses, train_argv
from test_faults import assert_resumes_exactly, one_line, snapshot
from train_testkit import run_env

from simprune.checkpoint import CheckpointError, load_resumable
from simprune.train.folder_lock import RUN_LOCK


def poison(path, where: str = "framework") -> str:
    """Put a NaN in the first floating tensor of the checkpoint's weights (``framework``) or of
    its optimizer's moments (``optimizer``); returns the tensor's name."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if where == "framework":
        name = next(k for k, t in saved["framework"].items() if t.is_floating_point())
        saved["framework"][name].view(-1)[0] = float("nan")
    else:
        index, slots = next(iter(saved["optimizer"]["state"].items()))
        name = f"optimizer.{index}.exp_avg"
        slots["exp_avg"].view(-1)[0] = float("inf")
    torch.save(saved, path)
    return name


def test_a_second_run_on_the_same_out_folder_stops_at_once_naming_the_holder(data_root, tmp_path):
    """Run A trains in ``out``; run B on the same ``out`` (another seed) fails at once with one
    line naming A (pid, host, start, command) and changes nothing. A is then killed outright: its
    lock is stale, and the same command takes the folder over and resumes."""
    out = tmp_path / "run"
    long_run = train_argv(out, epochs=40)  # 640 steps: still training when B starts
    proc = subprocess.Popen(command(long_run), env=run_env(data_root), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(step_losses(out)) < 4 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "run A ended early"
        config = (out / "config.json").read_bytes()
        res = run(train_argv(out, epochs=40, seed=1), data_root)
        assert proc.poll() is None  # A still trains
        assert res.returncode == 2, res.stderr
        line = one_line(res.stderr)
        assert f"the out folder {out} is in use by another run: pid {proc.pid} on host" in line, line
        assert "simprune train" in line and f"--out {out}" in line and "pass another --out" in line
        assert "step 1/" not in res.stdout and "resuming" not in res.stdout
        assert (out / "config.json").read_bytes() == config  # still seed 0: A's
        assert json.loads((out / RUN_LOCK).read_text())["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / RUN_LOCK).exists()  # left by the killed run: stale, taken over
    at = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["step"]
    res = run(train_argv(out, epochs=40, max_steps=at + 2), data_root)
    assert res.returncode == 0, res.stderr
    assert "in use" not in res.stderr and f"resuming {out} at step {at}/" in res.stdout
    assert max(step_losses(out)) == at + 2
    assert not (out / RUN_LOCK).exists()  # released at the end


def test_a_checkpoint_with_nan_weights_is_never_resumed(reference, stopped, data_root):
    """``checkpoint.pt`` with a NaN weight and the newest kept copy with an inf in the optimizer's
    moments: both are named with what is wrong, the run resumes from the newest finite copy
    (step 3), says so, and ends bitwise equal to the uninterrupted run."""
    run_dir = stopped(6, logged=8)
    weight = poison(run_dir / "checkpoint.pt")
    moment = poison(run_dir / "checkpoint_0000006.pt", "optimizer")
    res = assert_resumes_exactly(run_dir, data_root, reference)
    assert f"{run_dir / 'checkpoint.pt'} holds NaN or inf values (step 6; in {weight!r})" in res.stderr
    assert f"checkpoint_0000006.pt holds NaN or inf values (step 6; in {moment!r})" in res.stderr
    assert f"resuming from the newest intact copy, {run_dir / 'checkpoint_0000003.pt'} (step 3)" in res.stderr
    assert "resuming" in res.stdout and "at step 3/" in res.stdout
    load_resumable(run_dir / "checkpoint.pt")  # replaced by a finite one


def test_a_nan_checkpoint_without_a_finite_copy_is_named_and_nothing_changes(stopped, data_root):
    run_dir = stopped(3)
    for p in run_dir.glob("checkpoint_*.pt"):
        p.unlink()
    poison(run_dir / "checkpoint.pt")
    before = snapshot(run_dir)
    res = run(train_argv(run_dir), data_root)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert f"cannot resume: {run_dir / 'checkpoint.pt'} holds NaN or inf values" in line, line
    assert "move" in line and "step 0" in line
    assert snapshot(run_dir) == before


def test_a_nan_loss_leaves_only_finite_checkpoints_and_says_which_is_kept(data_root, tmp_path):
    """The loss blows up (lr 1e6) between checkpoints: every checkpoint written, and every kept
    copy, has finite weights and optimizer state; the message names the last good one. Running
    the same command again resumes from it and meets the same fault, with the same message."""
    run_dir = tmp_path / "run"
    argv = train_argv(run_dir, lr=1e6, log_every=5, ckpt_every=2, keep_every=2)
    res = run(argv, data_root)
    assert res.returncode == 2, res.stderr
    line = one_line(res.stderr)
    saved = load_resumable(run_dir / "checkpoint.pt")  # raises CheckpointError if not finite
    assert saved["step"] >= 2
    assert f"last good checkpoint (step {saved['step']}) is kept at {run_dir / 'checkpoint.pt'}" in line
    for p in run_dir.glob("checkpoint_*.pt"):
        load_resumable(p)
    again = run(argv, data_root)
    assert again.returncode == 2
    assert f"resuming {run_dir} at step {saved['step']}/{TOTAL_STEPS}" in again.stdout
    assert f"last good checkpoint (step {saved['step']}) is kept" in one_line(again.stderr)
    assert load_resumable(run_dir / "checkpoint.pt")["step"] == saved["step"]


def test_load_resumable_names_the_nonfinite_tensor(stopped):
    run_dir = stopped(3)
    name = poison(run_dir / "checkpoint.pt")
    try:
        load_resumable(run_dir / "checkpoint.pt")
    except CheckpointError as err:
        assert name in str(err) and "NaN or inf" in str(err)
    else:
        raise AssertionError("a NaN checkpoint was accepted")


def test_eval_export_and_finetune_refuse_a_checkpoint_with_nan_weights(stopped, data_root, tmp_path,
                                                                        capsys):
    """A run never writes a non-finite checkpoint, but a file changed on disk or written elsewhere
    may hold one: ``eval`` and ``export`` refuse it in one line naming the file and the tensor, and
    a fine-tuning that starts from it names its backbone's bad tensor, before any step."""
    from simprune.cli import main

    run_dir = stopped(3)
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    name = next(k for k in saved["framework"] if k.startswith(f"{saved['eval_branch']}.backbone.")
                and saved["framework"][k].is_floating_point())
    saved["framework"][name].view(-1)[0] = float("nan")
    torch.save(saved, run_dir / "checkpoint.pt")
    for argv in (["eval", "--ckpt", str(run_dir), "--data", str(data_root)],
                 ["export", "--ckpt", str(run_dir), "--out", str(tmp_path / "w.safetensors")]):
        assert main(argv) == 2, argv
        line = one_line(capsys.readouterr().err)
        assert (f"{run_dir / 'checkpoint.pt'} holds NaN or inf weights (step 3; in {name!r}): it "
                "cannot be evaluated, exported or fine-tuned") in line, line
    assert not (tmp_path / "w.safetensors").exists()
    from simprune.teachers.frozen import backbone_state

    with pytest.raises(ValueError, match=r"holds NaN or inf weights \(in '.*'\): a backbone cannot "
                                         r"start from it"):
        backbone_state(run_dir)
