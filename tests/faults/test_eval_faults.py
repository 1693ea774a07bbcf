"""Evaluation faults: a ``knn_k`` the k-NN bank cannot serve is refused before the first step (and
by ``simprune eval``) with one line naming it, the bank's size and the valid range; the result line
prints the k that voted; ``simprune eval`` finds the run's data folder without ``$SIMPRUNE_DATA``
and says in one line what to do when that folder is gone."""

from __future__ import annotations

import shutil
import time

import torch
from faultkit import run, train_argv
from test_faults import one_line

from simprune.cli import main


def test_knn_k_larger_than_the_bank_fails_before_the_first_step(data_root, tmp_path):
    out = tmp_path / "run"
    started = time.perf_counter()
    res = run(train_argv(out, eval_at_end=True, knn_k=300), data_root)
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert ("knn_k 300 is larger than the k-NN bank of 256 images (knn_train 256 of 50000 labelled "
            "images); valid: 1 to 256, or raise knn_train") in line, line
    assert "step 1/" not in res.stdout and not out.exists()
    assert time.perf_counter() - started < 60


def test_eval_refuses_a_knn_k_larger_than_the_bank_and_prints_the_k_used(reference, data_root, capsys):
    ckpt = ["--ckpt", str(reference[0]), "--data", str(data_root), "--knn-test", "32"]
    assert main(["eval", *ckpt, "--knn-train", "64", "--knn-k", "65"]) == 2
    err = capsys.readouterr().err
    assert "knn_k 65 is larger than the k-NN bank of 64 images" in err and "valid: 1 to 64" in err
    assert main(["eval", *ckpt, "--knn-train", "64", "--knn-k", "64"]) == 0
    assert "k=64, bank 64, test 32" in capsys.readouterr().out


def test_eval_finds_the_runs_data_folder_and_says_when_it_is_gone(reference, data_root, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.delenv("SIMPRUNE_DATA", raising=False)
    assert main(["eval", "--ckpt", str(reference[0]), "--knn-test", "32"]) == 0  # no --data, no env
    assert "k-NN top-1" in capsys.readouterr().out
    moved = tmp_path / "moved"
    shutil.copytree(reference[0], moved)
    saved = torch.load(moved / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["config"]["data"] == str(data_root.absolute())
    gone = tmp_path / "gone"
    saved["config"]["data"] = str(gone)
    torch.save(saved, moved / "checkpoint.pt")
    assert main(["eval", "--ckpt", str(moved), "--knn-test", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simprune: error: ")
    assert f"the data folder '{gone}' that {moved} was trained on no longer exists" in err
    assert "pass --data DIR or set SIMPRUNE_DATA=DIR" in err
    monkeypatch.setenv("SIMPRUNE_DATA", str(data_root))
    assert main(["eval", "--ckpt", str(moved), "--knn-test", "32"]) == 0
    captured = capsys.readouterr()
    assert f"simprune: warning: the data folder '{gone}'" in captured.err
    assert f"using $SIMPRUNE_DATA ({data_root})" in captured.err
    assert main(["eval", "--ckpt", str(moved), "--knn-test", "32", "--data", str(data_root)]) == 0
    assert "warning" not in capsys.readouterr().err
