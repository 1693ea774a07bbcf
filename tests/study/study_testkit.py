"""Shared helpers of the study tests: a tiny study recipe on the repo's CPU recipe, its options, and
Trainer stand-ins."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from repo_paths import DATA, REPO  # noqa: F401 - re-exported to the tests

from simprune.study import add_study_args
from simprune.train import loop

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


class FakeTrainer:
    """A Trainer that writes a finished results.json at once, and fails for SimPrune cells."""

    def __init__(self, cfg) -> None:
        self.cfg, self.step, self.total_steps = cfg, 0, 2

    def run(self) -> dict:
        if self.cfg.reducer.method == "simprune":
            self.step = 1
            raise loop.NonFiniteError("the loss became NaN or inf at step 1; stopped")
        res = {"step": 2, "total_steps": 2, "finished": True, "train_seconds": 2.0, "knn_top1": 30.0,
               "knn_top5": 80.0, "linear_top1": 33.0}
        Path(self.cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(self.cfg.out) / "results.json").write_text(json.dumps(res))
        return res
