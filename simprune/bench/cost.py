"""``simprune bench cost``: time, FLOPs and activation memory of real training steps vs dense.

Every setting asked for is built in one process (:mod:`simprune.bench.cost_step`: the framework of
``build_framework``, its augmentation and AdamW) and runs the step ``Trainer.train_step`` runs:
synthetic ``uint8`` images → device augmentation → framework forward → backward → clip → the
framework's hooks around AdamW (teacher EMA, ...). One path for every framework: the settings are
the grid of what the framework lets vary (:func:`plan_settings`: every ``--methods`` × ``--keep-rates``
for a framework that takes a reducer; ``--mask-ratios``, ``--decoder-depths`` and ``--random-drop``
for one that masks, MAE and PCAE), and each is compared with the step its framework names as its
``cost_reference`` (dense by default; MAE at mask 0.75 with the same decoder for MAE and PCAE,
whose claim is PCAE at 0.85 against it). Settings with the same reference form a group, the
reference first. The figures follow METHOD.md ("Cost figures"), each a ratio to the reference:

- time: the median step time over dense's median, from rounds that visit every variant once
  (the order rotating each round), after warm-up rounds; process CPU time and the ratio of each
  phase (augment, forward, backward, update) are reported too;
- FLOPs: the ratio ``FlopCounterMode`` counts in the forward + backward of one real step of each
  variant at the benchmark's batch (MATH attention on CPU), as :mod:`simprune.bench.flops` does;
- memory: bytes autograd saves for backward in the forward (unique storages, parameters left out)
  on any device, and on CUDA the peak allocated memory over a step (the table's figure there).

A comparison column (``<a>_vs_<b>``: ``a``'s time ratio over ``b``'s at the same keep rate) is
added for the first two methods given. Results: a table, and ``cost.csv``, ``cost.json``,
``cost.png`` in ``--out`` (an existing file is never overwritten: the command stops first).
Examples (a few minutes each on two CPU cores)::

    simprune bench cost --framework dino --model deit_small_patch16_224 --batch-size 4 \\
        --methods simprune evit tome --keep-rates 0.9 0.8 0.7 --set local_views=2
    simprune bench cost --config configs/cifar10_pcae.toml --decoder-depths 8 2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from simprune.bench.cost_step import (
    PHASES,
    Variant,
    build_settings,
    count_step_flops,
    cuda_peak,
    medians,
    profile_step,
    saved_bytes,
    time_rounds,
    with_method,
)
from simprune.bench.framework_defaults import bench_defaults, describe
from simprune.config import (
    FRAMEWORKS,
    TrainConfig,
    aliases,
    flatten,
    load_recipe,
    make_config,
    owns_flops_budget,
)
from simprune.config.flags import parse_option
from simprune.frameworks import DENSE
from simprune.models.configs import model_config
from simprune.run import check_config

FILES = ("cost.csv", "cost.json", "cost.png")
#: the reducers measured when ``--methods`` is not given (frameworks that take a reducer)
DEFAULT_METHODS = ("simprune", "evit", "tome")
#: config keys the benchmark sets itself (dotted form)
SET_HERE = ("reducer.method", "reducer.keep_rate", "reducer.keep_warmup", "out", "device")
#: the CSV's columns; a comparison (``<a>_vs_<b>``) follows ``cuda_peak_ratio`` when there is one
CSV_HEAD = (
    "group", "label", "framework", "model", "method", "keep_rate", "mask_ratio", "decoder",
    "random_drop", "batch_size", "time_ratio", "speedup", "cpu_time_ratio", "flops_ratio",
    "flops_speedup", "step_gflops", "train_flops", "memory_ratio", "saved_mb", "saved_ratio",
    "cuda_peak_mb", "cuda_peak_ratio",
)
CSV_TAIL = ("vs_base", "vs_base_cpu", "median_step_s", "median_cpu_s", "img_per_s", "page_faults",
            "decoded",
            *(f"{p}_ratio" for p in PHASES), *(f"{p}_share" for p in PHASES))


def comparison(methods: Sequence[str]) -> tuple[str, str] | None:
    """The pair the comparison columns compare: the first two reducers given, if two were."""
    names = list(dict.fromkeys(m.partition(":")[0] for m in methods))
    return (names[0], names[1]) if len(names) >= 2 else None


def csv_columns(compare: tuple[str, str] | None) -> tuple[str, ...]:
    extra = () if compare is None else (f"{compare[0]}_vs_{compare[1]}",)
    return (*CSV_HEAD, *extra, *CSV_TAIL)


#: the columns with the default methods (the first two, compared)
CSV_COLUMNS = csv_columns(comparison(DEFAULT_METHODS))


def add_cost_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``simprune bench cost``."""
    parser.add_argument("--framework", default=None, help="a registered framework (default dino)")
    parser.add_argument("--model", default=None, help="registered ViT (default deit_small_patch16_224)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="reducers, each optionally with options: name:key=value,key=value (e.g. "
                             "attn_topk:attn_keep=0.3,attn_form=sparse, Tri-Level's attention level); "
                             f"default {' '.join(DEFAULT_METHODS)} for a framework that takes a reducer")
    parser.add_argument("--keep-rates", type=float, nargs="+", default=[0.9, 0.8, 0.7],
                        help="keep rates of every method (default 0.9 0.8 0.7)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 8)")
    parser.add_argument("--global-size", type=int, default=None, help="(default: the model's size)")
    parser.add_argument("--reduce-at", type=int, nargs="+", default=None, help="(default 4 7 10)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="(default fp32)")
    parser.add_argument("--config", default=None,
                        help="TOML training recipe for the other settings (heads, lr, drop_path...)")
    parser.add_argument("--set", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="any training-config key, e.g. moco_hidden=1024, local_views=2 "
                             "(repeatable)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--progress", type=float, default=0.5,
                        help="training progress the step is taken at (SimPrune's window position)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder (default runs/bench_cost/<timestamp>)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-plot", action="store_true", help="do not write cost.png")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of one step of every variant (stderr)")
    parser.add_argument("--mask-ratios", type=float, nargs="+", default=None,
                        help="a framework that masks (MAE, PCAE): the mask ratios measured against its "
                             "cost reference (default: the framework's, PCAE 0.75 0.85 0.9; MAE the "
                             "recipe's)")
    parser.add_argument("--decoder-depths", type=int, nargs="+", default=None,
                        help="a framework with a decoder (MAE, PCAE): decoder depths, each a group "
                             "with its own reference (default the recipe's), e.g. 8 2")
    parser.add_argument("--random-drop", action="store_true",
                        help="a framework with a random_drop key (PCAE): also measure the random-drop "
                             "ablation")


def _dotted(key: str) -> str:
    """A flat alias or dotted key -> its dotted form (base keys unchanged)."""
    return aliases().get(key, key)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The dense variant's config: recipe < ``--set`` < flags < defaults for what none gave.

    A recipe's reducer section, ``out`` and ``device`` are replaced by the benchmark's own (every
    variant runs at its target keep rate, without a warm-up).
    """
    recipe = flatten(load_recipe(args.config)) if args.config else {}
    base = {k: v for k, v in recipe.items()
            if not _dotted(k).startswith("reducer.") and _dotted(k) not in SET_HERE}
    fixed = sorted(k for k in dict(args.set) if _dotted(k) in SET_HERE)
    if fixed:
        raise ValueError(f"--set {', '.join(fixed)}: the benchmark sets these itself (use --methods, "
                         "--keep-rates, --out, --device)")
    over = dict(args.set)  # overrides: a key that does not apply is an error, never dropped
    flags = {"framework": args.framework, "model": args.model, "batch_size": args.batch_size,
             "global_size": args.global_size, "precision": args.precision, "seed": args.seed}
    over.update({k: v for k, v in flags.items() if v is not None})
    given = {**base, **over}
    model = str(given.get("model", "deit_small_patch16_224"))
    img = model_config(model).img_size
    defaults = {"framework": "dino", "model": model, "batch_size": 8, "global_size": img,
                "dataset": "imagenet" if img >= 224 else "cifar10"}  # shape and classes only
    over.update({k: v for k, v in defaults.items() if k not in given})
    # the reduction points are kept for the pruned variants (a dense config has no reducer keys)
    reduce_at = [v for k, v in over.items() if _dotted(k) == "reducer.reduce_at"]
    over = {k: v for k, v in over.items() if _dotted(k) != "reducer.reduce_at"}
    defaults = bench_defaults(base, over)  # e.g. distill: a random frozen teacher, no file read
    cfg = make_config(base, {**over, **defaults, "reducer.method": DENSE})
    cfg.notes += describe(defaults)
    if args.reduce_at or reduce_at:
        cfg.reducer.reduce_at = [int(b) for b in (args.reduce_at or reduce_at[0])]
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {cfg.precision!r}: the cost benchmark runs fp32 or bf16")
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def plan_settings(cfg: TrainConfig, methods: Sequence[str] | None = None,
                  keep_rates: Sequence[float] = (0.9, 0.8, 0.7), mask_ratios: Sequence[float] | None = None,
                  decoder_depths: Sequence[int] | None = None, random_drop: bool = False
                  ) -> list[tuple[str, TrainConfig]]:
    """``(group, config)`` for every setting the framework of ``cfg`` lets vary, each group's
    reference (the framework's ``cost_reference``, named by its ``cost_label``) first.

    A framework that takes a reducer: every method x keep rate (default methods
    :data:`DEFAULT_METHODS`). One that masks: every mask ratio (default the framework's
    ``cost_mask_ratios``, else the recipe's). ``decoder_depths`` and ``random_drop`` vary the keys of
    those names in the framework's section. A setting equal to its reference is measured once.
    """
    fw_cls = FRAMEWORKS.get(cfg.framework)
    name = cfg.framework
    keys = {f.name for f in dataclasses.fields(fw_cls.Config)}

    def need(key: str, flag: str) -> None:
        if key not in keys:
            raise ValueError(f"{flag}: framework {name!r} has no {key} (its section [{name}] has "
                             f"{', '.join(sorted(keys)) or 'no keys'})")

    def vary(base: TrainConfig, over: dict[str, Any]) -> TrainConfig:
        return make_config(base.to_dict(), over) if over else base

    if decoder_depths:
        need("decoder_depth", "--decoder-depths")
    bases = ([vary(cfg, {f"{name}.decoder_depth": int(d)}) for d in decoder_depths]
             if decoder_depths else [cfg])
    variations: list[dict[str, Any]] = [{}]
    if fw_cls.cost_masks:
        ratios = list(mask_ratios or fw_cls.cost_mask_ratios or [fw_cls.cost_mask_ratio(cfg)])
        variations = [{f"{name}.mask_ratio": float(r)} for r in ratios]
    elif mask_ratios:
        raise ValueError(f"--mask-ratios: framework {name!r} masks nothing (frameworks that do: "
                         f"{', '.join(n for n in FRAMEWORKS.names() if FRAMEWORKS.get(n).cost_masks)})")
    if random_drop:
        need("random_drop", "--random-drop")
        variations = [{**v, f"{name}.random_drop": rd} for v in variations for rd in (False, True)]
    takes_reducer = fw_cls.reducers != ()
    if not takes_reducer and methods:
        raise ValueError(f"--methods: framework {name!r} takes no reducer (its reduction is its "
                         "masking: vary --mask-ratios)")
    groups: dict[str, list[TrainConfig]] = {}
    labels: dict[str, str] = {}
    for base in bases:
        for v in variations:
            here = vary(base, v)
            settings = ([with_method(here, m, float(k)) for m in (methods or DEFAULT_METHODS)
                         for k in keep_rates] if takes_reducer else [here])
            for c in settings:
                ref = fw_cls.cost_reference(c) or c
                key = json.dumps(ref.to_dict(), sort_keys=True)
                if key not in groups:
                    groups[key] = [ref]
                    labels[key] = FRAMEWORKS.get(ref.framework).cost_label(ref)
                known = {json.dumps(x.to_dict(), sort_keys=True) for x in groups[key]}
                if json.dumps(c.to_dict(), sort_keys=True) not in known:
                    groups[key].append(c)
    return [(labels[k], c) for k, cfgs in groups.items() for c in cfgs]


def measure(settings: Sequence[tuple[str, TrainConfig]], device: torch.device, warmup: int,
            repeats: int, progress: float = 0.5, profile: bool = False,
            compare: tuple[str, str] | None = None) -> dict[str, Any]:
    """Build the variants, measure them and return the JSON-ready result (see the module doc)."""
    def say(msg: str) -> None:
        print(f"[bench cost] {msg}", file=sys.stderr, flush=True)

    cfg = settings[0][1]
    # the reduction points of the reducing settings (a dense reference keeps the default ones)
    reduce_at = next((list(c.reducer.reduce_at) for _, c in settings if c.reducer.method != DENSE),
                     list(cfg.reducer.reduce_at))
    load = {"start": os.getloadavg()}
    say(f"building {len(settings)} variants of {cfg.framework} {cfg.model}")
    variants = build_settings(settings, device, progress)
    say("counting FLOPs and saved activations (one step each)")
    counted = [count_step_flops(v, 0) for v in variants]
    saved = [saved_bytes(v, 1) for v in variants]
    peaks = [cuda_peak(v, 2) for v in variants] if device.type == "cuda" else []
    logs = [_logged(v) for v in variants]
    say(f"timing: {warmup} warm-up + {repeats} timed rounds")
    load["timing_start"] = os.getloadavg()
    next_round = time_rounds(variants, warmup, repeats, first_round=3)
    load["timing_end"] = os.getloadavg()
    if profile:
        for v in variants:
            print(profile_step(v, next_round), file=sys.stderr)
    rows = assemble(variants, counted, saved, peaks, logs, compare)
    return {
        "framework": cfg.framework, "model": cfg.model, "batch_size": cfg.batch_size,
        "global_size": cfg.global_size, "reduce_at": reduce_at,
        "precision": cfg.precision, "device": str(device),
        "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats, "progress": progress,
        "memory_metric": "cuda_peak" if peaks else "saved_for_backward",
        "load_avg": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "dense_phase_share": {p: rows[0][f"{p}_share"] for p in PHASES},
        "groups": list(dict.fromkeys(v.group for v in variants)),
        "compare": list(compare) if compare else None,
        "config": cfg.to_dict(), "configs": [c.to_dict() for _, c in settings],
        "notes": list(cfg.notes), "rows": rows,
    }


def _logged(v: Variant) -> dict[str, float]:
    """The framework's ``cost_logs`` from one forward (MAE/PCAE: tokens decoded per image)."""
    keys = FRAMEWORKS.get(v.cfg.framework).cost_logs
    if not keys:
        return {}
    with torch.no_grad():
        out = v.framework(v.batch(0), v.step_progress)
    return {k: float(out.logs[k]) for k in keys if k in out.logs}


def assemble(variants: Sequence[Variant], counted: Sequence[int], saved: Sequence[int],
             peaks: Sequence[tuple[int, int]], logs: Sequence[dict[str, float]] | None = None,
             compare: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per variant: every figure as a ratio to its group's reference (the group's first)."""
    med = [medians(v) for v in variants]
    first: dict[str, int] = {}
    rows = []
    for i, v in enumerate(variants):
        r = first.setdefault(v.group, i)
        m, d = med[i], med[r]
        row: dict[str, Any] = {
            "group": v.group, "label": v.label, "reference": variants[r].label,
            "framework": v.cfg.framework, "model": v.cfg.model, "method": v.method,
            "keep_rate": v.keep_rate, "batch_size": v.cfg.batch_size,
            **FRAMEWORKS.get(v.cfg.framework).cost_fields(v.cfg),
            "time_ratio": m["step"] / d["step"], "speedup": d["step"] / m["step"],
            "cpu_time_ratio": m["cpu"] / d["cpu"],
            "flops_ratio": counted[i] / counted[r], "flops_speedup": counted[r] / counted[i],
            "step_gflops": counted[i] / 1e9, "train_flops": counted[i],
            "saved_mb": saved[i] / 2**20, "saved_ratio": saved[i] / saved[r],
            "cuda_peak_mb": peaks[i][0] / 2**20 if peaks else None,
            "cuda_peak_ratio": peaks[i][0] / peaks[r][0] if peaks else None,
            "cuda_peak_above_start_ratio": peaks[i][1] / peaks[r][1] if peaks else None,
            "vs_base": None, "vs_base_cpu": None,
            "median_step_s": m["step"], "median_cpu_s": m["cpu"],
            "img_per_s": v.cfg.batch_size / m["step"],
            "page_faults": m["faults"], **(logs[i] if logs else {}),
        }
        row["memory_ratio"] = row["cuda_peak_ratio"] if peaks else row["saved_ratio"]
        row.update({f"{p}_ratio": m[p] / d[p] for p in PHASES})
        row.update({f"{p}_share": m[p] / m["step"] for p in PHASES})
        rows.append(row)
    if compare is not None:
        a, b = compare
        col = f"{a}_vs_{b}"
        other = {(r["group"], r["keep_rate"]): r for r in rows if r["method"].partition(":")[0] == b}
        for r in rows:
            r[col] = r[col + "_cpu"] = None
            o = other.get((r["group"], r["keep_rate"]))
            if r["method"].partition(":")[0] == a and o is not None:
                r[col] = r["time_ratio"] / o["time_ratio"]
                r[col + "_cpu"] = r["cpu_time_ratio"] / o["cpu_time_ratio"]
    # a method with options (simprune:matching=one_to_one) against the same method without them
    plain = {(r["group"], r["method"], r["keep_rate"]): r for r in rows}
    for r in rows:
        base = plain.get((r["group"], r["method"].partition(":")[0], r["keep_rate"]))
        if base is not None and base is not r:
            r["vs_base"] = r["time_ratio"] / base["time_ratio"]
            r["vs_base_cpu"] = r["cpu_time_ratio"] / base["cpu_time_ratio"]
    return rows


# ----------------------------------------------------------------------------- output


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(res: dict[str, Any]) -> str:
    """The figures as a readable table, one block per reference group, with the setting and the
    machine load."""
    load = res["load_avg"]
    rows = res["rows"]
    compare = res.get("compare")
    col = f"{compare[0]}_vs_{compare[1]}" if compare else None
    logged = [k for k in ("decoded",) if any(k in r for r in rows)]
    options = any(r.get("vs_base") is not None for r in rows)
    width = max(12, *(len(r["label"]) + 2 for r in rows))
    lines = [
        f"{res['framework']} step, {res['model']}, batch {res['batch_size']}, {res['global_size']} px, "
        f"reduce at {tuple(res['reduce_at'])}, {res['precision']}, {res['device']}, "
        f"{res['threads']} threads; {res['repeats']} timed rounds after {res['warmup']} warm-up; "
        f"load (1-min) {load['timing_start'][0]:.2f} -> {load['timing_end'][0]:.2f}",
        "reference step time by phase: " + ", ".join(
            f"{p} {100 * s:.1f}%" for p, s in res["dense_phase_share"].items()),
        "memory: " + ("peak allocated CUDA memory" if res["memory_metric"] == "cuda_peak"
                      else "bytes saved for backward"),
        f"{'setting':<{width}}{'time':>8}{'speedup':>9}{'cpu':>8}{'FLOPs':>8}{'memory':>8}"
        + (f"{compare[0][:4] + '/' + compare[1][:4]:>11}" if col else "")
        + "".join(f"{k:>9}" for k in logged)
        + (f"{'/base':>8}{'cpu':>7}" if options else "")
        + f"   {'augment':>8}{'forward':>8}{'backward':>9}{'update':>8}{'faults':>8}",
    ]
    group = None
    for r in rows:
        if r["group"] != group and len(res.get("groups", [])) > 1:
            lines.append(f"-- against {r['group']}")
        group = r["group"]
        lines.append(
            f"{r['label']:<{width}}{r['time_ratio']:>8.3f}{r['speedup']:>9.3f}{r['cpu_time_ratio']:>8.3f}"
            f"{r['flops_ratio']:>8.3f}{r['memory_ratio']:>8.3f}"
            + (f"{_fmt(r[col]):>11}" if col else "")
            + "".join(f"{_fmt(r.get(k), '.0f'):>9}" for k in logged)
            + (f"{_fmt(r.get('vs_base')):>8}{_fmt(r.get('vs_base_cpu')):>7}" if options else "")
            + f"   {r['augment_ratio']:>8.3f}{r['forward_ratio']:>8.3f}"
            f"{r['backward_ratio']:>9.3f}{r['update_ratio']:>8.3f}{r['page_faults'] / 1e3:>7.1f}k")
    lines += [f"note: {n}" for n in res.get("notes", [])]
    lines.append("ratios to each group's reference (its first row); time = median step wall time, "
                 "speedup = its inverse, cpu = median process CPU time; FLOPs = counted by "
                 "FlopCounterMode in one real step (forward + backward); "
                 + (f"{compare[0][:4]}/{compare[1][:4]} = {compare[0]}'s time over {compare[1]}'s at "
                    "the same keep rate; " if col else "")
                 + ("decoded = tokens the decoder reconstructs per image; " if logged else "")
                 + ("/base, cpu = a method with options over the same method without them (wall, "
                    "CPU time); " if options else "")
                 + "augment..update = the phases' time ratios; faults = minor page faults per step")
    return "\n".join(lines)


def plot_costs(res: dict[str, Any], path: Path) -> None:
    """Each cost ratio against keep rate, one line per method (the reference at keep 1); settings
    that are not a keep rate (mask ratios) as one line per group against the setting's index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != DENSE))
    panels = (("time_ratio", "step time"), ("flops_ratio", "FLOPs (counted)"),
              ("memory_ratio", "memory" + (" (CUDA peak)" if res["memory_metric"] == "cuda_peak"
                                           else " (saved for backward)")))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for ax, (key, title) in zip(axes, panels):
        if methods:
            for i, m in enumerate(methods):
                pts = sorted([(1.0, 1.0)] + [(r["keep_rate"], r[key]) for r in rows if r["method"] == m])
                ax.plot(*zip(*pts), marker="o", color=f"C{i}", label=m)
            ax.set(xlabel="keep rate")
        else:
            for i, g in enumerate(res.get("groups", [])):
                mine = [r for r in rows if r["group"] == g]
                ax.plot(range(len(mine)), [r[key] for r in mine], marker="o", color=f"C{i}", label=g)
                ax.set_xticks(range(len(mine)), [r["label"] for r in mine], rotation=30, ha="right",
                              fontsize=7)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set(title=f"{title} / reference", ylabel="ratio to the reference")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{res['framework']} {res['model']}, batch {res['batch_size']}, {res['device']}")
    with path.open("xb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path("runs/bench_cost") / time.strftime("%Y%m%d-%H%M%S")


def check_free(folder: Path, names: Sequence[str]) -> None:
    """Stop before any work when a result file already exists."""
    taken = [n for n in names if (folder / n).exists()]
    if taken:
        raise FileExistsError(f"{folder} already holds {', '.join(taken)}; pass another --out "
                              "(results are never overwritten)")


def write_results(res: dict[str, Any], folder: Path, plot: bool = True) -> list[Path]:
    """``cost.csv``, ``cost.json`` and (with ``plot``) ``cost.png``; fails on an existing file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in FILES[: 3 if plot else 2]]
    check_free(folder, [p.name for p in paths])
    columns = csv_columns(tuple(res["compare"]) if res.get("compare") else None)
    with paths[0].open("x", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in res["rows"]:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    with paths[1].open("x") as f:
        json.dump(res, f, indent=2)
    if plot:
        plot_costs(res, paths[2])
    return paths


def run_cost(args: argparse.Namespace) -> int:
    """``simprune bench cost``. Bad names or values, or an existing result file -> exit code 2."""
    try:
        cfg = train_config(args)
        if args.repeats < 1 or args.warmup < 0:
            raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
        if args.methods is not None and (not args.methods or DENSE in [m.partition(":")[0]
                                                                      for m in args.methods]):
            raise ValueError("--methods: give reducer names (the reference is always measured)")
        for name in (m.partition(":")[0] for m in args.methods or ()):
            if owns_flops_budget(name):
                raise ValueError(f"--methods: {name}'s cost depends on its trained "
                                 "gates, which change with every step a cost table would time; a "
                                 "run logs its realised training-FLOPs fraction as `flops` every "
                                 "step (docs/method.md, Dynamic SimPrune)")
        settings = plan_settings(cfg, args.methods, args.keep_rates, args.mask_ratios,
                                 args.decoder_depths, args.random_drop)
        for _, c in settings:
            check_config(c)  # a bad name or setting fails here, not later
        takes_reducer = FRAMEWORKS.get(cfg.framework).reducers != ()
        compare = comparison(args.methods or DEFAULT_METHODS) if takes_reducer else None
        device = pick_device(args.device)
        folder = out_dir(args)
        check_free(folder, FILES[: 2 if args.no_plot else 3])
    except (KeyError, ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = measure(settings, device, args.warmup, args.repeats, args.progress, args.profile, compare)
    res["notes"] = list(cfg.notes)
    res["out"] = str(folder)
    try:
        paths = write_results(res, folder, plot=not args.no_plot)
    except FileExistsError as err:  # appeared while measuring
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res))
    else:
        print(format_table(res))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simprune bench cost", description=__doc__.split("\n")[0])
    add_cost_args(parser)
    return run_cost(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["CSV_COLUMNS", "DEFAULT_METHODS", "add_cost_args", "comparison", "csv_columns", "format_table",
           "measure", "plan_settings", "run_cost", "train_config", "write_results"]
