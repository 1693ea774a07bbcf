"""``simprune study``: a tiny real grid (2 methods × 1 seed × 2 steps on CIFAR-10), its report, and
resuming (finished cells skipped, an interrupted cell continued from its checkpoint)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simprune.bench.flops import StepConfig, step_report
from simprune.cli import main as cli_main
from simprune.study import runner as study_mod
from simprune.study.report import (
    CSV_COLUMNS,
    Row,
    flops_percent,
    flops_ratio,
    point_label,
    step_config,
    write_plot,
)
from simprune.study.runner import add_study_args, load_study, parse_sets, run_study
from simprune.train import loop
from simprune.train.checkpoint import load_checkpoint
from simprune.train.config import make_config

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("SIMPRUNE_DATA") or REPO.parent / "shared" / "data")
#: 128 images, batch 16, 0.25 epoch: 2 steps per cell
TINY = {
    "model": "vit_nano_patch4_32", "train_subset": 128, "batch_size": 16, "epochs": 0.25,
    "moco_hidden": 64, "moco_dim": 32, "knn_train": 128, "knn_test": 64, "progress_bar": False,
    "log_every": 1, "ckpt_every": 1, "drop_path": 0.0,
}
METHODS = """
[[methods]]
name = "Dense"
method = "dense"

[[methods]]
name = "SimPrune sliding"
method = "simprune"
window = "sliding"
"""


@pytest.fixture(scope="module")
def data_root() -> Path:
    if not (DATA / "cifar10-jpg.tar.gz").exists():
        raise FileNotFoundError(f"CIFAR-10 archive not found in {DATA}; set SIMPRUNE_DATA")
    os.environ.setdefault("SIMPRUNE_CACHE", str(REPO / ".cache" / "simprune"))
    return DATA


def toml_value(v: object) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_study(folder: Path, data: Path | None = None, methods: str = METHODS, extra: str = "",
                keep_rates: str = "[0.8]") -> Path:
    """A study recipe on the repo's CPU recipe (found relative to the repo) with TINY settings."""
    folder.mkdir(parents=True, exist_ok=True)
    over = {**TINY, **({"data": str(data)} if data else {})}
    lines = ['name = "tiny"', 'base = "configs/cifar10_mocov3_simprune.toml"',
             f"keep_rates = {keep_rates}", "seeds = [0]", extra, "[overrides]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in over.items()]
    path = folder / "tiny.toml"
    path.write_text("\n".join(lines) + "\n" + methods)
    return path


def study_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_study_args(parser)
    return parser.parse_args(list(argv))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class NoTraining:
    """Stands in for Trainer where nothing may be trained."""

    calls = 0

    def __init__(self, cfg) -> None:
        NoTraining.calls += 1
        raise AssertionError(f"Trainer called for {cfg.out}")


@pytest.fixture(scope="module")
def finished_study(data_root, tmp_path_factory) -> tuple[Path, Path, str]:
    """The tiny study run once to the end (out folder under a runs/ folder)."""
    root = tmp_path_factory.mktemp("study")
    recipe = write_study(root, data_root)
    out = root / "runs" / "tiny"
    code = run_study(study_args("--config", str(recipe), "--out", str(out)))
    assert code == 0
    return recipe, out, str(recipe)


# ----------------------------------------------------------------------------- recipe and grid


def test_grid_dense_once_and_cell_configs(tmp_path):
    recipe = write_study(tmp_path, keep_rates="[0.9, 0.7]")
    study = load_study(recipe, seeds=[0, 1], out=tmp_path / "runs" / "x", sets=parse_sets(["lr=0.002"]))
    labels = [(c.slug, c.seed) for c in study.cells]
    assert labels == [("dense", 0), ("dense", 1), ("simprune-sliding_kr0.9", 0),
                      ("simprune-sliding_kr0.9", 1), ("simprune-sliding_kr0.7", 0),
                      ("simprune-sliding_kr0.7", 1)]
    cell = study.cells[4]
    cfg = cell.config
    assert (cfg.keep_rate, cfg.seed, cfg.method, cfg.window) == (0.7, 0, "simprune", "sliding")
    assert cfg.linear_probe and cfg.lr == 0.002 and cfg.model == "vit_nano_patch4_32"
    assert cfg.moco_temperature == 0.2  # from the base recipe
    assert cell.folder == tmp_path / "runs" / "x" / "simprune-sliding_kr0.7" / "seed0"
    assert study.cells[0].config.method == "dense" and study.cells[0].keep_rate is None


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


def test_flops_mapping():
    cfg = make_config({**TINY, "framework": "mocov3", "method": "simprune", "keep_rate": 0.7})
    sc = step_config(cfg)
    assert sc == StepConfig(model="vit_nano_patch4_32", method="simprune", keep_rate=0.7,
                            framework="mocov3", batch_size=16, global_size=32, num_local=0,
                            local_size=16, reduce_at=(4, 7, 10), proj_hidden=64, proj_dim=32,
                            pred_hidden=64, head_hidden=2048, head_bottleneck=256, out_dim=4096)
    assert flops_ratio(cfg) == pytest.approx(step_report(sc)["flops_ratio"])
    assert flops_percent(make_config({**TINY, "method": "dense"})) == 100.0
    # a keep-rate warm-up (rate 1 for the first half): the cost is averaged over training
    warm = make_config({**TINY, "method": "evit", "keep_rate": 0.5, "keep_warmup": [0.5, 0.5]})
    full = flops_ratio(make_config({**TINY, "method": "evit", "keep_rate": 1.0}))
    half = flops_ratio(make_config({**TINY, "method": "evit", "keep_rate": 0.5}))
    assert flops_ratio(warm) == pytest.approx((full + half) / 2)


def test_dry_run_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "dry"
    assert run_study(study_args("--config", str(recipe), "--out", str(out), "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0: not started" in text and "FLOPs 100.0% of dense" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0: not started" in text
    assert not out.exists()


def test_report_never_overwrites_outside_runs_silently(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    recipe = write_study(tmp_path)
    published = tmp_path / "docs" / "study"
    published.mkdir(parents=True)
    (published / "results.md").write_text("committed figures\n")
    args = ["--config", str(recipe), "--out", str(published), "--report-only"]
    with pytest.raises(ValueError, match="not under a runs/ folder"):
        run_study(study_args(*args))
    assert (published / "results.md").read_text() == "committed figures\n"
    assert run_study(study_args(*args, "--overwrite-report")) == 0
    md = (published / "results.md").read_text()
    assert "Unfinished cells (2 of 2" in md and "not started" in md


# ----------------------------------------------------------------------------- a real tiny study


def test_report_table_csv_plot(finished_study):
    recipe, out, _ = finished_study
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == CSV_COLUMNS
    assert [(r["method"], r["reducer"], r["keep_rate"]) for r in rows] == [
        ("Dense", "dense", "1.000"), ("SimPrune sliding", "simprune", "0.800")]
    dense, pruned = rows
    assert float(dense["flops_pct_of_dense"]) == pytest.approx(100.0)
    assert 60.0 < float(pruned["flops_pct_of_dense"]) < 100.0
    assert float(dense["time_pct_of_dense"]) == pytest.approx(100.0)
    assert float(pruned["time_pct_of_dense"]) > 0
    for r in rows:
        assert (r["seeds_finished"], r["seeds_planned"]) == ("1", "1")
        assert 0.0 <= float(r["knn_top1_mean"]) <= 100.0 and 0.0 <= float(r["linear_top1_mean"]) <= 100.0
        assert r["knn_top1_std"] == ""  # one seed: no std
        res = json.loads((out / ("dense" if r["reducer"] == "dense" else "simprune-sliding_kr0.8")
                          / "seed0" / "results.json").read_text())
        assert float(r["knn_top1_mean"]) == pytest.approx(res["knn_top1"], abs=1e-4)
        assert float(r["linear_top1_mean"]) == pytest.approx(res["linear_top1"], abs=1e-4)
    cells = read_csv(out / "cells.csv")
    assert [(c["method"], c["seed"], c["state"], c["step"]) for c in cells] == [
        ("Dense", "0", "finished", "2"), ("SimPrune sliding", "0", "finished", "2")]
    md = (out / "results.md").read_text()
    assert "| Method | Keep rate | k-NN top-1 (%) | Linear top-1 (%) | Training FLOPs (% of dense)" in md
    assert "| Dense | 1 (dense) |" in md and "| SimPrune sliding | 0.8 |" in md
    assert f"simprune study --config {recipe} --out {out}" in md
    assert "Seeds: 0" in md and "Total wall time" in md and "All 2 cells finished" in md
    assert "noisy" in md
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    import matplotlib.image

    assert matplotlib.image.imread(out / "tradeoff.png").ndim == 3


def test_rerun_skips_finished_cells(finished_study, monkeypatch, capsys):
    recipe, out, _ = finished_study
    ckpt = out / "simprune-sliding_kr0.8" / "seed0" / "checkpoint.pt"
    before = (ckpt.stat().st_mtime_ns, ckpt.read_bytes())
    NoTraining.calls = 0
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    assert NoTraining.calls == 0
    assert (ckpt.stat().st_mtime_ns, ckpt.read_bytes()) == before
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0: finished, skipped" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0: finished, skipped" in text
    assert "2/2 cells finished" in text
    log = json.loads((out / "study.json").read_text())
    assert len(log["sittings"]) >= 2 and log["sittings"][-1]["cells_trained"] == 0


def test_report_only_regenerates(finished_study, monkeypatch):
    recipe, out, _ = finished_study
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    before = (out / "results.csv").read_text()
    for name in ("results.csv", "results.md", "tradeoff.png", "cells.csv"):
        (out / name).unlink()
    assert run_study(study_args("--config", str(recipe), "--out", str(out), "--report-only")) == 0
    assert (out / "results.csv").read_text() == before
    assert (out / "results.md").is_file() and (out / "tradeoff.png").is_file()


def test_changed_study_refuses_finished_cells(finished_study, monkeypatch):
    recipe, out, _ = finished_study
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    sittings = len(json.loads((out / "study.json").read_text())["sittings"])
    stale = r"trained with other settings \(lr: cell 0.001 vs study 0.005\)"
    for extra in ([], ["--report-only"]):
        with pytest.raises(ValueError, match=stale):
            run_study(study_args("--config", str(recipe), "--out", str(out), "--set", "lr=0.005", *extra))
    assert len(json.loads((out / "study.json").read_text())["sittings"]) == sittings


def test_time_limit_then_resume(data_root, tmp_path, capsys):
    """A sitting that runs out of time leaves the first cell at a checkpoint and the second not
    started; the same command continues the first from its checkpoint to the end."""
    recipe = write_study(tmp_path, data_root)
    out = tmp_path / "runs" / "interrupted"
    argv = ["--config", str(recipe), "--out", str(out)]
    assert run_study(study_args(*argv, "--time-limit", "0.0001")) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 (new, 2 steps)" in text and "time limit of 0.0001 min reached" in text
    dense = out / "dense" / "seed0"
    assert load_checkpoint(dense / "checkpoint.pt")["step"] == 1
    assert not (dense / "results.json").exists()
    assert not (out / "simprune-sliding_kr0.8").exists()
    md = (out / "results.md").read_text()
    assert "Unfinished cells (2 of 2" in md and "Dense seed 0: stopped at step 1/2" in md
    rows = read_csv(out / "results.csv")
    assert [r["seeds_finished"] for r in rows] == ["0", "0"] and rows[0]["knn_top1_mean"] == ""

    assert run_study(study_args(*argv)) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 (resumed at step 1/2)" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0 (new, 2 steps)" in text
    res = json.loads((dense / "results.json").read_text())
    assert res["finished"] and res["step"] == 2 and res["train_steps_this_run"] == 1
    assert "knn_top1" in res and "linear_top1" in res
    assert load_checkpoint(dense / "checkpoint.pt")["step"] == 2
    rows = read_csv(out / "results.csv")
    assert [r["seeds_finished"] for r in rows] == ["1", "1"]
    assert "All 2 cells finished" in (out / "results.md").read_text()
    log = json.loads((out / "study.json").read_text())
    assert [s["cells_trained"] for s in log["sittings"]] == [1, 2]


def test_cli_reports_errors(tmp_path, capsys):
    recipe = write_study(tmp_path, extra="colour = 1")
    assert cli_main(["study", "--config", str(recipe), "--dry-run"]) == 2
    assert "unknown study keys ['colour']" in capsys.readouterr().err


class FakeTrainer:
    """A Trainer that writes a finished results.json at once, and fails for SimPrune cells."""

    def __init__(self, cfg) -> None:
        self.cfg, self.step, self.total_steps = cfg, 0, 2

    def run(self) -> dict:
        if self.cfg.method == "simprune":
            self.step = 1
            raise loop.TrainingError("the loss became NaN or inf at step 1; stopped")
        res = {"step": 2, "total_steps": 2, "finished": True, "train_seconds": 2.0, "knn_top1": 30.0,
               "knn_top5": 80.0, "linear_top1": 33.0}
        Path(self.cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(self.cfg.out) / "results.json").write_text(json.dumps(res))
        return res


def test_failed_cell_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    methods = METHODS.replace('name = "Dense"', 'name = "SimPrune first"\nmethod = "simprune"\n'
                              '[[methods]]\nname = "Dense"', 1)
    recipe = write_study(tmp_path, methods=methods)
    out = tmp_path / "runs" / "fail"
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "cell 1/3: SimPrune first kr=0.8 seed 0 failed: the loss became NaN" in text
    assert "cell 2/3: Dense seed 0 (new, 2 steps)" in text and "1/3 cells finished" in text
    assert json.loads((out / "simprune-first_kr0.8" / "seed0" / "study_error.json").read_text())["step"] == 1
    md = (out / "results.md").read_text()
    assert "SimPrune first kr=0.8 seed 0: failed (the loss became NaN" in md and "at step 1 " in md
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["seeds_finished"], r["knn_top1_mean"]) for r in rows] == [
        ("SimPrune first", "0", ""), ("Dense", "1", "30.0000"), ("SimPrune sliding", "0", "")]


@pytest.mark.parametrize("recipe", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(recipe):
    """Every recipe under studies/ builds its grid; pruned cells cost less than dense."""
    study = load_study(recipe)
    assert study.cells and study.out == Path("runs") / "study" / recipe.stem
    assert study.cells[0].config.method == "dense" and study.cells[0].keep_rate is None
    assert all(c.config.linear_probe for c in study.cells)
    for cell in study.cells[len(study.seeds):]:
        assert cell.keep_rate in study.keep_rates and 60.0 < flops_percent(cell.config) < 95.0
    head = recipe.read_text().splitlines()[:3]
    assert any(f"simprune study --config studies/{recipe.name}" in line for line in head)


def test_parallel_sittings_skip_locked_cells_and_take_over_stale_locks(tmp_path, monkeypatch, capsys):
    """A cell locked by a live process (another sitting) is skipped and left alone; a lock left by
    a process that is gone is taken over; the lock is released when the cell ends."""
    import subprocess
    import sys

    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    methods = METHODS.replace('method = "simprune"', 'method = "random"')
    recipe = write_study(tmp_path, methods=methods)
    out = tmp_path / "runs" / "parallel"
    dense, pruned = out / "dense" / "seed0", out / "simprune-sliding_kr0.8" / "seed0"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = __import__("socket").gethostname()
    for folder, pid in ((dense, os.getppid()), (pruned, int(dead.stdout))):
        folder.mkdir(parents=True)
        (folder / "study.lock").write_text(json.dumps({"pid": pid, "host": host, "started": "t0"}))

    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert f"cell 1/2: Dense seed 0: being trained by another sitting (pid {os.getppid()}" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0 (new, 2 steps)" in text
    assert "1 cells are being trained by another sitting" in text
    assert not (dense / "results.json").exists() and (dense / "study.lock").exists()
    assert (pruned / "results.json").exists() and not (pruned / "study.lock").exists()

    (dense / "study.lock").unlink()  # that sitting ended
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 (new, 2 steps)" in text and "2/2 cells finished" in text
    assert not list(out.rglob("study.lock"))


def test_take_lock_respects_another_host(tmp_path):
    held = {"pid": 1, "host": "elsewhere.example", "started": "t0"}
    (tmp_path / "study.lock").write_text(json.dumps(held))
    assert study_mod.take_lock(tmp_path) == held
    (tmp_path / "study.lock").unlink()
    assert study_mod.take_lock(tmp_path) is None
    assert json.loads((tmp_path / "study.lock").read_text())["pid"] == os.getpid()
    study_mod.release_lock(tmp_path)
    assert not (tmp_path / "study.lock").exists()


def test_side_by_side_sittings_both_logged(tmp_path, monkeypatch):
    """A sitting of the same study that ends while this one trains keeps its study.json entry."""
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "log"

    def other_sitting_ends(study, time_limit, counts=None, log=None):
        (study.out / "study.json").write_text(json.dumps({"sittings": [{"command": "other"}]}))
        counts.update(trained=0, finished=0, seconds=1.0)
        return counts

    monkeypatch.setattr(study_mod, "run_cells", other_sitting_ends)
    out.mkdir(parents=True)
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert [s["command"] for s in sittings][0] == "other" and len(sittings) == 2
    assert sittings[1]["command"].startswith("simprune study --config")


def test_sigterm_ends_a_sitting_cleanly(data_root, tmp_path):
    """SIGTERM (a scheduler, ``kill``) stops ``simprune study`` like Ctrl-C: exit 143, a message,
    the sitting logged in study.json, the cell's lock released, and the cell resumable."""
    recipe = write_study(tmp_path, data_root)
    out = tmp_path / "runs" / "term"
    metrics = out / "dense" / "seed0" / "metrics.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "simprune.cli", "study", "--config", str(recipe), "--out", str(out),
           "--set", "epochs=20"]  # 160 steps: long enough to be stopped mid-cell
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted; run the same command to" in err
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert len(sittings) == 1 and sittings[0]["cells_trained"] == 0
    assert not (out / "dense" / "seed0" / "study.lock").exists()
    assert load_checkpoint(out / "dense" / "seed0" / "checkpoint.pt")["step"] >= 1


def test_plot_marks_points_with_fewer_seeds(tmp_path):
    """A point with fewer finished seeds than the best-covered one says so in its label."""
    assert point_label(0.8, 2, 2) == "0.8"
    assert point_label(0.8, 1, 2) == "0.8, 1 seed"
    assert point_label(None, 1, 3) == "1 seed"
    assert point_label(None, 2, 2) == ""
    rows = [Row("Dense", "dense", None, 2, 2, (35.5, 0.4), (40.0, 0.3), 100.0, 10.0),
            Row("EViT", "evit", 0.8, 2, 1, (35.1, math.nan), (39.0, math.nan), 77.0, 8.0),
            Row("EViT", "evit", 0.7, 2, 0, None, None, 68.0, None)]
    write_plot(rows, tmp_path / "p.png", "t")
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "p.png").ndim == 3
