"""``simprune bench cost`` for masked image modelling: MAE and PCAE settings against MAE at mask 0.75.

PCAE's claim is throughput: "2.25× MAE", measured with PCAE at mask 0.85 against MAE at 0.75, with
the speed-up coming from the smaller reconstruction (the decoder decodes 1 + 9 + 6 tokens instead of
1 + 64 on the CPU model), so it depends on the decoder's depth. This benchmark therefore measures,
for every decoder size asked (``--decoder-depths``; default the recipe's):

- the reference: MAE at mask 0.75 with that decoder (the first row of its group);
- the recipe's framework at every ``--mask-ratios`` value (PCAE: 0.75, 0.85, 0.90 by default),
  and with ``--random-drop`` also PCAE's random-drop ablation;

all built in one process with the same encoder and decoder sizes and timed interleaved, as
``bench cost`` times reducers (:mod:`simprune.bench.cost_step`: rotating order, warm-up rounds,
median step time; the real step: augmentation, forward, backward, clip, AdamW and the EMA update).
Each row gives, relative to its group's reference: the step-time ratio (and ``speedup`` = its
inverse, the paper's "×"), process CPU time, counted FLOPs (forward + backward, FlopCounterMode) and
the bytes saved for backward; ``train_flops`` is the absolute count per step. Every row names its
mask ratio and decoder size (a table without them cannot be read: METHOD.md, "PCAE").
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simprune.bench.cost_step import (
    PHASES,
    Variant,
    count_step_flops,
    medians,
    saved_bytes,
    synthetic_images,
    time_rounds,
)
from simprune.config import TrainConfig, make_config
from simprune.frameworks import FRAMEWORKS
from simprune.run import build_augment, build_framework, check_config, data_info

FILES = ("mim_cost.csv", "mim_cost.json")
CSV_COLUMNS = ("group", "label", "framework", "mask_ratio", "decoder", "random_drop", "batch_size",
               "time_ratio", "speedup", "cpu_time_ratio", "flops_ratio", "flops_speedup", "train_flops",
               "memory_ratio", "saved_mb", "median_step_s", "img_per_s", "decoded_tokens",
               *(f"{p}_ratio" for p in PHASES))


def is_mim(framework: str) -> bool:
    """Whether a framework is measured against a reference step of its own (MAE, PCAE)."""
    return framework in FRAMEWORKS and hasattr(FRAMEWORKS.get(framework), "cost_reference")


@dataclass
class MIMVariant(Variant):
    """A :class:`Variant` named by its framework, mask ratio and decoder."""

    name: str = ""
    group: str = ""

    @property
    def label(self) -> str:
        return self.name


def setting(cfg: TrainConfig, mask_ratio: float | None = None, decoder_depth: int | None = None,
            random_drop: bool | None = None) -> TrainConfig:
    """``cfg`` with another mask ratio, decoder depth or (PCAE) random drop."""
    fw = cfg.framework
    over: dict[str, Any] = {}
    if mask_ratio is not None:
        over[f"{fw}.mask_ratio"] = float(mask_ratio)
    if decoder_depth is not None:
        over[f"{fw}.decoder_depth"] = int(decoder_depth)
    if random_drop is not None and fw == "pcae":
        over["pcae.random_drop"] = bool(random_drop)
    return make_config(cfg.to_dict(), over) if over else cfg


def plan_settings(cfg: TrainConfig, mask_ratios: Sequence[float] | None,
                  decoder_depths: Sequence[int] | None, random_drop: bool = False
                  ) -> list[tuple[str, TrainConfig]]:
    """``(group, config)`` per variant: per decoder depth, the reference first, then the settings."""
    fw_cls = FRAMEWORKS.get(cfg.framework)
    depths = list(decoder_depths or [cfg.fw.decoder_depth])
    ratios = list(mask_ratios or ([0.75, 0.85, 0.9] if cfg.framework == "pcae" else [cfg.fw.mask_ratio]))
    out: list[tuple[str, TrainConfig]] = []
    for d in depths:
        here = setting(cfg, decoder_depth=d)
        ref = fw_cls.cost_reference(here)
        group = f"decoder {d}x{here.fw.decoder_dim}"
        out.append((group, ref))
        seen = {json.dumps(ref.to_dict(), sort_keys=True)}
        for r in ratios:
            for rd in ([False, True] if random_drop and cfg.framework == "pcae" else [None]):
                c = setting(here, mask_ratio=r, random_drop=rd)
                key = json.dumps(c.to_dict(), sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    out.append((group, c))
    return out


def build_mim_variants(settings: Sequence[tuple[str, TrainConfig]], device: torch.device,
                       progress: float = 0.5) -> list[MIMVariant]:
    """Every setting built from the same seed, on the same synthetic images."""
    first = settings[0][1]
    data = data_info(first)
    images = synthetic_images(first, data.in_chans, device, None, first.seed)
    labels = (torch.arange(images.shape[0]) % max(1, data.num_classes)).to(device)
    variants = []
    for group, cfg in settings:
        check_config(cfg)
        torch.manual_seed(cfg.seed)
        fw = build_framework(cfg, data).to(device)
        opt = torch.optim.AdamW(fw.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        augment = build_augment(cfg, fw, data).to(device)
        name = FRAMEWORKS.get(cfg.framework).cost_label(cfg)
        variants.append(MIMVariant(cfg, fw, augment, opt, images, labels, progress, name=name,
                                   group=group))
    return variants


def decoded_tokens(v: MIMVariant) -> int:
    """Tokens the decoder reconstructs per image (MAE: every masked patch; PCAE: what the teacher
    keeps), read from one forward's logs."""
    with torch.no_grad():
        out = v.framework(v.batch(0), v.step_progress)
    return int(out.logs["decoded"])


