"""The analytic FLOPs model against torch's FLOP counter and against the drivers' token counts."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from simprune.bench.flops import (
    StepConfig,
    add_flops_args,
    count_flops,
    dual_forward_flops,
    forward_flops,
    matmul_flops,
    run_flops,
    step_flops,
    step_report,
    train_flops,
)
from simprune.bench.micro import add_micro_args, run_micro
from simprune.drive import dual_forward, forward_reduced
from simprune.models import create_model
from simprune.reducers import create_reducer

ONE_BRANCH = [
    (None, {}),
    ("random", {}),
    ("evit", {}),
    ("evit_nofuse", {}),
    ("tome", {}),
    ("mean_sim", {}),
    ("attn_topk", {"attn_keep": 0.5}),
]
RATES = [0.7, 0.3, (0.5, 1.0, 0.9), 0.99]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1.0)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in ("vit_nano_patch4_32", "vit_micro_patch4_32")}


def images(rows: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["vit_nano_patch4_32", "vit_micro_patch4_32"])
@pytest.mark.parametrize("method,kwargs", ONE_BRANCH)
def test_forward_matches_flop_counter(models, name, method, kwargs):
    model, x = models[name], images(2, 32)
    reducer = create_reducer(method, **kwargs) if method else None
    for rate in (0.7, 0.3):  # 0.3: ToMe needs several matching rounds
        with torch.no_grad():
            counted = count_flops(lambda: forward_reduced(model, x, reducer, rate))  # noqa: B023
        analytic = matmul_flops(forward_flops(name, method, rate, batch=2, reducer_kwargs=kwargs))
        assert rel(analytic, counted) < 0.02, (name, method, rate, analytic, counted)


@pytest.mark.parametrize("name", ["vit_nano_patch4_32", "vit_micro_patch4_32"])
@pytest.mark.parametrize("method", [None, "simprune", "evit", "tome", "random"])
def test_dual_forward_matches_flop_counter(models, name, method):
    """Student + teacher (+ local views) of dual_forward, SimPrune's matching included."""
    student, teacher = models[name], create_model(name).eval()
    batch, locals_ = 2, 3
    sg, tg, loc = images(2 * batch, 32, 1), images(2 * batch, 32, 2), images(locals_ * batch, 16, 3)
    reducer = create_reducer(method) if method else None
    with torch.no_grad():
        counted = count_flops(lambda: dual_forward(student, teacher, sg, tg, reducer, 0.7, 0.5, loc))
    analytic = matmul_flops(dual_forward_flops(name, method, 0.7, batch=batch, num_local=locals_,
                                               local_size=16))
    assert rel(analytic, counted) < 0.02, (name, method, analytic, counted)


@pytest.mark.parametrize("method", [None, "evit", "tome"])
def test_deit_tiny_224_matches_flop_counter(method):
    model = create_model("deit_tiny_patch16_224").eval()
    reducer = create_reducer(method) if method else None
    x = images(1, 224)
    with torch.no_grad():
        counted = count_flops(lambda: forward_reduced(model, x, reducer, 0.8))
    analytic = matmul_flops(forward_flops("deit_tiny_patch16_224", method, 0.8))
    assert rel(analytic, counted) < 0.02


def test_deit_tiny_224_simprune_dual_matches_flop_counter():
    student = create_model("deit_tiny_patch16_224").eval()
    teacher = create_model("deit_tiny_patch16_224").eval()
    with torch.no_grad():
        counted = count_flops(lambda: dual_forward(student, teacher, images(2, 224, 1), images(2, 224, 2),
                                                   create_reducer("simprune"), 0.8, 0.0))
    analytic = matmul_flops(dual_forward_flops("deit_tiny_patch16_224", "simprune", 0.8, batch=1))
    assert rel(analytic, counted) < 0.02


@pytest.mark.parametrize("method", ["evit", "evit_nofuse", "tome"])
def test_forward_backward_matches_flop_counter(method):
    """Backward = 2 × forward on the autograd path (patch-embedding input grad aside, < 1%)."""
    torch.manual_seed(0)
    model = create_model("vit_micro_patch4_32").train()
    reducer, x = create_reducer(method), images(4, 32)

    def step():
        forward_reduced(model, x, reducer, 0.7).cls.pow(2).mean().backward()

    counted = count_flops(step)
    analytic = train_flops({"student": forward_flops("vit_micro_patch4_32", method, 0.7, batch=4)})
    assert rel(analytic, counted) < 0.02


def points_of(records):
    return [(p.block, p.tokens_in, p.tokens_out) for p in records]


def plan_of(plan):
    return [(p.block, p.n_in, p.n_out) for p in plan]


@pytest.mark.parametrize("method,kwargs", ONE_BRANCH[1:])
@pytest.mark.parametrize("rate", RATES)
def test_token_counts_match_forward_reduced(models, method, kwargs, rate):
    model = models["vit_nano_patch4_32"]
    with torch.no_grad():
        real = forward_reduced(model, images(2, 32), create_reducer(method, **kwargs), rate)
    plan = forward_flops("vit_nano_patch4_32", method, rate, batch=2, reducer_kwargs=kwargs).plan
    assert plan_of(plan) == points_of(real.points)


@pytest.mark.parametrize("method", ["simprune", "random", "evit", "evit_nofuse", "tome", "mean_sim",
                                    "attn_topk", None])
