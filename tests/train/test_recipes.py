"""The shipped training recipes (configs/*.toml): each one loads, passes the checks a run makes
before it writes anything, and says at its top how to run it and what to expect."""

from __future__ import annotations

import re
from itertools import takewhile

import pytest
from train_testkit import REPO

from simprune.config import load_recipe, make_config
from simprune.run import check_config

RECIPES = sorted((REPO / "configs").glob("*.toml"))


def test_recipes_are_found():
    assert len(RECIPES) >= 8


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_documents_itself(recipe):
    cfg = make_config(load_recipe(recipe))
    check_config(cfg)
    text = "\n".join(takewhile(lambda line: line.startswith("#"), recipe.read_text().splitlines()))
    assert f"--config configs/{recipe.name}" in text, f"{recipe.name}: its header must give the command"
    assert re.search(r"^# (Expected|Measured)", text, re.M), (
        f"{recipe.name}: its header must give the expected (or measured) figure")


def test_readme_main_job_is_the_mocov3_simprune_recipe():
    """The README's train command runs the recipe, with the window the README describes."""
    readme = " ".join((REPO / "README.md").read_text().split())  # line wrapping does not matter
    assert "simprune train --config configs/cifar10_mocov3_simprune.toml" in readme
    cfg = make_config(load_recipe(REPO / "configs" / "cifar10_mocov3_simprune.toml"))
    assert (cfg.framework, cfg.reducer.method, cfg.reducer.keep_rate, cfg.dataset) == (
        "mocov3", "simprune", 0.8, "cifar10")
    assert cfg.reducer.window == "prune_similar" and "`--window sliding` runs the paper's schedule" in readme
