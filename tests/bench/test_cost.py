"""``simprune bench cost`` on a tiny model: files, ratios to dense, counted FLOPs, no overwrite.

Timing ratios are noisy on shared machines: they are only checked to be positive and finite.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest

from simprune.bench.cost import CSV_COLUMNS, add_cost_args, main, train_config

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "vit_nano_patch4_32", "--batch-size", "4", "--warmup", "1", "--repeats", "2",
        "--threads", "1"]
METHODS = ["simprune", "evit", "tome"]
RATES = [0.9, 0.7]


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    """One DINO run with local views, every method at two keep rates."""
    out = tmp_path_factory.mktemp("cost") / "dino"
    argv = [*TINY, "--framework", "dino", "--set", "local_views=2", "--methods", *METHODS,
            "--keep-rates", *map(str, RATES), "--set", "head_hidden=256", "--set", "out_dim=1024",
            "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "cost.json").read_text())
    with (out / "cost.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return out, res, rows


def test_files_are_written_and_well_formed(dino_run):
    out, res, rows = dino_run
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(res["rows"]) == 1 + len(METHODS) * len(RATES)
    assert [(r["method"], float(r["keep_rate"])) for r in rows] == [
        ("dense", 1.0), *((m, k) for m in METHODS for k in RATES)]
    for r, j in zip(rows, res["rows"]):
        assert float(r["time_ratio"]) == pytest.approx(j["time_ratio"])
        assert float(r["memory_ratio"]) == pytest.approx(j["memory_ratio"])
    assert res["framework"] == "dino" and res["model"] == "vit_nano_patch4_32"
    assert res["config"]["dino"]["local_views"] == 2 and res["memory_metric"] == "saved_for_backward"
    assert set(res["load_avg"]) == {"start", "timing_start", "timing_end"}
    png = (out / "cost.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_dense_ratios_are_one(dino_run):
    dense = dino_run[1]["rows"][0]
    assert dense["method"] == "dense" and dense["keep_rate"] == 1.0
    for key in ("time_ratio", "cpu_time_ratio", "flops_ratio", "memory_ratio",
                "saved_ratio", "augment_ratio", "forward_ratio", "backward_ratio", "update_ratio"):
        assert dense[key] == 1.0, key


def test_memory_below_dense_and_falls_with_keep_rate(dino_run):
    rows = dino_run[1]["rows"]
    for m in METHODS:
        mem = {r["keep_rate"]: r["memory_ratio"] for r in rows if r["method"] == m}
        assert mem[0.7] < mem[0.9] < 1.0, (m, mem)


def test_counted_flops_fall_with_keep_rate_and_match_bench_flops(dino_run):
    from simprune.bench.flops import step_flops
    from simprune.config import make_config

    rows = dino_run[1]["rows"]
    for m in METHODS:
        flops = {r["keep_rate"]: r["flops_ratio"] for r in rows if r["method"] == m}
        assert flops[0.7] < flops[0.9] < 1.0, (m, flops)
    # the same step counted by `bench flops` (same config, same batch) gives the same GFLOPs
    cfg = make_config(dino_run[1]["config"], {"method": "evit", "keep_rate": 0.7})
    evit = next(r for r in rows if r["method"] == "evit" and r["keep_rate"] == 0.7)
    assert step_flops(cfg, progress=0.5, batch_size=4).total / 1e9 == pytest.approx(
        evit["step_gflops"], rel=1e-6)


def test_time_ratios_are_positive_and_finite(dino_run):
    rows = dino_run[1]["rows"]
    for r in rows:
        for key in ("time_ratio", "cpu_time_ratio", "augment_ratio", "forward_ratio",
                    "backward_ratio", "update_ratio", "median_step_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert sum(r[f"{p}_share"] for p in ("augment", "forward", "backward", "update")) == (
            pytest.approx(1.0))
    sp = [r for r in rows if r["method"] == "simprune"]
    assert all(math.isfinite(r["simprune_vs_evit"]) and r["simprune_vs_evit"] > 0 for r in sp)
    assert all(r["simprune_vs_evit"] is None for r in rows if r["method"] != "simprune")


def test_never_overwrites(dino_run, capsys):
    out = dino_run[0]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*TINY, "--methods", "evit", "--keep-rates", "0.8", "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_mocov3_json(tmp_path, capsys):
    out = tmp_path / "moco"
    argv = [*TINY, "--framework", "mocov3", "--methods", "simprune", "evit", "--keep-rates", "0.8",
            "--set", "moco_hidden=128", "--json", "--no-plot", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert res["framework"] == "mocov3" and res["config"]["mocov3"]["hidden"] == 128
    assert sorted(p.name for p in out.iterdir()) == ["cost.csv", "cost.json"]
    assert [r["method"] for r in res["rows"]] == ["dense", "simprune", "evit"]
    assert all(r["flops_ratio"] < 1.0 for r in res["rows"][1:])
    assert res["rows"][1]["memory_ratio"] < 1.0


def test_matching_variant_against_its_base(tmp_path, capsys):
    """SimPrune's one-to-one matching is a method variant: same FLOPs counted (the matching is not
    a matrix product), its time over plain SimPrune's in vs_base, a wide method column."""
    from simprune.bench.cost import format_table

    out = tmp_path / "match"
    argv = [*TINY, "--framework", "mocov3", "--methods", "simprune", "simprune:matching=one_to_one",
            "--keep-rates", "0.7", "--set", "moco_hidden=128", "--json", "--no-plot", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    dense, plain, one = res["rows"]
    assert one["method"] == "simprune:matching=one_to_one"
    assert one["flops_ratio"] == plain["flops_ratio"] < 1.0
    assert plain["vs_base"] is None and dense["vs_base"] is None
    assert one["vs_base"] == pytest.approx(one["time_ratio"] / plain["time_ratio"])
    assert one["vs_base_cpu"] == pytest.approx(one["cpu_time_ratio"] / plain["cpu_time_ratio"])
    table = format_table(res).splitlines()
    header = next(ln for ln in table if ln.startswith("setting"))
    row = next(ln for ln in table if ln.startswith(one["label"] + " "))
    assert "simprune:matching=one_to_one" in one["label"] and "/base" in header
    # the columns stay aligned under the wide label: each figure ends where its heading ends
    assert header.index("time") + len("time") == row.index(f"{one['time_ratio']:.3f}") + 5
    assert f"{one['vs_base']:.3f}" in row
    with (out / "cost.csv").open(newline="") as f:
        assert float(list(csv.DictReader(f))[2]["vs_base"]) == pytest.approx(one["vs_base"])


def test_supervised_runs(tmp_path, capsys):
    out = tmp_path / "sup"
    argv = [*TINY, "--framework", "supervised", "--methods", "evit", "--keep-rates", "0.7",
            "--json", "--no-plot", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in res["rows"]] == ["dense", "evit"]
    assert 0.5 < res["rows"][1]["flops_ratio"] < 1.0


def test_trilevel_token_and_attention_levels(tmp_path, capsys):
    """Tri-Level's token level, attention level alone (keep 1) in both forms, and both together:
    the attention level's masked form costs dense FLOPs plus the selector, the sparse form fewer."""
    out = tmp_path / "tri"
    methods = ["attn_topk", "attn_topk:attn_keep=0.3", "attn_topk:attn_keep=0.3,attn_form=sparse"]
    argv = [*TINY, "--framework", "trilevel", "--methods", *methods, "--keep-rates", "1.0", "0.8",
            "--json", "--no-plot", "--out", str(out)]
    assert main(argv) == 0
    rows = {(r["method"], r["keep_rate"]): r for r in json.loads(capsys.readouterr().out)["rows"]}
    masked, sparse = "attn_topk:attn_keep=0.3", "attn_topk:attn_form=sparse,attn_keep=0.3"
    assert set(rows) == {("dense", 1.0), *((m, k) for m in ("attn_topk", masked, sparse)
                                           for k in (1.0, 0.8))}
    assert rows[("attn_topk", 1.0)]["flops_ratio"] == 1.0  # keep 1, no attention level: dense
    assert rows[(masked, 1.0)]["flops_ratio"] > 1.0  # the selector's q·kᵀ, nothing saved
    assert rows[(sparse, 1.0)]["flops_ratio"] < 1.0
    assert rows[(sparse, 0.8)]["flops_ratio"] < rows[("attn_topk", 0.8)]["flops_ratio"] < 1.0
    assert main([*TINY, "--methods", "attn_topk:attn_keep", "--out", str(tmp_path / "bad")]) == 2
    assert "key=value" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["--methods", "nonsense"],
    ["--methods", "evit", "--keep-rates", "1.5"],
    ["--framework", "mocov3", "--set", "local_views=2"],
    ["--framework", "supervised", "--methods", "simprune"],
    ["--framework", "nonsense"],
    ["--methods", "dense"],
    ["--set", "precision='fp16'"],
    ["--set", "nonsense_key=1"],
    ["--set", "keep_rate=0.5"],
    ["--framework", "mocov3", "--methods", "dynamic_simprune"],
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra):
    out = tmp_path / "bad"
    assert main([*TINY, *extra, "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not out.exists()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cost_args(parser)
    return parser.parse_args(argv)


def test_config_precedence_and_defaults():
    deit = train_config(parse([]))
    assert (deit.framework, deit.model, deit.batch_size) == ("dino", "deit_small_patch16_224", 8)
    assert (deit.global_size, deit.reducer.method) == (224, "dense")
    recipe = str(REPO / "configs" / "cifar10_mocov3_simprune.toml")
    cifar = train_config(parse(["--config", recipe]))
    assert (cifar.framework, cifar.batch_size, cifar.fw.hidden, cifar.global_size) == (
        "mocov3", 64, 1024, 32)
    assert cifar.reducer.method == "dense"
    flags = train_config(parse(["--config", recipe, "--set", "batch_size=16", "--set", "moco_hidden=512",
                                "--batch-size", "32"]))
    assert (flags.batch_size, flags.fw.hidden) == (32, 512)
    at = train_config(parse(["--reduce-at", "3", "6"]))
    assert at.reducer.reduce_at == [3, 6]


def test_the_grid_of_a_reducer_framework_is_one_group_against_dense():
    """plan_settings: the dense reference first, then every method x keep rate with the reduction
    points given; the comparison pairs the first two methods given."""
    from simprune.bench.cost import comparison, plan_settings

    cfg = train_config(parse([*TINY[:4], "--framework", "mocov3", "--reduce-at", "2", "3"]))
    plan = plan_settings(cfg, ["simprune", "evit"], [0.9, 0.7])
    assert [(c.reducer.method, c.reducer.keep_rate if c.reducer.method != "dense" else None)
            for _, c in plan] == [("dense", None), ("simprune", 0.9), ("simprune", 0.7), ("evit", 0.9),
                                  ("evit", 0.7)]
    assert {g for g, _ in plan} == {"mocov3 dense"}
    assert all(list(c.reducer.reduce_at) == [2, 3] for _, c in plan[1:])
    assert comparison(["evit", "tome:x=1", "simprune"]) == ("evit", "tome") and comparison(["evit"]) is None
    with pytest.raises(ValueError, match="masks nothing"):
        plan_settings(cfg, ["evit"], [0.9], mask_ratios=[0.8])
