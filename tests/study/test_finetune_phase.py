"""The fine-tuning phase of a study (``[finetune]``): each finished cell is fine-tuned from its
backbone into ``<cell>/finetune``, with the cell's seed, model and data; methods may change the
fine-tuning keys; ``--phase`` splits training and fine-tuning between sittings; the report gains a
fine-tuning column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_testkit import METHODS, FakeTrainer, read_csv, study_args, write_study

from simprune.cli import main as cli_main
from simprune.study import run_study
from simprune.study.recipe import load_study
from simprune.train import loop

FINETUNE = """[finetune]
recipe = "configs/cifar10_mim_finetune.toml"
epochs = 0.25
train_subset = 64
batch_size = 16
knn_test = 32
progress_bar = false
"""


class FakeTuner(FakeTrainer):
    """FakeTrainer, plus a finished fine-tuning run (test top-1 = 40 + seed) for supervised configs."""

    calls: list[str] = []

    def run(self) -> dict:
        FakeTuner.calls.append(self.cfg.out)
        if self.cfg.framework != "supervised":
            return super().run()
        res = {"step": 2, "total_steps": 2, "finished": True, "train_seconds": 1.0,
               "top1": 40.0 + self.cfg.seed, "top5": 90.0}
        Path(self.cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(self.cfg.out) / "results.json").write_text(json.dumps(res))
        return res


def _study(tmp_path: Path, methods: str = METHODS, finetune: str = FINETUNE) -> Path:
    # the [finetune] table goes last: in TOML every key after a table header belongs to it
    path = write_study(tmp_path, methods=methods)
    path.write_text(path.read_text() + "\n" + finetune)
    return path


def test_each_cell_has_its_finetuning_config(tmp_path):
    methods = METHODS + 'finetune = {method = "evit", keep_rate = 0.5}\n'
    study = load_study(_study(tmp_path, methods), seeds=[0, 3])
    assert study.finetune_recipe is not None and study.finetune_recipe.name == "cifar10_mim_finetune.toml"
    for cell in study.cells:
        ft = cell.finetune
        assert ft is not None and ft.framework == "supervised"
        assert ft.out == str(cell.folder / "finetune") and cell.finetune_folder == cell.folder / "finetune"
        assert ft.fw.init_from == str(cell.folder) and ft.seed == cell.seed
        # the cell's model and data; the recipe's pooling; the table's keys over the recipe's
        assert (ft.model, ft.dataset, ft.data) == (cell.config.model, cell.config.dataset, cell.config.data)
        assert ft.fw.pool == "mean" and (ft.epochs, ft.train_subset, ft.batch_size) == (0.25, 64, 16)
        # the method's own fine-tuning keys: pruning at fine-tuning time
        if cell.method == "SimPrune sliding":
            assert (ft.reducer.method, ft.reducer.keep_rate) == ("evit", 0.5)
        else:
            assert ft.reducer.method == "dense"
    assert all(c.finetune is None for c in load_study(write_study(tmp_path / "plain")).cells)


@pytest.mark.parametrize("finetune, methods, message", [
    (FINETUNE + "colour = 1\n", METHODS, r"\[finetune\]: unknown config keys \['colour'\]"),
    (FINETUNE + "seed = 4\n", METHODS,
     r"\['seed'\] are set by the study for fine-tuning; use seed: the cell's seed"),
    (FINETUNE.replace("cifar10_mim_finetune", "nowhere"), METHODS,
     "fine-tuning recipe 'configs/nowhere.toml' not found"),
    ("", METHODS + "finetune = {epochs = 1}\n", "has fine-tuning keys but the study has no"),
    (FINETUNE, METHODS + 'finetune = {method = "magic"}\n', r"\(fine-tuning\).*magic"),
])
def test_bad_finetuning_tables_are_refused_with_one_line(tmp_path, capsys, finetune, methods, message):
    recipe = _study(tmp_path, methods, finetune)
    with pytest.raises((ValueError, FileNotFoundError, KeyError), match=message):
        load_study(recipe)
    assert cli_main(["study", "--config", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_phases_and_resume(tmp_path, monkeypatch, capsys):
    """train: cells only; finetune: finished cells only (a failed cell is never fine-tuned); a
    later sitting skips finished fine-tuning runs; the sitting log counts them."""
    monkeypatch.setattr(loop, "Trainer", FakeTuner)
    recipe, out = _study(tmp_path), tmp_path / "runs" / "ft"
    args = ["--config", str(recipe), "--out", str(out)]
    FakeTuner.calls = []
    assert run_study(study_args(*args, "--phase", "train")) == 1  # the SimPrune cell failed
    assert [Path(c).name for c in FakeTuner.calls] == ["seed0", "seed0"]  # dense, then SimPrune (fails)
    md = (out / "results.md").read_text()
    assert "| Fine-tune top-1 (%) |" in md and "Fine-tuning unfinished for 1 finished cell(s)" in md
    assert "Dense seed 0: not started" in md

    FakeTuner.calls = []
    assert run_study(study_args(*args, "--phase", "finetune")) == 0
    assert FakeTuner.calls == [str(out / "dense" / "seed0" / "finetune")]
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 fine-tuning (new, 2 steps)" in text
    log = json.loads((out / "study.json").read_text())["sittings"][-1]
    assert log["command"].endswith("--phase finetune")
    assert (log["phase"], log["finetunes_run"], log["finetunes_finished"], log["cells_trained"]) == (
        "finetune", 1, 1, 0)

    FakeTuner.calls = []
    assert run_study(study_args(*args)) == 1  # all: only the failing SimPrune cell runs again
    assert [Path(c).parent.name for c in FakeTuner.calls] == ["simprune-sliding_kr0.8"]
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0: fine-tuning finished, skipped (test top-1 40.00%)" in text


def test_report_has_the_finetuning_column(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "Trainer", FakeTuner)
    methods = METHODS.replace('method = "simprune"\nwindow = "sliding"', 'method = "random"')
    recipe, out = _study(tmp_path, methods), tmp_path / "runs" / "rep"
    assert run_study(study_args("--config", str(recipe), "--out", str(out), "--seeds", "0", "1")) == 0
    md = (out / "results.md").read_text()
    assert ("| Method | Keep rate | k-NN top-1 (%) | Linear top-1 (%) | Fine-tune top-1 (%) | Training FLOPs "
            "(% of dense) | Training time (% of dense) | Seeds finished | Fine-tuned |") in md
    dense = next(line for line in md.splitlines() if line.startswith("| Dense |"))
    assert "| 30.00 ± 0.00 | 33.00 ± 0.00 | 40.50 ± 0.71 |" in dense and dense.endswith("| 2/2 | 2/2 |")
    assert "- Fine-tuning: every finished cell" in md and "0.25 epochs on 64 training images" in md
    rows = read_csv(out / "results.csv")
    assert [(r["finetune_top1_mean"], r["finetunes_finished"]) for r in rows] == [("40.5000", "2")] * 2
    cells = read_csv(out / "cells.csv")
    assert [(c["seed"], c["finetune_state"], c["finetune_top1"]) for c in cells][:2] == [
        ("0", "finished", "40.0000"), ("1", "finished", "41.0000")]


def test_a_real_cell_is_finetuned_from_its_backbone(data_root, tmp_path):
    """One real cell and its real fine-tuning run. With lr 0 the fine-tuned backbone must equal
    the cell's evaluation backbone exactly: the run started from the cell's trained weights."""
    import torch

    from simprune.checkpoint import load_checkpoint
    from simprune.frameworks import FRAMEWORKS

    methods = '[[methods]]\nname = "Dense"\nmethod = "dense"\n'
    recipe = _study(tmp_path, methods, FINETUNE + "lr = 0.0\nmin_lr = 0.0\n")
    text = recipe.read_text().replace("[overrides]", f'[overrides]\ndata = "{data_root}"', 1)
    recipe.write_text(text)
    out = tmp_path / "runs" / "real"
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    cell, ft = out / "dense" / "seed0", out / "dense" / "seed0" / "finetune"
    res = json.loads((ft / "results.json").read_text())
    assert res["finished"] and 0.0 <= res["top1"] <= 100.0
    saved = json.loads((ft / "config.json").read_text())
    assert saved["framework"] == "supervised" and saved["supervised"]["init_from"] == str(cell)
    pre_cfg = json.loads((cell / "config.json").read_text())
    branch = FRAMEWORKS.get(pre_cfg["framework"]).eval_branch
    pre = load_checkpoint(cell / "checkpoint.pt")["framework"]
    post = load_checkpoint(ft / "checkpoint.pt")["framework"]
    tuned = {k.split("backbone.", 1)[1]: v for k, v in post.items() if ".backbone." in k}
    source = {k.split("backbone.", 1)[1]: v for k, v in pre.items() if k.startswith(f"{branch}.backbone.")}
    assert tuned and set(tuned) <= set(source)
    for name, value in tuned.items():
        assert torch.equal(value, source[name]), name
    # and the cell's other branch differs (EMA teacher vs student), so the test can tell them apart
    other = {k.split("backbone.", 1)[1]: v for k, v in pre.items()
             if ".backbone." in k and not k.startswith(f"{branch}.")}
    assert any(not torch.equal(v, other[k]) for k, v in tuned.items() if k in other)
    assert "| Dense | 1 (dense) |" in (out / "results.md").read_text()
