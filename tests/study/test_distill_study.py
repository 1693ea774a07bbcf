"""The distillation study (studies/distill_cpu.toml): its grid of students × KD modes, the
random-weights rows (no distillation steps, no cost), each student fine-tuned with its own pruning,
the Table 4 row, and FLOPs counted before the teacher exists."""

from __future__ import annotations

import pytest
from study_testkit import REPO

from simprune.config import load_recipe
from simprune.study.flops import flops_percent
from simprune.study.recipe import load_study
from simprune.study.report import aggregate, held_note
from simprune.study.results import CellResult


@pytest.fixture(scope="module")
def study():
    return load_study(REPO / "studies" / "distill_cpu.toml")


def test_grid(study):
    assert study.seeds == [0, 1] and len(study.cells) == 24
    got = {(c.method, c.seed): c for c in study.cells}
    for student, (method, rate) in {"ViT": ("dense", None), "EViT 0.7": ("evit", 0.7),
                                    "EViT 0.5": ("evit", 0.5)}.items():
        for mode in ("KD All", "KD CLS", "no KD"):
            cell = got[(f"{student} {mode}", 1)]
            cfg, ft = cell.config, cell.finetune
            assert cfg.framework == "distill" and cfg.reducer.method == method and cell.keep_rate == rate
            assert cfg.epochs == (0.0 if mode == "no KD" else 1.0) and cfg.teacher.kind == "frozen"
            if mode != "no KD":
                assert cfg.fw.loss == ("all" if mode == "KD All" else "cls")
            # fine-tuned with its own pruning, on labels, from its backbone
            assert ft.framework == "supervised" and ft.fw.init_from == str(cell.folder)
            assert (ft.reducer.method, ft.train_subset, ft.epochs) == (method, 0, 3.0)
            # distilled on the rest, fine-tuned and probed on the 10,000 images held out of it
            assert (cfg.held_out, cfg.train_on, ft.held_out, ft.train_on) == (10000, "rest", 10000,
                                                                              "held_out")
            assert held_note(cfg) == " of the 10000 held out"  # the report's k-NN bank line
            if rate is not None:
                assert ft.reducer.keep_rate == rate and list(ft.reducer.reduce_at) == [4, 7, 10]
    # Table 4: distilled unpruned, pruned in the probes (the plan's final keep rate) and fine-tuning
    table4 = got[("ViT KD All, EViT 0.5 only after KD", 0)]
    cfg = table4.config
    assert (cfg.reducer.method, cfg.reducer.keep_rate, cfg.fw.loss, cfg.fw.eval_reduced) == (
        "evit", 0.5, "all", True)
    from simprune.frameworks.parts import build_plans

    plan, _ = build_plans(cfg)
    steps = 781
    assert all(plan.keep_rate(s / steps) == 1.0 for s in range(steps))  # every training step
    assert plan.keep_rate(1.0) == 0.5  # the probes
    assert (table4.finetune.reducer.method, table4.finetune.reducer.keep_rate) == ("evit", 0.5)
    assert flops_percent(cfg) == pytest.approx(100.0, abs=1.0)  # trained as the unpruned ViT


def test_the_teacher_shares_the_students_patch_grid():
    teacher = load_recipe(REPO / "configs" / "cifar10_distill_teacher.toml")
    student = load_recipe(REPO / "configs" / "cifar10_distill_evit.toml")
    assert teacher["framework"] == "mocov3" and teacher["model"] == student["model"]
    assert teacher["global_size"] == student["global_size"] and teacher["epochs"] > student["epochs"]
    assert student["teacher"]["path"] == teacher["out"]


def test_flops_are_counted_without_the_teacher_file_and_no_kd_costs_nothing(study, tmp_path):
    got = {(c.method, c.seed): c.config for c in study.cells}
    assert flops_percent(got[("ViT no KD", 0)]) == 0.0
    assert flops_percent(got[("ViT KD All", 0)]) == 100.0
    evit = flops_percent(got[("EViT 0.5 KD All", 0)])
    assert evit is not None and 50.0 < evit < 80.0  # the student's half, the teacher's forward whole
    assert flops_percent(got[("EViT 0.7 KD All", 0)]) > evit


def test_a_random_weights_row_is_never_the_time_reference(study):
    cells = {c.method: c for c in study.cells if c.seed == 0}

    def done(name: str, seconds: float) -> CellResult:
        return CellResult(cells[name], "finished", 1, 1, {"knn_top1": 30.0, "train_seconds": seconds})

    rows = aggregate([done("ViT no KD", 0.5), done("ViT KD All", 100.0), done("EViT 0.5 KD All", 70.0)])
    by = {r.method: r for r in rows}
    assert by["ViT KD All"].time_pct == 100.0 and by["EViT 0.5 KD All"].time_pct == pytest.approx(70.0)
    assert by["ViT no KD"].time_pct == pytest.approx(0.5)



def test_the_grid_distils_standardised_targets_and_two_rows_keep_method_md_s_raw_ones(study):
    """The recipe's targets (each teacher channel standardised over the batch) in every KD row of
    the grid; the two "raw targets" rows are the same ViT cells with METHOD.md's pin."""
    got = {(c.method, c.seed): c for c in study.cells}
    assert len(study.cells) == 24
    for (name, _seed), cell in got.items():
        want = "none" if name.endswith("raw targets") else "batch"
        assert cell.config.fw.target_norm == want, name
    for mode in ("All", "CLS"):
        raw, std = got[(f"ViT KD {mode}, raw targets", 1)], got[(f"ViT KD {mode}", 1)]
        a, b = raw.config.to_dict(), std.config.to_dict()
        for d in (a, b):
            d["distill"].pop("target_norm"), d.pop("out")
        assert a == b
        assert raw.finetune.reducer == std.finetune.reducer
