"""Study recipes: the grid of cells, recipe errors, and every shipped recipe under studies/."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_testkit import METHODS, REPO, write_study

from simprune.config import FRAMEWORKS
from simprune.study.flops import flops_percent
from simprune.study.recipe import load_study, parse_sets


def test_grid_dense_once_and_cell_configs(tmp_path):
    recipe = write_study(tmp_path, keep_rates="[0.9, 0.7]")
    study = load_study(recipe, seeds=[0, 1], out=tmp_path / "runs" / "x", sets=parse_sets(["lr=0.002"]))
    labels = [(c.slug, c.seed) for c in study.cells]
    assert labels == [("dense", 0), ("dense", 1), ("simprune-sliding_kr0.9", 0),
                      ("simprune-sliding_kr0.9", 1), ("simprune-sliding_kr0.7", 0),
                      ("simprune-sliding_kr0.7", 1)]
    cell = study.cells[4]
    cfg = cell.config
    assert (cfg.reducer.keep_rate, cfg.seed, cfg.reducer.method, cfg.reducer.window) == (
        0.7, 0, "simprune", "sliding")
    assert cfg.linear_probe and cfg.lr == 0.002 and cfg.model == "vit_nano_patch4_32"
    assert cfg.fw.temperature == 0.2  # from the base recipe
    assert cell.folder == tmp_path / "runs" / "x" / "simprune-sliding_kr0.7" / "seed0"
    assert study.cells[0].config.reducer.method == "dense" and study.cells[0].keep_rate is None


@pytest.mark.parametrize("extra,methods,sets,match", [
    ("colour = 1", METHODS, [], r"unknown study keys \['colour'\]; valid keys: name"),
    ("", METHODS + '[[methods]]\nname = "Bad"\nwindw = "sliding"\n', [],
     r"method 'Bad': unknown config keys \['windw'\]; valid keys: .*window"),
    ("", METHODS, ["epoch=2"], r"--set: unknown config keys \['epoch'\]; valid keys: .*epochs"),
    ("", METHODS, ["seed=3"], r"set by the study; use seed: seeds / --seeds"),
    ("", METHODS + '[[methods]]\nname = "dense"\nmethod = "evit"\n', [], "share the folder name"),
    ("", METHODS + '[[methods]]\nname = "Nope"\nmethod = "nope"\n', [], "method 'Nope': .*nope"),
])
def test_recipe_errors(tmp_path, extra, methods, sets, match):
    recipe = write_study(tmp_path, methods=methods, extra=extra)
    with pytest.raises(ValueError, match=match):
        load_study(recipe, sets=parse_sets(sets))


@pytest.mark.parametrize("recipe", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(recipe):
    """Every recipe under studies/ builds its grid; pruned cells cost less than dense."""
    study = load_study(recipe)
    assert study.cells and study.out == Path("runs") / "study" / recipe.stem
    assert study.cells[0].config.reducer.method == "dense" and study.cells[0].keep_rate is None
    # the linear probe is part of the k-NN evaluation; a classifier (Tri-Level) reports its top-1
    assert all(c.config.linear_probe == (FRAMEWORKS.get(c.config.framework).eval_protocol == "knn")
               for c in study.cells)
    for cell in study.cells[len(study.seeds):]:
        if cell.keep_rate is None:  # a grid of other settings (MAE/PCAE: tests/study/test_mim_study.py)
            continue
        assert 0.0 < cell.keep_rate <= 1.0  # the study's or its method's own keep_rates
        # Tri-Level's attention-only cell keeps every token; the distillation study's random-weights
        # rows train no step, and its Table 4 row prunes only after training (warm-up ends at t = 1)
        prunes = cell.config.epochs > 0 and (list(cell.config.reducer.keep_warmup) + [0.0])[0] < 1.0
        if cell.keep_rate < 1.0 and prunes:
            assert 60.0 < flops_percent(cell.config) < 95.0, (recipe.stem, cell.keep_rate)
    head = recipe.read_text().splitlines()[:3]
    assert any(f"simprune study --config studies/{recipe.name}" in line for line in head)
