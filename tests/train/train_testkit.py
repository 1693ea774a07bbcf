"""Training tests run real (tiny) runs on the real CIFAR-10 archive in ``$SIMPRUNE_DATA``
(default ``<repo>/../shared/data``), decoded once into ``$SIMPRUNE_CACHE``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from repo_paths import DATA, REPO  # noqa: F401 - re-exported to the tests

#: a tiny run: 48-wide 12-block ViT/4, 256 random training images, k-NN on small subsets
TINY = {
    "model": "vit_nano_patch4_32", "dataset": "cifar10", "train_subset": 256, "batch_size": 16,
    "epochs": 0.25, "knn_train": 256, "knn_test": 64, "log_every": 1, "ckpt_every": 2,
    "progress_bar": False, "drop_path": 0.0,
}
#: tiny heads per framework (flat aliases), added by :func:`cli_args` for the chosen framework
TINY_HEADS: dict[str, dict[str, object]] = {
    "mocov3": {"moco_hidden": 64, "moco_dim": 32},
    "dino": {"out_dim": 64, "head_hidden": 64, "bottleneck": 16},
    "dinov2": {"out_dim": 64, "head_hidden": 64, "bottleneck": 16},
    "supervised": {},
}


def with_heads(cfg: dict[str, object]) -> dict[str, object]:
    """``cfg`` plus the tiny head sizes of its framework (MoCo v3 by default), unless given, and
    without TINY's k-NN keys when the framework evaluates by its classifier (they would be an
    error there: simprune.config.EVAL_KEYS)."""
    from simprune.config import FRAMEWORKS
    from simprune.config.base import EVAL_KEYS

    framework = str(cfg.get("framework", "mocov3"))
    heads = TINY_HEADS.get(framework, {})
    if framework in FRAMEWORKS and FRAMEWORKS.get(framework).eval_protocol != "knn":
        cfg = {k: v for k, v in cfg.items() if k not in EVAL_KEYS}
    return {**{k: v for k, v in heads.items() if k not in cfg}, **cfg}


def cli_args(**cfg: object) -> list[str]:
    """``simprune train`` flags for a config dict (tiny heads of its framework added)."""
    out: list[str] = []
    for k, v in with_heads(cfg).items():
        out.append("--" + k.replace("_", "-"))
        out.extend(str(x) for x in v) if isinstance(v, (list, tuple)) else out.append(str(v))
    return out


def run_env(data_root: Path) -> dict[str, str]:
    env = dict(os.environ, SIMPRUNE_DATA=str(data_root), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


PY = sys.executable


def records(run_dir: Path) -> list[dict]:
    """Every line of a run's ``metrics.jsonl``."""
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of a run's logged training steps."""
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def kill_and_resume(cfg: dict[str, object], data_root: Path, folder: Path,
                    kill_after: int = 5) -> tuple[Path, Path, str]:
    """Train ``cfg`` uninterrupted into ``folder/ref``; train it again into ``folder/cut``, SIGKILL
    it once ``kill_after`` steps are logged, and run the same command to resume. Returns both run
    folders and the resumed run's stdout (the caller compares their losses)."""
    env = run_env(data_root)
    ref, cut = folder / "ref", folder / "cut"
    cmd = [PY, "-m", "simprune.cli", "train"]
    subprocess.run(cmd + cli_args(**cfg, out=ref), env=env, check=True, capture_output=True)
    total = max(losses(ref))
    proc = subprocess.Popen(cmd + cli_args(**cfg, out=cut), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some steps past a checkpoint have been logged
        if (cut / "metrics.jsonl").exists() and len(losses(cut)) >= kill_after:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(losses(cut)) < total, "the run finished before it could be killed"
    out = subprocess.run(cmd + cli_args(**cfg, out=cut), env=env, check=True, capture_output=True,
                         text=True)
    return ref, cut, out.stdout
