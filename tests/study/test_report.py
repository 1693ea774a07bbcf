"""The report of a tiny real study (2 methods × 1 seed × 2 steps on CIFAR-10): table, CSVs, plot,
--report-only, and committed reports never overwritten silently."""

from __future__ import annotations

import json

import pytest
from study_testkit import NoTraining, read_csv, study_args, write_study

from simprune.study import run_study
from simprune.study.report import CSV_COLUMNS
from simprune.train import loop


def test_report_never_overwrites_outside_runs_silently(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    recipe = write_study(tmp_path)
    published = tmp_path / "docs" / "study"
    published.mkdir(parents=True)
    (published / "results.md").write_text("committed figures\n")
    args = ["--config", str(recipe), "--out", str(published), "--report-only"]
    with pytest.raises(ValueError, match="not under a runs/ folder"):
        run_study(study_args(*args))
    assert (published / "results.md").read_text() == "committed figures\n"
    assert run_study(study_args(*args, "--overwrite-report")) == 0
    md = (published / "results.md").read_text()
    assert "Unfinished cells (2 of 2" in md and "not started" in md


def test_report_table_csv_plot(finished_study):
    recipe, out, _ = finished_study
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == CSV_COLUMNS
    assert [(r["method"], r["reducer"], r["keep_rate"]) for r in rows] == [
        ("Dense", "dense", "1.000"), ("SimPrune sliding", "simprune", "0.800")]
    dense, pruned = rows
    assert float(dense["flops_pct_of_dense"]) == pytest.approx(100.0)
    assert 60.0 < float(pruned["flops_pct_of_dense"]) < 100.0
    assert float(dense["time_pct_of_dense"]) == pytest.approx(100.0)
    assert float(pruned["time_pct_of_dense"]) > 0
    for r in rows:
        assert (r["seeds_finished"], r["seeds_planned"]) == ("1", "1")
        assert 0.0 <= float(r["knn_top1_mean"]) <= 100.0 and 0.0 <= float(r["linear_top1_mean"]) <= 100.0
        assert r["knn_top1_std"] == ""  # one seed: no std
        res = json.loads((out / ("dense" if r["reducer"] == "dense" else "simprune-sliding_kr0.8")
                          / "seed0" / "results.json").read_text())
        assert float(r["knn_top1_mean"]) == pytest.approx(res["knn_top1"], abs=1e-4)
        assert float(r["linear_top1_mean"]) == pytest.approx(res["linear_top1"], abs=1e-4)
    cells = read_csv(out / "cells.csv")
    assert [(c["method"], c["seed"], c["state"], c["step"]) for c in cells] == [
        ("Dense", "0", "finished", "2"), ("SimPrune sliding", "0", "finished", "2")]
    md = (out / "results.md").read_text()
    assert "| Method | Keep rate | k-NN top-1 (%) | Linear top-1 (%) | Training FLOPs (% of dense)" in md
    assert "| Dense | 1 (dense) |" in md and "| SimPrune sliding | 0.8 |" in md
    assert f"simprune study --config {recipe} --out {out}" in md
    assert "Seeds: 0" in md and "Total wall time" in md and "All 2 cells finished" in md
    assert "noisy" in md
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    import matplotlib.image

    assert matplotlib.image.imread(out / "tradeoff.png").ndim == 3


def test_report_only_regenerates(finished_study, monkeypatch):
    recipe, out, _ = finished_study
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    before = (out / "results.csv").read_text()
    for name in ("results.csv", "results.md", "tradeoff.png", "cells.csv"):
        (out / name).unlink()
    assert run_study(study_args("--config", str(recipe), "--out", str(out), "--report-only")) == 0
    assert (out / "results.csv").read_text() == before
    assert (out / "results.md").is_file() and (out / "tradeoff.png").is_file()
