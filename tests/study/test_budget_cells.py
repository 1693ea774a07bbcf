"""A study method row with ``flops_budget``: one cell per seed, its keep rate solved from the budget
when the study is loaded; a keep rate in the same row is refused naming both."""

from __future__ import annotations

import pytest
from study_testkit import METHODS, write_study

from simprune.bench.budget import solve_keep_rate
from simprune.study.recipe import load_study

BUDGET_ROW = """
[[methods]]
name = "EViT budget"
method = "evit"
flops_budget = 0.7
"""


def test_budget_row_solves_its_keep_rate_once_per_row(tmp_path):
    study = load_study(write_study(tmp_path, methods=METHODS + BUDGET_ROW), seeds=[0, 1],
                       out=tmp_path / "runs")
    cells = [c for c in study.cells if c.method == "EViT budget"]
    assert [(c.slug, c.seed) for c in cells] == [("evit-budget_fb0.7", 0), ("evit-budget_fb0.7", 1)]
    solved = solve_keep_rate(cells[0].config, 0.7).keep_rate
    for c in cells:
        assert c.keep_rate == c.config.reducer.keep_rate == solved
        assert c.config.reducer.flops_budget == 0.7
    assert cells[0].label == f"EViT budget kr={solved:g}"


def test_budget_row_with_a_keep_rate_is_refused(tmp_path):
    row = BUDGET_ROW + "keep_rates = [0.9]\n"
    with pytest.raises(ValueError, match="method 'EViT budget': keep_rates \\[0.9\\] and flops_budget "
                                         "0.7 were both given"):
        load_study(write_study(tmp_path, methods=METHODS + row))


DYNAMIC_ROW = """
[[methods]]
name = "Dynamic"
method = "dynamic_simprune"
flops_budget = 0.78
"""


def test_a_reducer_owning_its_budget_reports_the_flops_its_runs_logged(tmp_path):
    """dynamic_simprune's cost follows its trained gates: its row's FLOPs are the mean of the
    ``flops`` each finished run logged (averaged per run, then over runs), not a counted step."""
    import json

    from simprune.study.report import aggregate
    from simprune.study.results import CellResult

    study = load_study(write_study(tmp_path, methods=METHODS + DYNAMIC_ROW), seeds=[0, 1],
                       out=tmp_path / "runs")
    cells = [c for c in study.cells if c.method == "Dynamic"]
    assert [c.keep_rate for c in cells] == [None, None]  # no keep rate is solved for it
    logged = {0: [1.0, 0.8, 0.7, 0.7], 1: [1.0, 0.6]}  # per-run means 0.8 and 0.8
    for c in cells:
        c.folder.mkdir(parents=True)
        lines = [json.dumps({"step": i, "loss": 1.0, "flops": f}) for i, f in enumerate(logged[c.seed])]
        lines.append(json.dumps({"step": 9, "knn_top1": 30.0}))  # an evaluation record: no flops
        (c.folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rows = aggregate([CellResult(c, "finished", 1, 1, {"knn_top1": 30.0, "train_seconds": 1.0})
                      for c in cells])
    assert rows[0].flops_pct == pytest.approx(80.0)
    one = aggregate([CellResult(cells[1], "finished", 1, 1, {"knn_top1": 30.0})])
    assert one[0].flops_pct == pytest.approx(80.0)
    unfinished = aggregate([CellResult(cells[0], "stopped", 1, 2, {})])
    assert unfinished[0].flops_pct is None


def test_dry_run_names_the_budget_of_a_reducer_owning_it(tmp_path, capsys):
    """Before training, no counted step says what a dynamic cell costs: the dry run names its
    budget and that nothing is logged yet, not the FLOPs of its untrained gates."""
    from study_testkit import study_args

    from simprune.study import run_study

    recipe = write_study(tmp_path, methods=METHODS + DYNAMIC_ROW)
    assert run_study(study_args("--config", str(recipe), "--out", str(tmp_path / "runs" / "d"),
                                "--dry-run")) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "Dynamic" in ln)
    assert "FLOPs set by its trained gates (budget 0.78 of dense), none logged yet" in line
