"""The keep rate solved from a training-FLOPs budget (``simprune bench budget``, ``--flops-budget``).

On a small grid of models, frameworks (one-branch and pair reducers, local views, a fused token)
and budgets, the solved keep rate reaches the budget within one token's FLOPs, its fraction is the
one ``bench flops`` counts at that keep rate, and the two steps that bracket the budget are
adjacent steps of the token counts. Bad input is refused with the reachable range, and a keep rate
beside a budget is refused naming both.
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from simprune.bench.budget import (
    apply_flops_budget,
    candidate_rates,
    check_budget_overrides,
    main,
    max_tokens,
    solve_keep_rate,
)
from simprune.bench.flops import step_report, with_reducer
from simprune.config import make_config
from simprune.tokens import num_keep
from simprune.train.loop import plan_line

NANO = "vit_nano_patch4_32"
SMALL = {"dino": {"out_dim": 64, "head_hidden": 32, "bottleneck": 16},
         "mocov3": {"moco_hidden": 32, "moco_dim": 16}}


def config(framework, method, **extra):
    return make_config({"framework": framework, "model": NANO, "drop_path": 0.0, "method": method,
                        **SMALL.get(framework, {}), **extra})


GRID = [  # framework, method, extra keys, budget, patch tokens of the global view
    ("mocov3", "simprune", {}, 0.7, 64),
    ("supervised", "evit", {}, 0.6, 64),
    ("dino", "mctf", {"local_views": 2}, 0.8, 64),
    ("supervised", "tome", {"global_size": 32, "patch_size": 8, "reduce_at": [3, 6, 9]}, 0.75, 16),
]


@pytest.mark.parametrize("framework, method, extra, budget, tokens", GRID,
                         ids=[f"{g[0]}-{g[1]}-{g[3]}" for g in GRID])
def test_solved_keep_rate_meets_the_budget_and_agrees_with_bench_flops(framework, method, extra,
                                                                        budget, tokens):
    cfg = config(framework, method, **extra)
    sol = solve_keep_rate(cfg, budget)
    one_token = 1.0 / tokens  # a token's share of the dense step, an upper bound from the 1st point
    assert sol.below_flops_ratio <= budget < sol.above_flops_ratio
    assert sol.above_flops_ratio - sol.below_flops_ratio <= one_token
    assert abs(sol.flops_ratio - budget) <= one_token / 2  # the nearer of the two steps
    assert sol.keep_rate in (sol.below_keep_rate, sol.above_keep_rate)
    # the two steps are adjacent: no step of the token counts lies between them
    rates = candidate_rates(max_tokens(cfg))
    assert rates.index(sol.above_keep_rate) == rates.index(sol.below_keep_rate) + 1
    # the same count as `simprune bench flops` at the solved keep rate
    report = step_report(with_reducer(cfg, method, sol.keep_rate))
    assert report["flops_ratio"] == pytest.approx(sol.flops_ratio, rel=1e-12)
    assert report["tokens"] == sol.tokens
    assert sol.reachable[0] < budget < 1.0 <= sol.reachable[1] + 1e-3
    assert sol.evaluations <= 20
    if tokens == 16:  # the cheapest cell: --at-most takes the step below
        below = solve_keep_rate(cfg, budget, at_most=True)
        assert below.keep_rate == sol.below_keep_rate and below.flops_ratio <= budget


def test_candidates_are_the_steps_of_the_token_counts():
    """The candidates give every count tuple a keep rate can give, each exactly once, in order."""
    n_max = 12

    def counts(r):
        return tuple(num_keep(n, r) for n in range(1, n_max + 1))

    rates = candidate_rates(n_max)
    assert rates[-1] == 1.0 and rates == sorted(set(rates))
    seen = [counts(r) for r in rates]
    assert len(set(seen)) == len(seen) and seen == sorted(seen)
    fine = {counts(i / 20000) for i in range(1, 20001)}
    fine |= {counts(float(Fraction(2 * m + 1, 2 * n))) for n in range(1, n_max + 1) for m in range(n)}
    assert fine == set(seen)
    assert all(len(repr(r)) <= 6 for r in rates), "shortest decimals"


@pytest.mark.parametrize("budget", [1.0, 1.2, 0.05])
def test_budget_out_of_reach_names_the_range(budget):
    cfg = config("supervised", "evit")
    with pytest.raises(ValueError, match=r"out of reach.*reachable fractions are 0\.\d{4} \(one patch "
                                         r"token per point\) to 1\.\d{4}"):
        solve_keep_rate(cfg, budget)


@pytest.mark.parametrize("budget", [0, -0.5, "0.7", True])
def test_budget_must_be_a_positive_number(budget):
    with pytest.raises(ValueError, match="flops budget must be a fraction"):
        solve_keep_rate(config("supervised", "evit"), budget)


def test_dense_has_no_keep_rate_to_solve():
    with pytest.raises(ValueError, match="'dense': there is no keep rate to solve"):
        solve_keep_rate(make_config({"framework": "supervised", "model": NANO}), 0.7)


def test_keep_rate_and_budget_together_are_refused():
    with pytest.raises(ValueError, match="keep_rate 0.8 and flops_budget 0.7 were both given"):
        check_budget_overrides({"keep_rate": 0.8, "flops_budget": 0.7})
    check_budget_overrides({"keep_rate": 0.8, "flops_budget": 0})
    check_budget_overrides({"flops_budget": 0.7})


def test_apply_sets_the_keep_rate_and_the_plan_line_prints_it():
    cfg = config("supervised", "evit", flops_budget=0.6)
    solved, sol = apply_flops_budget(cfg)
    assert solved.reducer.keep_rate == sol.keep_rate != cfg.reducer.keep_rate
    assert f"flops budget 0.6: keep rate {sol.keep_rate:g} reaches" in solved.notes[-1]
    line = plan_line(solved, 10, 10, 640)
    assert line.endswith(f"; keep rate {sol.keep_rate:g} solved from flops budget 0.6")
    same, none = apply_flops_budget(config("supervised", "evit"))
    assert none is None and same.reducer.keep_rate == 0.8


def test_cli_acceptance_on_the_main_recipe(capsys):
    """``simprune bench budget --config configs/cifar10_mocov3_simprune.toml --flops 0.7 --json``"""
    from repo_paths import REPO

    rc = main(["--config", str(REPO / "configs" / "cifar10_mocov3_simprune.toml"), "--flops", "0.7",
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["flops_ratio"] - 0.7) <= 0.01 and 0 < out["keep_rate"] < 1
    assert out["method"] == "simprune" and out["framework"] == "mocov3"


@pytest.mark.parametrize("argv, needle", [
    (["--flops", "1.0"], "reachable fractions are"),
    (["--flops", "0.01"], "reachable fractions are"),
    (["--flops", "0.7", "--keep-rate", "0.8"], "--keep-rate 0.8 and --flops 0.7 were both given"),
    (["--flops", "0.7", "--method", "dense"], "there is no keep rate to solve"),
])
def test_cli_bad_input_exit_2(capsys, argv, needle):
    base = ["--framework", "supervised", "--model", NANO, "--method", "evit"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_refuses_keep_rate_beside_flops_budget(capsys):
    from simprune.cli import main as cli_main

    rc = cli_main(["train", "--framework", "supervised", "--model", NANO, "--method", "evit",
                   "--keep-rate", "0.8", "--flops-budget", "0.7"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--keep-rate 0.8 and --flops-budget 0.7 were both given" in err


def test_bench_budget_is_a_subcommand(capsys):
    from simprune.cli import main as cli_main

    rc = cli_main(["bench", "budget", "--framework", "supervised", "--model", NANO, "--method",
                   "tome", "--flops", "0.75", "--at-most"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "keep rate" in out and "bracketing steps" in out and "the one below is used" in out