@pytest.mark.parametrize("rate", RATES)
def test_token_counts_match_dual_forward(models, method, rate):
    student, teacher = models["vit_nano_patch4_32"], create_model("vit_nano_patch4_32").eval()
    reducer = create_reducer(method) if method else None
    with torch.no_grad():
        out = dual_forward(student, teacher, images(4, 32, 1), images(4, 32, 2), reducer, rate, 1.0,
                           images(6, 16, 3))
    branches = dual_forward_flops("vit_nano_patch4_32", method, rate, batch=2, num_local=3,
                                  local_size=16)
    assert plan_of(branches["student"].plan) == points_of(out.student.points)
    assert plan_of(branches["teacher"].plan) == points_of(out.teacher.points)
    assert plan_of(branches["local"].plan) == points_of(out.local.points)


def test_token_counts_follow_the_drivers_at_224():
    plan = forward_flops("deit_small_patch16_224", "evit", 0.7).plan
    assert plan_of(plan) == [(4, 196, 138), (7, 138, 98), (10, 98, 70)]  # 137+1, 97+1, 69+1
    s = dual_forward_flops("deit_small_patch16_224", "simprune", 0.8, num_local=6, local_size=96)
    assert plan_of(s["student"].plan) == [(4, 196, 157), (7, 157, 126), (10, 126, 101)]
    assert plan_of(s["local"].plan) == [(4, 36, 29), (7, 29, 23), (10, 23, 18)]


@pytest.mark.parametrize("method", ["simprune", "evit", "tome", "random"])
@pytest.mark.parametrize("framework", ["dino", "mocov3"])
def test_step_ratio_decreases_with_keep_rate(method, framework):
    ratios = [step_report(StepConfig(method=method, keep_rate=r, framework=framework))["flops_ratio"]
              for r in (1.0, 0.9, 0.8, 0.7, 0.5, 0.3)]
    assert all(a > b for a, b in zip(ratios, ratios[1:])), ratios
    assert ratios[0] == pytest.approx(1.0, abs=1e-3)  # only the teacher's CLS row at rate 1


@pytest.mark.parametrize("num_local", [0, 6])
def test_dino_deit_small_simprune_step_is_72_to_78_percent_of_dense(num_local):
    """Paper: 76% training FLOPs for DINO, DeiT-S, keep 0.8 at blocks 4/7/10."""
    report = step_report(StepConfig("deit_small_patch16_224", "simprune", 0.8, "dino",
                                    num_local=num_local, local_size=96))
    assert report["reduce_at"] == [4, 7, 10]
    assert 0.72 <= report["flops_ratio"] <= 0.78
    assert report["matching_share"] < 0.01  # appendix B: ~0.16% of a step


def test_simprune_matching_overhead_is_appendix_b_order():
    step = step_flops(StepConfig("deit_small_patch16_224", "simprune", 0.8))
    share = step.matching / step.total
    assert 0.0005 < share < 0.01
    # per pair at the first point: N·M·2D with N = M = 196 (student rows: 2 views × batch 1)
    first = 2 * (2 * 196 * 196 * 384)
    assert step.branches["student"].reducer.terms[0].flops == first


def test_step_parts_add_up_and_dense_has_no_reducer_work():
    dense = step_flops(StepConfig(method="dense", num_local=2))
    assert dense.parts["reducer"] == 0 and dense.matching == 0
    assert dense.parts["student_bwd"] == pytest.approx(2 * dense.parts["student_fwd"])
    pruned = step_flops(StepConfig(method="simprune", num_local=2))
    assert pruned.total == pytest.approx(sum(pruned.parts.values()))
    assert pruned.parts["student_head"] == dense.parts["student_head"]


def test_mocov3_rejects_local_views():
    with pytest.raises(ValueError, match="local"):
        step_flops(StepConfig(framework="mocov3", num_local=2))


def flops_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flops_args(parser)
    return parser.parse_args(list(argv))


def test_cli_json_has_flops_ratio(capsys):
    assert run_flops(flops_args("--model", "deit_small_patch16_224", "--method", "simprune",
                                "--keep-rate", "0.8", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.72 <= report["flops_ratio"] <= 0.78
    assert set(report["parts"]) >= {"student_fwd", "teacher_fwd", "reducer"}


def test_cli_table_and_options(capsys):
    assert run_flops(flops_args("--method", "attn_topk", "--reducer-opt", "attn_keep=0.5",
                                "--local-views", "2", "--reduce-at", "3", "6", "9")) == 0
    out = capsys.readouterr().out
    assert "total step" in out and "b3 196->157" in out


@pytest.mark.parametrize("argv,needle", [(("--method", "nope"), "unknown reducer"),
                                         (("--model", "nope"), "unknown model"),
                                         (("--keep-rate", "1.5"), "keep rate"),
                                         (("--reduce-at", "13"), "outside")])
def test_cli_bad_names_exit_2(capsys, argv, needle):
    assert run_flops(flops_args(*argv)) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_micro_runs_and_reports_json(capsys):
    """A smoke run of the benchmark script (no timing assertion)."""
    parser = argparse.ArgumentParser()
    add_micro_args(parser)
    args = parser.parse_args(["--case", "vit_nano_patch4_32:4", "--warmup", "0", "--repeats", "1",
                              "--trim-heap", "--json"])
    assert run_micro(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in out["results"]] == ["student", "simprune"]
    for r in out["results"]:
        assert r["counted_ratio"] == pytest.approx(r["flops_ratio"], abs=0.02)
