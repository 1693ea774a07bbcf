"""Cost of the distillation framework: ``bench flops`` and ``bench cost`` build it without a teacher
file (a randomly initialised frozen teacher, said on stderr and in the config), or with a real one
when a path is given; ``bench micro --variant infer`` gives the student's inference MACs per image
(counted FLOPs / 2) and throughput ratio."""

from __future__ import annotations

import argparse
import json

import torch
from safetensors.torch import save_file

from simprune.bench.cost import main as cost_main
from simprune.bench.flops import add_flops_args, run_flops
from simprune.bench.framework_defaults import bench_defaults
from simprune.bench.micro import add_micro_args, run_micro
from simprune.models import create_model

NANO = "vit_nano_patch4_32"


def flops_json(capsys, *argv: str) -> tuple[dict, str]:
    parser = argparse.ArgumentParser()
    add_flops_args(parser)
    assert run_flops(parser.parse_args([*argv, "--json"])) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_bench_flops_counts_distill_with_a_random_teacher(capsys):
    torch.set_num_threads(1)
    report, err = flops_json(capsys, "--framework", "distill", "--model", NANO, "--method", "evit",
                             "--keep-rate", "0.5", "--set", "teacher.model=vit_micro_patch4_32")
    assert "RANDOMLY INITIALISED frozen vit_micro_patch4_32" in err and "cost counting only" in err
    assert report["config"]["distill"]["random_teacher"] is True
    assert 0.0 < report["flops_ratio"] < 1.0
    teacher = report["parts"]["teacher.backbone"]
    assert teacher["ratio"] == 1.0 and teacher["gflops"] > 0  # the teacher forward is counted, dense
    assert [p["student"]["tokens_out"] for p in report["tokens"]] == [33, 18, 10]


def test_a_given_teacher_path_is_used_and_nothing_is_set(tmp_path, capsys):
    net = create_model("vit_micro_patch4_32", reduce_at=())
    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    assert bench_defaults({}, {"framework": "distill", "teacher_path": str(path)}) == {}
    assert bench_defaults({"framework": "distill", "teacher": {"path": "x"}}, {}) == {}
    assert bench_defaults({}, {"framework": "distill"}) == {"distill.random_teacher": True}
    assert bench_defaults({}, {"framework": "dino"}) == {}
    report, err = flops_json(capsys, "--framework", "distill", "--model", NANO, "--method", "tome",
                             "--keep-rate", "0.7", "--set", f"teacher.path='{path}'",
                             "--set", "teacher.model=vit_micro_patch4_32")
    assert "RANDOMLY" not in err and report["config"]["distill"]["random_teacher"] is False
    assert 0.0 < report["flops_ratio"] < 1.0


def test_bench_cost_times_the_distillation_step_with_the_teacher(tmp_path, capsys):
    out = tmp_path / "cost"
    argv = ["--framework", "distill", "--model", NANO, "--batch-size", "4", "--warmup", "1",
            "--repeats", "2", "--threads", "1", "--methods", "evit", "--keep-rates", "0.5",
            "--set", "teacher.model=vit_micro_patch4_32", "--json", "--no-plot", "--out", str(out)]
    assert cost_main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in res["rows"]] == ["dense", "evit"]
    assert res["notes"] == ["set for cost counting (no file is read): distill.random_teacher = True"]
    assert 0.0 < res["rows"][1]["flops_ratio"] < 1.0 and res["rows"][1]["time_ratio"] > 0


def test_micro_infer_reports_macs_per_image_and_throughput(capsys):
    parser = argparse.ArgumentParser()
    add_micro_args(parser)
    args = parser.parse_args(["--case", f"{NANO}:4", "--variant", "infer", "--reducer", "evit",
                              "--keep-rate", "0.5", "--warmup", "0", "--repeats", "1", "--trim-heap",
                              "--json"])
    assert run_micro(args) == 0
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["variant"] == "infer" and r["reducer"] == "evit"
    assert r["throughput_ratio"] == r["dense_s"] / r["pruned_s"]
    assert r["macs_per_image"] / r["dense_macs_per_image"] == r["flops_ratio"]
    assert 0.45 < r["flops_ratio"] < 0.6  # 64 -> 33 -> 18 -> 10 tokens at blocks 4, 7, 10
    # a dense 48-wide ViT/4 on 32 px: 12 blocks of 65 tokens, ~26.6 M MACs
    assert 25e6 < r["dense_macs_per_image"] < 28e6
