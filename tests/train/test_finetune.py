"""The config of a fine-tuning run (``simprune.train.finetune``): what it inherits from the
pre-trained run, what a recipe and overrides set, and the errors for a missing source."""

from __future__ import annotations

import pytest

from simprune.config import make_config
from simprune.train.finetune import INHERITED, finetune_config, run_config


def test_inherits_the_runs_model_and_data_and_nothing_else(tmp_path):
    run = make_config({"framework": "mae", "model": "vit_nano_patch4_32", "dataset": "cifar10",
                       "data": str(tmp_path), "pos_embed": "sincos", "lr": 0.5, "epochs": 9.0,
                       "train_subset": 100}).to_dict()
    cfg = finetune_config(run, "runs/x", {"epochs": 2.0, "supervised": {"pool": "mean"}},
                          {"lr": 0.01, "seed": 3}, branch="teacher")
    assert cfg.framework == "supervised" and cfg.fw.init_from == "runs/x"
    assert cfg.fw.init_branch == "teacher" and cfg.fw.pool == "mean"
    assert (cfg.model, cfg.dataset, cfg.data, cfg.pos_embed) == ("vit_nano_patch4_32", "cifar10",
                                                                str(tmp_path), "sincos")
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.train_subset) == (2.0, 0.01, 3, 0)  # not the run's
    assert {"model", "dataset", "data", "test_split"} <= set(INHERITED)


def test_a_moved_data_folder_is_said_and_simprune_data_used(tmp_path, monkeypatch):
    import warnings

    from simprune.data import DataNotFoundError, DataWarning

    run = {"model": "vit_nano_patch4_32", "data": str(tmp_path / "gone")}
    monkeypatch.delenv("SIMPRUNE_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match=r"the data folder '.*gone' that runs/x was trained on "
                       r"no longer exists; pass --data DIR or set SIMPRUNE_DATA=DIR"):
        finetune_config(run, "runs/x", {}, {})
    assert finetune_config(run, "runs/x", {}, {"data": str(tmp_path)}).data == str(tmp_path)
    monkeypatch.setenv("SIMPRUNE_DATA", str(tmp_path))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert finetune_config(run, "runs/x", {}, {}).data == str(tmp_path)
    assert any(issubclass(w.category, DataWarning) and "no longer exists" in str(w.message) for w in seen)


def test_a_recipe_may_not_make_it_anything_but_supervised():
    cfg = finetune_config({}, "w.safetensors", {"framework": "dino"}, {})
    assert cfg.framework == "supervised"


def test_missing_sources_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*pass a run folder"):
        run_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights at"):
        run_config(tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"")
    assert run_config(tmp_path / "w.safetensors") == {}