def measure_mim(settings: Sequence[tuple[str, TrainConfig]], device: torch.device, warmup: int,
                repeats: int, progress: float = 0.5) -> dict[str, Any]:
    """Build, count and time every setting; rows relative to their group's reference."""
    def say(msg: str) -> None:
        print(f"[bench cost] {msg}", file=sys.stderr, flush=True)

    load = {"start": os.getloadavg()}
    say(f"building {len(settings)} MAE/PCAE variants")
    variants = build_mim_variants(settings, device, progress)
    say("counting FLOPs and saved activations (one step each)")
    counted = {v.label + v.group: count_step_flops(v, 0) for v in variants}
    saved = {v.label + v.group: saved_bytes(v, 1) for v in variants}
    decoded = {v.label + v.group: decoded_tokens(v) for v in variants}
    say(f"timing: {warmup} warm-up + {repeats} timed rounds")
    load["timing_start"] = os.getloadavg()
    time_rounds(variants, warmup, repeats, first_round=3)
    load["timing_end"] = os.getloadavg()
    rows = []
    ref: dict[str, Any] = {}
    for v in variants:
        key = v.label + v.group
        m = medians(v)
        if v.group not in ref:
            ref[v.group] = {"m": m, "flops": counted[key], "saved": saved[key]}
        r = ref[v.group]
        c = v.cfg.fw
        row = {
            "group": v.group, "label": v.label, "framework": v.cfg.framework,
            "mask_ratio": c.mask_ratio, "decoder": f"{c.decoder_depth}x{c.decoder_dim}",
            "random_drop": bool(getattr(c, "random_drop", False)), "batch_size": v.cfg.batch_size,
            "time_ratio": m["step"] / r["m"]["step"], "speedup": r["m"]["step"] / m["step"],
            "cpu_time_ratio": m["cpu"] / r["m"]["cpu"],
            "flops_ratio": counted[key] / r["flops"], "flops_speedup": r["flops"] / counted[key],
            "train_flops": counted[key], "memory_ratio": saved[key] / r["saved"],
            "saved_mb": saved[key] / 2**20, "median_step_s": m["step"],
            "img_per_s": v.cfg.batch_size / m["step"], "decoded_tokens": decoded[key],
            "reference": variants[[u.group for u in variants].index(v.group)].label,
        }
        row.update({f"{p}_ratio": m[p] / r["m"][p] for p in PHASES})
        rows.append(row)
    first = settings[0][1]
    return {
        "kind": "mim", "model": first.model, "batch_size": first.batch_size,
        "global_size": first.global_size, "precision": first.precision, "device": str(device),
        "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
        "progress": progress, "memory_metric": "saved_for_backward",
        "load_avg": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "rows": rows, "configs": [c.to_dict() for _, c in settings],
    }


