"""The golden trace: short deterministic CPU runs whose per-step losses and kept token ids pin the
training stack's behaviour, so that a refactor can prove it changed nothing.

Float results depend on the machine (CPU vendor and vector width pick different MKL and ATen
kernels: the same commit gives losses 1e-7 apart on an Intel and an AMD AVX-512 machine), so the
fixture holds one record per machine :func:`fingerprint`. On a machine with a record the test is
bitwise; elsewhere it compares with the first record within :data:`REL_TOL` (kept ids exactly) and
says that no bitwise record exists for this machine.

``python tests/train/golden_kit.py`` (with ``SIMPRUNE_DATA`` set) records this machine's trace (other
machines' records are kept). Record from a commit whose behaviour is the reference (e.g. before a
refactor), and only re-record when a change of behaviour is intended; say so in the commit.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "fixtures" / "golden_trace.json"
STEPS = 3
#: relative tolerance of the per-step losses on a machine without its own record
REL_TOL = 1e-5
#: the key of the record made before records had fingerprints (an Intel machine, 2026-12-01)
LEGACY = "legacy (recorded 2026-12-01 at 3274a1c, machine not recorded)"
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
    from simprune.config import make_config
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


def cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fingerprint() -> str:
    """What decides the float results of the traced runs: torch, the CPU vendor and the kernels'
    vector width (e.g. ``torch 2.13.0+cpu, x86_64 AuthenticAMD AVX512``)."""
    return (f"torch {torch.__version__}, {platform.machine()} {cpu_vendor()} "
            f"{torch.backends.cpu.get_cpu_capability()}")


def records() -> dict[str, dict[str, Any]]:
    """The fixture's records, one per machine fingerprint (the first is the tolerance reference)."""
    data = json.loads(FIXTURE.read_text())
    return data["records"] if "records" in data else {LEGACY: data}


def trace(tmp: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    return {f"{fw}/{m}": run_one(fw, m, tmp / f"{fw}_{m}") for fw in FRAMEWORKS for m in METHODS}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = trace(Path(d))
    recs = records() if FIXTURE.is_file() else {}
    recs[fingerprint()] = result
    FIXTURE.write_text(json.dumps({"records": recs}, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE}: the record of {fingerprint()} ({len(recs)} records)", file=sys.stderr)
