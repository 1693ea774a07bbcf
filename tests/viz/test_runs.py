"""Frameworks from checkpoints: another method on the same weights, backbone-only fallback."""

from __future__ import annotations

import torch
from viz_testkit import TINY, random_image, save_run

from simprune.config import make_config
from simprune.run import build_framework
from simprune.viz.runs import (
    config_for,
    framework_from_run,
    fresh_framework,
    load_runs,
    load_state,
    unique_steps,
)
from simprune.viz.trace import display_augment, trace_pruning


def test_other_method_loads_the_same_weights(tmp_path):
    save_run(tmp_path, step=5, total=10, method="simprune", reducer_options={"metric": "keys"})
    (run,) = load_runs([tmp_path])
    cfg, fw, notes = framework_from_run(run, "tome")
    assert cfg.reducer.method == "tome" and cfg.reducer.options == {} and notes == []
    assert fw.reducer.name == "tome" and fw.teacher_plan.reducer.name == "tome"
    for k, v in fw.state_dict().items():
        assert torch.equal(v, run.state[k]), k
    cfg, _, _ = framework_from_run(run)
    assert cfg.reducer.method == "simprune" and cfg.reducer.options == {"metric": "keys"}


def test_backbone_only_fallback_is_reported():
    _, fw = fresh_framework(TINY, "evit", seed=1)
    _, src = fresh_framework(TINY, "evit", seed=2)
    state = {k: v for k, v in src.state_dict().items() if "head" not in k}
    state["extra.param"] = torch.zeros(1)
    notes = load_state(fw, state)
    assert len(notes) == 1 and "backbones only" in notes[0]
    for k, v in fw.student["backbone"].state_dict().items():
        assert torch.equal(v, state[f"student.backbone.{k}"])


def test_config_for_keeps_the_run_settings():
    cfg = config_for(dict(TINY, method="evit", keep_rate=0.7), "simprune")
    assert cfg.reducer.method == "simprune" and cfg.reducer.keep_rate == 0.7 and cfg.model == TINY["model"]
    assert cfg.fw.out_dim == TINY["out_dim"] and cfg.fw.local_views == TINY["local_views"]


def test_same_step_twice_is_shown_once(tmp_path):
    save_run(tmp_path, step=40, total=50, name="checkpoint_000040.pt")
    save_run(tmp_path, step=50, total=50, name="checkpoint_000050.pt")
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "checkpoint_000050.pt").read_bytes())
    runs, twins = unique_steps(load_runs([tmp_path, tmp_path / "checkpoint.pt"]))
    assert [r.step for r in runs] == [40, 50] and len(twins) == 1
    assert twins[0][0].path.name == "checkpoint_000050.pt" and twins[0][1].path.name == "checkpoint.pt"
    assert runs[1].progress == 1.0


def test_switch_to_dense_drops_the_reducer_keys(tmp_path):
    save_run(tmp_path, step=5, total=10, method="simprune", keep_rate=0.6, window="prune_similar")
    (run,) = load_runs([tmp_path])
    assert run.config["reducer"]["window"] == "prune_similar"
    cfg, fw, notes = framework_from_run(run, "dense")
    assert cfg.reducer.method == "dense" and fw.reducer is None and notes == []
    assert any("reducer.keep_rate" in n and "reducer.window" in n for n in cfg.notes)
    trace = trace_pruning(fw, display_augment(cfg, fw), random_image(1), progress=0.5)
    assert trace.method == "dense" and trace.keep_rate == 1.0
    assert all(p.student.tokens_out == p.student.tokens_in for p in trace.points)
    # a dense config made directly: no keep_rate / window
    cfg = config_for(dict(TINY, method="dense"))
    assert cfg.reducer.method == "dense" and cfg.notes == []


def test_one_branch_method_drops_the_window(tmp_path):
    save_run(tmp_path, step=5, total=10, method="simprune", window="prune_similar", keep_rate=0.6)
    (run,) = load_runs([tmp_path])
    cfg, fw, _ = framework_from_run(run, "evit")
    assert cfg.reducer.method == "evit" and cfg.reducer.keep_rate == 0.6
    assert "window" not in cfg.to_dict()["reducer"] and fw.reducer.name == "evit"


def test_old_flat_checkpoint_config_is_upgraded(tmp_path):
    cfg = make_config(TINY, {"method": "evit", "keep_rate": 0.7})
    fw = build_framework(cfg)
    flat = {k: v for k, v in cfg.to_dict().items() if k not in ("reducer", "teacher", "dino")}
    flat.update(method="evit", keep_rate=0.7, window="sliding", reducer_options={}, moco_hidden=64,
                moco_dim=32, **{k: v for k, v in TINY.items() if k not in flat})
    torch.save({"config": flat, "framework": fw.state_dict(), "step": 3, "total_steps": 6},
               tmp_path / "checkpoint.pt")
    (run,) = load_runs([tmp_path])
    assert run.config["reducer"]["method"] == "evit" and run.config["dino"]["out_dim"] == TINY["out_dim"]
    cfg2, fw2, notes = framework_from_run(run)
    assert cfg2.reducer.keep_rate == 0.7 and notes == []
    for k, v in fw2.state_dict().items():
        assert torch.equal(v, run.state[k]), k
