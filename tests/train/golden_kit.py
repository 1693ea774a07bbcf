"""The golden trace: short deterministic CPU runs whose per-step losses and kept token ids pin the
training stack's behaviour, so that a refactor can prove it changed nothing.

``python tests/train/golden_kit.py`` (with ``SIMPRUNE_DATA`` set) rewrites the fixture; only do that
when a change of behaviour is intended, and say so in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "fixtures" / "golden_trace.json"
STEPS = 3
#: rows of each branch whose kept ids are recorded (view 1 of images 0-1, view 2 of images 0-1)
ROWS = [0, 1, 16, 17]

#: tiny runs on real CIFAR-10: 48-wide 12-block ViT/4, 64 images, batch 16, reductions at 4/7/10
BASE: dict[str, Any] = {
    "model": "vit_nano_patch4_32", "dataset": "cifar10", "train_subset": 64, "batch_size": 16,
    "epochs": 1.0, "log_every": 1, "ckpt_every": 1000, "progress_bar": False, "drop_path": 0.1,
    "deterministic": True, "eval_at_end": False, "seed": 3,
}
FRAMEWORKS: dict[str, dict[str, Any]] = {
    "dino": {"framework": "dino", "dino": {
        "local_views": 2, "local_size": 16, "warmup_teacher_frac": 0.5, "warmup_teacher_temp": 0.02,
        "freeze_last_layer": 0.25, "out_dim": 64, "head_hidden": 64, "bottleneck": 16}},
    "mocov3": {"framework": "mocov3", "mocov3": {"hidden": 64, "dim": 32}},
}
METHODS = ("dense", "simprune", "evit", "tome")


def run_one(framework: str, method: str, out: Path) -> dict[str, Any]:
    """Per-step losses (as float hex) and the kept ids of step 0's batch at every point."""
    from simprune.train.config import make_config
    from simprune.train.loop import Trainer

    reducer = {"method": method} if method == "dense" else {"method": method, "keep_rate": 0.7}
    cfg = make_config({**BASE, **FRAMEWORKS[framework], "reducer": reducer, "out": str(out)})
    trainer = Trainer(cfg)
    fw = trainer.framework
    captured: list[Any] = []
    forward = fw.forward

    def capture(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        captured.append(out)
        return out

    fw.forward = capture
    losses = []
    with torch.random.fork_rng():
        for step in range(STEPS):
            loss, _ = trainer.train_step(step)
            losses.append(float(loss).hex())
            trainer.step = step + 1
    points = []
    for pt in captured[0].points:
        rec = {"block": pt.block, "student": pt.student.ids[ROWS].tolist(),
               "teacher": pt.teacher.ids[ROWS].tolist()}
        if pt.local is not None:
            rec["local"] = pt.local.ids[ROWS].tolist()
        points.append(rec)
    return {"losses": losses, "points": points}


def trace(tmp: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    return {f"{fw}/{m}": run_one(fw, m, tmp / f"{fw}_{m}") for fw in FRAMEWORKS for m in METHODS}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = trace(Path(d))
    FIXTURE.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)", file=sys.stderr)
