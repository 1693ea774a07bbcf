"""FLOPs of the real training step (``simprune bench flops``): any registered framework × reducer,
token counts from the run's own records, a framework registered in the test, the CLI, micro."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from simprune.bench.flops import add_flops_args, dense_config, run_flops, step_flops, step_report
from simprune.bench.micro import add_micro_args, run_micro
from simprune.config import make_config
from simprune.data.augment import OneCropAugment, OneCropConfig
from simprune.drive import forward_reduced
from simprune.frameworks import DENSE, FRAMEWORKS, Framework, StepOutput
from simprune.frameworks.parts import build_backbone, build_plans
from simprune.reducers import REDUCERS
from simprune.tokens import num_keep

NANO = "vit_nano_patch4_32"
N_PATCHES = 64  # 32 px / patch 4
#: small heads per framework, so every pairing counts in a fraction of a second
SMALL = {"dino": {"out_dim": 64, "head_hidden": 32, "bottleneck": 16},
         "mocov3": {"moco_hidden": 32, "moco_dim": 16},
         # a random frozen teacher (the student's architecture): what `bench flops` sets itself
         # when no teacher path is given (tests/bench/test_distill_cost.py)
         "distill": {"kd_random_teacher": True}}


def config(framework: str, method: str = DENSE, keep_rate: float = 0.7, **extra):
    over = {"framework": framework, "model": NANO, "drop_path": 0.0, **SMALL.get(framework, {}), **extra}
    if method != DENSE:
        over.update({"method": method, "keep_rate": keep_rate})
    return make_config(over)


def pairings() -> list[tuple[str, str]]:
    out = []
    for fw in FRAMEWORKS.names():
        for method in [DENSE, *REDUCERS.names()]:
            if FRAMEWORKS.get(fw).accepts_reducer(method):
                out.append((fw, method))
    return out


def test_every_framework_reducer_pairing_has_a_flops_ratio():
    seen = pairings()
    assert {fw for fw, _ in seen} == set(FRAMEWORKS.names())
    #: pairings that need an option to be valid: DINOv2's iBOT loss reads the masked positions,
    #: which Expediting ViT must restore (reconstruction after the last block)
    needs = {("dinov2", "expedite"): {"reducer_options": {"recon_at": 12}, "reduce_at": [4, 12]}}
    for fw, method in seen:
        report = step_report(config(fw, method, **needs.get((fw, method), {})))
        ratio = report["flops_ratio"]
        assert math.isfinite(ratio) and 0.0 < ratio <= 1.05, (fw, method, ratio)
        if FRAMEWORKS.get(fw).cost_masks:  # MAE, PCAE: their cost_reference is MAE at mask 0.75
            assert report["reference"].startswith("mae mask 0.75") and report["train_flops"] > 0
        elif method == DENSE:
            assert ratio == 1.0
        else:  # one record per reduction point
            points = needs.get((fw, method), {}).get("reduce_at", [4, 7, 10])
            assert len(report["tokens"]) == len(points), (fw, method)


@pytest.mark.parametrize("framework", ["supervised", "mocov3", "dino"])
def test_dense_is_exactly_one_and_lower_keep_rate_costs_less(framework):
    dense = step_flops(config(framework))
    assert step_report(config(framework))["flops_ratio"] == 1.0
    assert step_flops(dense_config(config(framework, "evit", 0.7))).total == dense.total
    half = step_flops(config(framework, "evit", 0.5)).total
    seven = step_flops(config(framework, "evit", 0.7)).total
    assert half < seven < dense.total
    trained = sum(v for k, v in dense.parts.items() if k.startswith("student."))
    assert dense.backward == pytest.approx(2 * trained, rel=0.05)  # backward ≈ 2 × trained forward


def expected_tokens(method: str, rate: float, n: int = N_PATCHES, points: int = 3) -> list[int]:
    """The drivers' rule: K = round(keep · N) of the tokens arriving, plus the reducer's own."""
    out = []
    for _ in range(points):
        n = num_keep(n, rate) + REDUCERS.get(method).adds_tokens
        out.append(n)
    return out


@pytest.mark.parametrize("framework,method,rate", [
    ("supervised", "evit", 0.7), ("supervised", "tome", 0.5), ("mocov3", "simprune", 0.8),
    ("mocov3", "evit", 0.7), ("dino", "random", 0.6),
])
def test_counted_tokens_follow_the_drivers(framework, method, rate):
    got = step_flops(config(framework, method, rate))
    want = expected_tokens(method, rate)
    assert [p["student"]["tokens_out"] for p in got.points] == want
    assert got.points_source == "points"  # every framework returns its records
    assert [p["student"]["tokens_in"] for p in got.points] == [N_PATCHES, *want[:-1]]
    assert [p["block"] for p in got.points] == [4, 7, 10]
    if framework != "supervised":  # two branches, reduced together
        assert [p["teacher"]["tokens_out"] for p in got.points] == want
    else:
        assert all("teacher" not in p for p in got.points)
    if method == "evit":  # the fused token is counted
        assert want[0] == num_keep(N_PATCHES, rate) + 1


def test_dino_local_views_are_counted():
    plain = step_flops(config("dino", "simprune", 0.7))
    local = step_flops(config("dino", "simprune", 0.7, local_views=2, local_size=16))
    assert local.total > plain.total
    assert local.parts["student.backbone"] > plain.parts["student.backbone"]
    assert local.parts["teacher.backbone"] == plain.parts["teacher.backbone"]  # globals only
    n_local = 16  # 16 px / patch 4
    assert [p["local"]["tokens_out"] for p in local.points] == expected_tokens("simprune", 0.7,
                                                                                n_local)
    assert all("local" not in p for p in plain.points)


@dataclass
class ToyConfig:
    """A made-up framework's section."""

    width: int = 8


