"""``held_out`` / ``train_on`` in real (tiny) runs: training reads only its part, evaluation's
labelled images (k-NN bank, linear probe) come from the held-out part, in the trainer and in
``simprune eval``, and a fine-tuning run can train on the held-out part alone."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch
from train_testkit import TINY, with_heads

from simprune.cli import main
from simprune.config import make_config
from simprune.data.split import held_out_rows
from simprune.train.loop import Trainer, TrainingError


def trainer(data_root, out, **over):
    torch.set_num_threads(1)
    cfg = make_config(with_heads({**TINY, "framework": "mocov3", "data": str(data_root), "out": str(out),
                                  **over}))
    return Trainer(cfg)


def test_training_never_reads_a_held_out_image_and_the_bank_is_the_held_out_part(data_root, tmp_path,
                                                                                   monkeypatch):
    t = trainer(data_root, tmp_path / "run", held_out=1000, train_subset=48, knn_train=0)
    held, rest = held_out_rows(50000, 1000)
    assert torch.equal(t.train_set.rows, rest) and torch.equal(t.bank_set.rows, held)
    base = t.train_set.dataset
    read: dict[str, set[int]] = {"train": set(), "eval": set()}
    phase = ["train"]
    real_get, real_eval = base.get_batch, t._evaluate_inner

    def get_batch(idx):
        read[phase[0]].update(torch.as_tensor(idx).tolist())
        return real_get(idx)

    def evaluate(final):
        phase[0] = "eval"
        return real_eval(final)

    monkeypatch.setattr(base, "get_batch", get_batch)
    monkeypatch.setattr(t, "_evaluate_inner", evaluate)
    result = t.run()
    assert 0 < len(read["train"]) <= 48 and not read["train"] & set(held.tolist())
    assert read["eval"] == set(held.tolist())  # the whole bank, nothing else of the train split
    assert result["knn_train"] == 1000

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["eval", "--ckpt", str(tmp_path / "run"), "--knn-train", "0", "--knn-test", "32",
                     "--json"]) == 0
    assert json.loads(out.getvalue())["knn_train"] == 1000  # simprune eval: the same bank


def test_a_run_can_train_on_the_held_out_part_alone(data_root, tmp_path):
    t = trainer(data_root, tmp_path / "run", held_out=64, train_on="held_out", train_subset=0,
                framework="supervised", knn_test=32)
    assert torch.equal(t.train_set.rows, held_out_rows(50000, 64)[0])
    assert (len(t.train_set), t.steps_per_epoch, t.data.num_classes) == (64, 4, 10)


@pytest.mark.parametrize("over, message", [
    ({"held_out": 50000}, "held_out 50000 leaves no training images of the 50000 in the split"),
    ({"held_out": 49900, "train_subset": 200},
     r"train_subset 200 is larger than the 100 images of cifar10's training split \(rest part of "
     r"held_out 49900\)"),
])
def test_a_held_out_part_that_does_not_fit_is_refused_before_anything_is_written(data_root, tmp_path,
                                                                                  over, message):
    with pytest.raises(TrainingError, match=message):
        trainer(data_root, tmp_path / "run", **over)
    assert not (tmp_path / "run").exists()