def format_mim_table(res: dict[str, Any]) -> str:
    load = res["load_avg"]
    lines = [
        f"MAE/PCAE training step, {res['model']}, batch {res['batch_size']}, {res['global_size']} px, "
        f"{res['precision']}, {res['device']}, {res['threads']} threads; {res['repeats']} timed rounds "
        f"after {res['warmup']} warm-up; load (1-min) {load['timing_start'][0]:.2f} -> "
        f"{load['timing_end'][0]:.2f}",
        "each group's first row is the reference (MAE at mask 0.75 with the group's decoder); ratios "
        "are to it, speed-up = reference / row",
        f"{'setting':<40}{'decoded':>8}{'time':>8}{'speedup':>9}{'cpu':>7}{'FLOPs':>8}"
        f"{'FLOPs x':>9}{'GFLOP/step':>12}{'memory':>8}{'img/s':>9}",
    ]
    group = None
    for r in res["rows"]:
        if r["group"] != group:
            group = r["group"]
            lines.append(f"-- {group}")
        lines.append(
            f"{r['label']:<40}{r['decoded_tokens']:>8d}{r['time_ratio']:>8.3f}{r['speedup']:>9.3f}"
            f"{r['cpu_time_ratio']:>7.3f}{r['flops_ratio']:>8.3f}{r['flops_speedup']:>9.3f}"
            f"{r['train_flops'] / 1e9:>12.3f}{r['memory_ratio']:>8.3f}{r['img_per_s']:>9.1f}")
    lines.append("time = median step wall time; cpu = median process CPU time; FLOPs = counted by "
                 "FlopCounterMode in one real step (forward + backward), GFLOP/step its absolute "
                 "value (train_flops); memory = bytes saved for backward; decoded = tokens the "
                 "decoder reconstructs per image")
    return "\n".join(lines)


def write_mim_results(res: dict[str, Any], folder: Path) -> list[Path]:
    """``mim_cost.csv`` and ``mim_cost.json``; fails on an existing file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in FILES]
    taken = [p.name for p in paths if p.exists()]
    if taken:
        raise FileExistsError(f"{folder} already holds {', '.join(taken)}; pass another --out")
    with paths[0].open("x", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in res["rows"]:
            writer.writerow(r)
    with paths[1].open("x") as f:
        json.dump(res, f, indent=2)
    return paths


def run_mim_cost(args: Any, cfg: TrainConfig, device: torch.device, folder: Path) -> int:
    """``simprune bench cost`` with an MAE or PCAE recipe (called by :func:`simprune.bench.cost.run_cost`)."""
    try:
        settings = plan_settings(cfg, args.mask_ratios, args.decoder_depths, args.random_drop)
        for _, c in settings:
            check_config(c)
        if any((folder / n).exists() for n in FILES):
            raise FileExistsError(f"{folder} already holds a result; pass another --out")
    except (KeyError, ValueError, TypeError, FileExistsError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = measure_mim(settings, device, args.warmup, args.repeats, args.progress)
    res["out"] = str(folder)
    paths = write_mim_results(res, folder)
    if args.json:
        print(json.dumps(res))
    else:
        print(format_mim_table(res))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


__all__ = ["MIMVariant", "build_mim_variants", "format_mim_table", "is_mim", "measure_mim",
           "plan_settings", "run_mim_cost", "setting", "write_mim_results"]