class Toy(Framework):
    """One backbone and a small projection; the loss is the projection's squared norm."""

    Config: ClassVar[type] = ToyConfig

    def __init__(self, backbone, plan, width: int) -> None:  # noqa: ANN001
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "head": nn.Linear(backbone.embed_dim, width)})
        self.plan = plan

    @classmethod
    def build(cls, cfg, data):  # noqa: ANN001, ANN206
        return cls(build_backbone(cfg, data), build_plans(cfg)[0], cfg.fw.width)

    def build_augment(self, cfg, data):  # noqa: ANN001, ANN201
        return OneCropAugment(OneCropConfig(size=cfg.global_size, mean=data.mean, std=data.std))

    def forward(self, batch, progress):  # noqa: ANN001, ANN201
        out = forward_reduced(self.student["backbone"], batch.views.globals[0], self.plan.reducer,
                              self.plan.keep_rate(progress.t))
        per = self.student["head"](out.cls).pow(2).mean(-1)
        return StepOutput(per.mean(), per.detach(), {}, out.points)


def test_a_framework_registered_here_gets_flops_without_bench_changes():
    name = "toy_flops_test"
    FRAMEWORKS.register(name)(Toy)
    try:
        dense = step_report(make_config({"framework": name, "model": NANO, "toy_flops_test.width": 4}))
        assert dense["flops_ratio"] == 1.0
        assert all(p["student"]["tokens_out"] == N_PATCHES for p in dense["tokens"])
        report = step_report(make_config({"framework": name, "model": NANO, "method": "evit",
                                          "keep_rate": 0.5}))
        assert 0.0 < report["flops_ratio"] < 1.0
        assert [p["student"]["tokens_out"] for p in report["tokens"]] == expected_tokens("evit", 0.5)
        assert report["tokens_source"] == "points"
        assert report["parts"]["student.head"]["ratio"] == 1.0
    finally:
        FRAMEWORKS.unregister(name)
    assert name not in FRAMEWORKS


def test_registry_unregister():
    with pytest.raises(KeyError, match="not registered"):
        FRAMEWORKS.unregister("no_such_framework")


def flops_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flops_args(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("framework,method,rate,extra", [
    ("supervised", "evit", "0.7", ()),
    ("mocov3", "simprune", "0.8", ("--set", "moco_hidden=64")),
])
def test_cli_json_has_flops_ratio(capsys, framework, method, rate, extra):
    assert run_flops(flops_args("--framework", framework, "--model", "vit_micro_patch4_32",
                                "--method", method, "--keep-rate", rate, *extra, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.5 < report["flops_ratio"] < 1.0
    assert report["framework"] == framework and report["method"] == method
    assert report["global_size"] == 32 and report["dataset"] == "cifar10"


def test_cli_table_and_options(capsys):
    assert run_flops(flops_args("--framework", "dino", "--model", NANO, "--method", "attn_topk",
                                "--reducer-opt", "attn_keep=0.5", "--set", "local_views=2",
                                "--set", "out_dim=64", "--reduce-at", "3", "6", "9")) == 0
    out = capsys.readouterr().out
    assert "step (fwd + bwd)" in out and "(block 3): student 64->51" in out and "local 16->" in out


@pytest.mark.parametrize("argv,needle", [(("--method", "nope"), "method 'nope'; known: dense"),
                                         (("--model", "nope"), "unknown model"),
                                         (("--framework", "nope"), "unknown framework"),
                                         (("--keep-rate", "1.5"), "keep"),
                                         (("--framework", "mocov3", "--set", "out_dim=8"), "out_dim"),
                                         (("--framework", "supervised", "--method", "simprune"),
                                          "pair reducer")])
def test_cli_bad_names_exit_2(capsys, argv, needle):
    assert run_flops(flops_args("--model", NANO, *argv)) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_micro_runs_and_reports_json(capsys):
    """A smoke run of the benchmark script (no timing assertion)."""
    parser = argparse.ArgumentParser()
    add_micro_args(parser)
    args = parser.parse_args(["--case", "vit_nano_patch4_32:4", "--warmup", "0", "--repeats", "1",
                              "--trim-heap", "--json"])
    torch.manual_seed(0)
    assert run_micro(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["variant"], r["reducer"]) for r in out["results"]] == [("student", "evit_nofuse"),
                                                                       ("pair", "simprune")]
    for r in out["results"]:
        assert 0.5 < r["flops_ratio"] < 1.0
