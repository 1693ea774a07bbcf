"""The MAE/PCAE study (studies/mim_cpu.toml): its grid, equal steps, and FLOPs against MAE at 0.75."""

from __future__ import annotations

import pytest
from study_testkit import REPO

from simprune.study.flops import flops_percent
from simprune.study.recipe import load_study


@pytest.fixture(scope="module")
def study():
    return load_study(REPO / "studies" / "mim_cpu.toml")


def test_grid_and_equal_steps(study):
    assert study.seeds == [0, 1] and len(study.cells) == 10
    got = {(c.method, c.seed): c.config for c in study.cells}
    mae = got[("MAE 0.75", 0)]
    assert (mae.framework, mae.teacher.kind, mae.fw.mask_ratio) == ("mae", "none", 0.75)
    assert (mae.fw.decoder_depth, mae.fw.decoder_dim, mae.fw.decoder_heads) == (8, 64, 4)
    for name, ratio, rd in [("PCAE 0.75", 0.75, False), ("PCAE 0.85", 0.85, False),
                            ("PCAE 0.90", 0.9, False), ("PCAE 0.75 random drop", 0.75, True)]:
        cfg = got[(name, 1)]
        assert (cfg.framework, cfg.fw.mask_ratio, cfg.fw.random_drop) == ("pcae", ratio, rd)
        assert cfg.fw.decoder_depth == 8 and cfg.teacher.kind == "ema"
    for cfg in got.values():  # equal steps: the same run length and batch for every cell
        assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.model) == (4.0, 256, 1.5e-3, "vit_micro_patch4_32")
        assert cfg.linear_probe and cfg.reducer.method == "dense"


def test_every_cell_is_finetuned_with_the_mim_recipe(study):
    for cell in study.cells:
        ft = cell.finetune
        assert ft is not None and ft.framework == "supervised" and ft.fw.init_from == str(cell.folder)
        assert (ft.fw.pool, ft.epochs, ft.train_subset, ft.seed) == ("mean", 3.0, 10000, cell.seed)
        assert ft.reducer.method == "dense" and ft.model == cell.config.model


def test_flops_are_relative_to_mae_at_075(study):
    got = {(c.method, c.seed): c.config for c in study.cells}
    assert flops_percent(got[("MAE 0.75", 0)]) == 100.0
    assert flops_percent(got[("PCAE 0.85", 0)]) == pytest.approx(55.0, abs=0.1)  # drops after the block
