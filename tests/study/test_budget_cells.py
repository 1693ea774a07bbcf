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
