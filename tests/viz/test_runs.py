"""Frameworks from checkpoints: another method on the same weights, backbone-only fallback."""

from __future__ import annotations

import torch
from viz_testkit import TINY, save_run

from simprune.viz.runs import (
    config_for,
    framework_from_run,
    fresh_framework,
    load_runs,
    load_state,
    unique_steps,
)


def test_other_method_loads_the_same_weights(tmp_path):
    save_run(tmp_path, step=5, total=10, method="simprune", reducer_options={"metric": "keys"})
    (run,) = load_runs([tmp_path])
    cfg, fw, notes = framework_from_run(run, "tome")
    assert cfg.method == "tome" and cfg.reducer_options == {} and notes == []
    assert fw.prune.method == "tome"
    for k, v in fw.state_dict().items():
        assert torch.equal(v, run.state[k]), k
    cfg, _, _ = framework_from_run(run)
    assert cfg.reducer_options == {"metric": "keys"}


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
    assert cfg.method == "simprune" and cfg.keep_rate == 0.7 and cfg.model == TINY["model"]


def test_same_step_twice_is_shown_once(tmp_path):
    save_run(tmp_path, step=40, total=50, name="checkpoint_000040.pt")
    save_run(tmp_path, step=50, total=50, name="checkpoint_000050.pt")
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "checkpoint_000050.pt").read_bytes())
    runs, twins = unique_steps(load_runs([tmp_path, tmp_path / "checkpoint.pt"]))
    assert [r.step for r in runs] == [40, 50] and len(twins) == 1
    assert twins[0][0].path.name == "checkpoint_000050.pt" and twins[0][1].path.name == "checkpoint.pt"
    assert runs[1].progress == 1.0
