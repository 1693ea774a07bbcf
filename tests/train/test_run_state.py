"""The run's state on disk under faults, in-process (the subprocess versions are in tests/faults):
the finiteness check before every checkpoint, damaged checkpoints and metrics lines, settings that
may change on resume, and the command line's one-line refusals."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
from train_testkit import TINY, with_heads

from simprune.checkpoint import CheckpointError, atomic_save, load_checkpoint, newest_intact_copy
from simprune.cli import main
from simprune.config import RESUMABLE_CHANGES, incompatible, make_config
from simprune.records import read_records
from simprune.train.loop import Trainer, TrainingError, check_config


def tiny_trainer(data_root, out, **over):
    torch.set_num_threads(1)
    cfg = make_config(with_heads(dict(TINY, framework="mocov3", data=str(data_root), out=str(out),
                                      eval_at_end=False, **over)))
    return Trainer(cfg)


# --- no checkpoint without the finiteness check ----------------------------------------------
def test_weights_gone_nonfinite_are_never_saved(data_root, tmp_path, monkeypatch):
    """The losses were finite but the update of step 3 broke the weights: the checkpoint due at
    step 3 is refused, so nothing broken is on disk."""
    trainer = tiny_trainer(data_root, tmp_path / "run", log_every=10, ckpt_every=3)
    real = trainer.train_step

    def breaks_weights(step):
        loss, logs = real(step)
        if step == 2:  # after the optimiser step of step 3 (0-indexed 2)
            with torch.no_grad():
                next(trainer.framework.student.parameters()).fill_(float("inf"))
        return loss, logs

    monkeypatch.setattr(trainer, "train_step", breaks_weights)
    with pytest.raises(TrainingError, match=r"weights or optimizer state became NaN or inf by step 3"
                       r".*No checkpoint had been"):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_time_limit_save_checks_the_loss_first(data_root, tmp_path, monkeypatch):
    """A save forced by the time limit is checked like any other: with a NaN loss at step 1 and the
    log line not due, the run stops with the error instead of saving and saying 'continue'."""
    trainer = tiny_trainer(data_root, tmp_path / "run", log_every=10, ckpt_every=10, time_limit=1e-9)
    real = trainer.train_step

    def poisoned(step):
        loss, logs = real(step)
        return loss * float("nan"), logs

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(TrainingError, match="NaN or inf at step 1"):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- damaged files ---------------------------------------------------------------------------
def checkpoint_bytes(step=1):
    buf = io.BytesIO()
    torch.save({"config": {}, "framework": {"w": torch.arange(20000.0)}, "step": step}, buf)
    return buf.getvalue()


def test_damaged_checkpoints_are_named_with_their_fault(tmp_path):
    good = checkpoint_bytes()
    cases = {
        "empty.pt": (b"", r"empty\.pt is empty \(0 bytes\)"),
        "cut.pt": (good[: len(good) // 2], r"cut\.pt is truncated or corrupt"),
        "flipped.pt": (good[:2000] + bytes(b ^ 0xFF for b in good[2000:2100]) + good[2100:],
                       r"flipped\.pt is corrupt .*fails its CRC check"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / name)
    atomic_save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a simprune training checkpoint \(no config"):
        load_checkpoint(tmp_path / "other.pt")


def test_newest_intact_copy_skips_damaged_ones(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint_{step:07d}.pt").write_bytes(checkpoint_bytes(step))
    (tmp_path / "checkpoint_0000006.pt").write_bytes(b"")
    path, saved, skipped = newest_intact_copy(tmp_path)
    assert path.name == "checkpoint_0000004.pt" and saved["step"] == 4
    assert [e.path.name for e in skipped] == ["checkpoint_0000006.pt"]


def test_metrics_torn_last_line_is_dropped_and_a_bad_line_elsewhere_named(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    assert [r["step"] for r, _ in read_records(path, repair=True)] == [1, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dropped a torn last line (line 3" in err[0] and str(path) in err[0]
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.8}\n')
    with pytest.raises(ValueError, match=rf"{path} line 2 is not a JSON record"):
        read_records(path)


# --- settings that may change on resume -------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("knn_k", 5), ("knn_train", 100), ("knn_test", 10), ("knn_temperature", 0.1),
    ("knn_every", 0.5), ("eval_at_end", False), ("linear_probe", True), ("test_split", "val"),
    ("log_every", 7), ("ckpt_every", 9), ("keep_every", 3), ("progress_bar", False),
    ("time_limit", 5.0), ("max_steps", 3), ("device", "cpu"), ("num_workers", 2),
])
def test_keys_that_do_not_change_training_keep_a_checkpoint_compatible(key, value):
    assert key in RESUMABLE_CHANGES
    saved = make_config().to_dict()
    assert incompatible(saved, make_config({key: value})) == {}


# --- one clear line, before anything runs -----------------------------------------------------
@pytest.mark.parametrize("flags,match", [
    (["--log-every", "0"], "log_every must be >= 1"),
    (["--ckpt-every", "0"], "ckpt_every must be >= 1"),
    (["--knn-k", "0"], "knn_k must be >= 1"),
    (["--knn-temperature", "0"], "knn_temperature must be > 0"),
    (["--method", "nope"], "unknown reduction method 'nope'; known: dense, "),
    (["--device", "gpu"], "device 'gpu' is not a device name torch knows"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, flags, match):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(tmp_path), "--device", "cuda"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


def test_unknown_method_lists_dense():
    with pytest.raises(ValueError, match=r"known: dense, attn_topk, .*tome"):
        check_config(make_config({"reducer": {"method": "evitt"}}))


def test_export_to_a_missing_or_wrong_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [(tmp_path / "missing" / "w.safetensors", "does not exist"),
             (tmp_path / "file" / "w.safetensors", "is a file, not a folder")]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        cases.append((locked / "w.safetensors", "is not writable"))
    for target, match in cases:
        assert main(["export", "--ckpt", str(tmp_path), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert match in err and str(target) in err and len(err.strip().splitlines()) == 1


def test_recipe_toml_errors_name_the_file(tmp_path, capsys):
    from simprune.study.recipe import load_study

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x\n')
    with pytest.raises(ValueError, match=rf"{bad}: not valid TOML"):
        load_study(bad)
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert f"{bad}: not valid TOML" in capsys.readouterr().err


def test_results_percentages_are_rounded(data_root, tmp_path):
    """``results.json`` holds 12.5, not 12.500000000000002 (4 decimals: exact for any test set
    of up to 10,000 images and for 64-image tiny runs, where one image is 1.5625%)."""
    trainer = tiny_trainer(data_root, tmp_path / "run", max_steps=1, knn_test=30)
    trainer.step = trainer.total_steps
    res = trainer._evaluate(final=True)
    for key in ("knn_top1", "knn_top5"):
        assert res[key] == round(res[key], 4) and len(repr(res[key])) <= 8, res
    json.dumps(res)
