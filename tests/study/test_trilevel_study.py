"""The Tri-Level study recipe (studies/trilevel_cpu.toml) builds its cells, and a study of a
classifier (supervised, trilevel) is reported by its test top-1: finished cells are recognised,
the table says test top-1, the example level's FLOPs count its fewer steps per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_testkit import REPO, read_csv, study_args

from simprune.study import run_study
from simprune.study.flops import epoch_share, flops_ratio
from simprune.study.recipe import load_study
from simprune.study.results import is_finished, top1_metric, top1_of
from simprune.train import loop


def test_the_study_recipe_has_every_cell():
    study = load_study(REPO / "studies" / "trilevel_cpu.toml")
    assert study.seeds == [0, 1] and len(study.cells) == 12
    got = {(c.method, c.seed): c.config for c in study.cells}
    for cfg in got.values():
        assert cfg.framework == "trilevel" and cfg.epochs == 50 and cfg.train_subset == 5120
    dense, example, refresh = got[("Dense", 0)], got[("Example 0.8", 0)], got[("Random refresh 0.8", 1)]
    assert dense.reducer.method == "dense" and dense.fw.example == "off"
    assert example.reducer.method == "dense" and example.fw.example == "forgetting"
    assert refresh.fw.example == "random" and refresh.fw.example_keep == 0.8
    token, attention, tri = got[("Token", 0)], got[("Attention 0.3", 0)], got[("Tri-Level", 0)]
    assert (token.reducer.keep_rate, token.reducer.options, token.fw.example) == (0.8, {}, "off")
    assert (attention.reducer.keep_rate, attention.reducer.options) == (1.0, {"attn_keep": 0.3})
    assert (tri.reducer.keep_rate, tri.reducer.options["attn_keep"], tri.fw.example) == (
        0.8, 0.3, "forgetting")
    assert tri.reducer.keep_warmup == [0.03, 0.36] == attention.reducer.keep_warmup
    # the example level: 4096 of 5120 images in batches of 128, every window 5 epochs
    assert epoch_share(example) == 0.8 and epoch_share(dense) == 1.0
    assert flops_ratio(example) == 0.8 and flops_ratio(dense) == 1.0


def test_results_of_a_classifier_count_as_finished():
    res = {"finished": True, "top1": 41.5, "top5": 88.0}
    assert is_finished(res) and top1_of(res) == 41.5 and top1_metric(res) == "test"
    knn = {"finished": True, "knn_top1": 30.0}
    assert is_finished(knn) and top1_metric(knn) == "knn"
    assert not is_finished({"finished": True, "top5": 80.0})


class ClassifierTrainer:
    """A Trainer that writes a finished classifier's results.json at once."""

    def __init__(self, cfg) -> None:  # noqa: ANN001
        self.cfg, self.step, self.total_steps = cfg, 0, 2

    def run(self) -> dict:
        top1 = 40.0 + (self.cfg.fw.example != "off") + self.cfg.seed
        res = {"step": 2, "total_steps": 2, "finished": True, "train_seconds": 10.0 + top1,
               "top1": top1, "top5": 90.0, "test": 64}
        Path(self.cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(self.cfg.out) / "results.json").write_text(json.dumps(res))
        return res


def test_a_classifier_study_reports_test_top1(tmp_path, monkeypatch, data_root):
    monkeypatch.setattr(loop, "Trainer", ClassifierTrainer)
    out = tmp_path / "runs" / "tri"
    study = tmp_path / "tri.toml"
    study.write_text(f'''name = "tri"
base = "{REPO / "configs" / "cifar10_trilevel.toml"}"
seeds = [0, 1]
[overrides]
model = "vit_nano_patch4_32"
train_subset = 1280
epochs = 10.0
[[methods]]
name = "Dense"
method = "dense"
example = "off"
[[methods]]
name = "Example 0.8"
method = "dense"
example = "forgetting"
''')
    assert run_study(study_args("--config", str(study), "--out", str(out), "--set",
                                f"data={data_root}")) == 0
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["seeds_finished"]) for r in rows] == [("Dense", "2"), ("Example 0.8", "2")]
    dense, example = rows
    assert dense["knn_top1_mean"] == "" and float(dense["test_top1_mean"]) == pytest.approx(40.5)
    assert float(example["test_top1_mean"]) == pytest.approx(41.5)
    assert float(example["flops_pct_of_dense"]) == pytest.approx(80.0)
    assert float(example["time_pct_of_dense"]) == pytest.approx(100 * 51.5 / 50.5, abs=0.01)
    md = (out / "results.md").read_text()
    assert "| Method | Keep rate | Test top-1 (%) |" in md
    assert "| Dense | 1 (dense) | 40.50 ± 0.71 |" in md and "| Example 0.8 | — | 41.50 ± 0.71 |" in md
    cells = read_csv(out / "cells.csv")
    assert [c["top1"] for c in cells] == ["40.0000", "41.0000", "41.0000", "42.0000"]
