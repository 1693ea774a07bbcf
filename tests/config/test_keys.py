"""Every key checked: a key that does not apply to the chosen framework is an error naming the
framework and where the key belongs, for base keys as for section keys; old configs (flat, or
nested with the keys that have since moved) are read through aliases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simprune.config import incompatible, make_config, upgrade_saved
from simprune.study.recipe import load_study

REPO = Path(__file__).resolve().parents[2]
BEFORE = REPO / "tests" / "fixtures" / "configs_before_house"


@pytest.mark.parametrize("framework", ["supervised", "trilevel"])
@pytest.mark.parametrize("key,value", [("knn_k", 5), ("knn_train", 100), ("knn_temperature", 0.1),
                                       ("linear_probe", True)])
def test_a_knn_key_of_a_classifier_names_the_framework_and_the_evaluation(framework, key, value):
    with pytest.raises(ValueError) as err:
        make_config({"framework": framework, key: value})
    msg = str(err.value)
    assert f"'{key}' belongs to the knn evaluation" in msg and f"framework {framework!r}" in msg
    assert "dino" in msg and "mocov3" in msg  # the frameworks it belongs to
    with pytest.raises(ValueError, match=f"'{key}' belongs to the knn evaluation"):  # as an override
        make_config({"framework": framework}, {key: value})


def test_keys_every_protocol_reads_stay_base_keys():
    cfg = make_config({"framework": "supervised", "knn_test": 100, "knn_every": 0.5, "eval_at_end": False})
    assert (cfg.knn_test, cfg.knn_every) == (100, 0.5)
    assert "knn_k" not in cfg.to_dict() and cfg.to_dict()["knn_test"] == 100
    assert make_config({"framework": "dino", "knn_k": 5}).to_dict()["knn_k"] == 5


@pytest.mark.parametrize("key,value", [("init", "moco"), ("freeze_patch_embed", True)])
def test_mocov3_vit_choices_live_in_its_section(key, value):
    flat = make_config({"framework": "mocov3", key: value})  # the old base key is the alias
    nested = make_config({"framework": "mocov3", "mocov3": {key: value}})
    assert getattr(flat.fw, key) == getattr(nested.fw, key) == value
    assert key not in flat.to_dict() and flat.to_dict()["mocov3"][key] == value
    where = rf"'mocov3.{key}' belongs to section \[mocov3\].*framework is 'dino'"
    with pytest.raises(ValueError, match=where):
        make_config({"framework": "dino", key: value})


def test_a_switched_framework_drops_the_recipes_knn_keys_with_a_note():
    cfg = make_config({"framework": "dino", "knn_k": 5, "linear_probe": True}, {"framework": "supervised"})
    assert any("knn_k" in n and "linear_probe" in n for n in cfg.notes)


def test_old_flat_config_moves_init_into_mocov3():
    cfg = make_config(upgrade_saved({"framework": "mocov3", "init": "moco", "freeze_patch_embed": True,
                                     "moco_hidden": 64, "method": "dense", "knn_k": 5}))
    assert (cfg.fw.init, cfg.fw.freeze_patch_embed, cfg.fw.hidden, cfg.knn_k) == ("moco", True, 64, 5)
    sup = make_config(upgrade_saved({"framework": "supervised", "init": "deit", "knn_k": 20}))
    assert sup.framework == "supervised"  # defaults of keys that never applied are dropped
    with pytest.raises(ValueError, match=r"belongs to section \[mocov3\]"):  # a real setting is not lost
        make_config(upgrade_saved({"framework": "dino", "init": "moco"}))


def _cells():
    """(fixture name, the cell's config today) for every config.json written before the move."""
    out = []
    for path in sorted(BEFORE.glob("*.json")):
        study, _, rest = path.stem.partition("__")
        slug, _, phase = rest.partition("__")
        cells = [c for c in load_study(REPO / "studies" / f"{study}.toml", out="runs/x").cells
                 if c.folder.parent.name == slug]
        out.append((path.name, cells[0].finetune if phase == "finetune" else cells[0].config))
    return out


def test_every_fixture_is_a_cell_of_todays_studies():
    names = [n for n, _ in _cells()]
    assert len(names) == len(list(BEFORE.glob("*.json"))) >= 10
    assert {json.loads((BEFORE / n).read_text())["framework"] for n in names} >= {
        "mocov3", "dino", "mae", "pcae", "supervised", "trilevel", "distill"}


@pytest.mark.parametrize("name,cfg", _cells(), ids=[n for n, _ in _cells()])
def test_a_cell_trained_before_the_move_has_the_same_settings(name, cfg):
    """A study cell's config.json written by main before the configuration moved (e1702c1) is
    recognised as the same settings (what the study runner's check_folder_config asks)."""
    saved = json.loads((BEFORE / name).read_text())
    assert incompatible(saved, cfg) == {}


def test_the_runner_accepts_an_old_cell_folder(tmp_path):
    from simprune.study.runner import check_folder_config

    name, cfg = next((n, c) for n, c in _cells() if n.startswith("table2_cpu__simprune"))
    (tmp_path / "config.json").write_text((BEFORE / name).read_text())
    check_folder_config(tmp_path, cfg)  # no error
    cfg.fw.init = "deit"  # and a real difference is still found
    with pytest.raises(ValueError, match="mocov3.init: cell 'moco' vs study 'deit'"):
        check_folder_config(tmp_path, cfg)
