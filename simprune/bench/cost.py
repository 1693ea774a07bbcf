"""``simprune bench cost``: time, FLOPs and activation memory of real training steps vs dense.

Dense and every method × keep rate are built in one process (:mod:`simprune.bench.cost_step`: the
framework of ``build_framework``, its augmentation and AdamW, all from the same initial weights)
and run the step ``Trainer.train_step`` runs: synthetic ``uint8`` images → device augmentation →
framework forward → backward → clip → the framework's hooks around AdamW (teacher EMA, ...).
Any registered framework (``--framework``) and reducer (``--methods``) can be measured. The
figures follow METHOD.md ("Cost figures"), each a ratio to dense:

- time: the median step time over dense's median, from rounds that visit every variant once
  (the order rotating each round), after warm-up rounds; process CPU time and the ratio of each
  phase (augment, forward, backward, update) are reported too;
- FLOPs: the ratio ``FlopCounterMode`` counts in the forward + backward of one real step of each
  variant at the benchmark's batch (MATH attention on CPU), as :mod:`simprune.bench.flops` does;
- memory: bytes autograd saves for backward in the forward (unique storages, parameters left out)
  on any device, and on CUDA the peak allocated memory over a step (the table's figure there).

Results: a table, and ``cost.csv``, ``cost.json``, ``cost.png`` in ``--out`` (an existing file is
never overwritten: the command stops first). Example (a few minutes on two CPU cores)::

    simprune bench cost --framework dino --model deit_small_patch16_224 --batch-size 4 \\
        --methods simprune evit tome --keep-rates 0.9 0.8 0.7 --set local_views=2
"""

from __future__ import annotations

import argparse
import csv
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
    build_variants,
    count_step_flops,
    cuda_peak,
    medians,
    profile_step,
    saved_bytes,
    time_rounds,
    with_method,
)
from simprune.bench.flops import parse_option
from simprune.bench.framework_defaults import bench_defaults, describe
from simprune.config import TrainConfig, aliases, flatten, load_recipe, make_config
from simprune.frameworks import DENSE
from simprune.models.configs import model_config
from simprune.run import check_config

FILES = ("cost.csv", "cost.json", "cost.png")
#: config keys the benchmark sets itself (dotted form)
SET_HERE = ("reducer.method", "reducer.keep_rate", "reducer.keep_warmup", "out", "device")
CSV_COLUMNS = (
    "framework", "model", "method", "keep_rate", "batch_size", "time_ratio", "cpu_time_ratio",
    "flops_ratio", "step_gflops", "memory_ratio", "saved_mb", "saved_ratio", "cuda_peak_mb",
    "cuda_peak_ratio", "simprune_vs_evit", "median_step_s", "page_faults",
    *(f"{p}_ratio" for p in PHASES), *(f"{p}_share" for p in PHASES),
)


def add_cost_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``simprune bench cost``."""
    parser.add_argument("--framework", default=None, help="a registered framework (default dino)")
    parser.add_argument("--model", default=None, help="registered ViT (default deit_small_patch16_224)")
    parser.add_argument("--methods", nargs="+", default=["simprune", "evit", "tome"],
                        help="reducers, each optionally with options: name:key=value,key=value (e.g. "
                             "attn_topk:attn_keep=0.3,attn_form=sparse, Tri-Level's attention level)")
    parser.add_argument("--keep-rates", type=float, nargs="+", default=[0.9, 0.8, 0.7])
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
                        help="MAE/PCAE recipes: mask ratios measured against MAE at 0.75 (default "
                             "PCAE 0.75 0.85 0.9, MAE the recipe's); see simprune.bench.mim_cost")
    parser.add_argument("--decoder-depths", type=int, nargs="+", default=None,
                        help="MAE/PCAE recipes: decoder depths, each a group with its own MAE "
                             "reference (default the recipe's), e.g. 8 2")
    parser.add_argument("--random-drop", action="store_true",
                        help="PCAE recipes: also measure the random-drop ablation")


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


def measure(cfg: TrainConfig, methods: Sequence[str], keep_rates: Sequence[float], device: torch.device,
            warmup: int, repeats: int, progress: float = 0.5, profile: bool = False) -> dict[str, Any]:
    """Build the variants, measure them and return the JSON-ready result (see the module doc)."""
    def say(msg: str) -> None:
        print(f"[bench cost] {msg}", file=sys.stderr, flush=True)

    load = {"start": os.getloadavg()}
    say(f"building {1 + len(methods) * len(keep_rates)} variants of {cfg.framework} {cfg.model}")
    variants = build_variants(cfg, methods, keep_rates, device, progress)
    say("counting FLOPs and saved activations (one step each)")
    counted = {v.label: count_step_flops(v, 0) for v in variants}
    saved = {v.label: saved_bytes(v, 1) for v in variants}
    peaks = {v.label: cuda_peak(v, 2) for v in variants} if device.type == "cuda" else {}
    say(f"timing: {warmup} warm-up + {repeats} timed rounds")
    load["timing_start"] = os.getloadavg()
    next_round = time_rounds(variants, warmup, repeats, first_round=3)
    load["timing_end"] = os.getloadavg()
    if profile:
        for v in variants:
            print(profile_step(v, next_round), file=sys.stderr)
    rows = assemble(variants, counted, saved, peaks)
    return {
        "framework": cfg.framework, "model": cfg.model, "batch_size": cfg.batch_size,
        "global_size": cfg.global_size, "reduce_at": list(cfg.reducer.reduce_at),
        "precision": cfg.precision, "device": str(device),
        "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats, "progress": progress,
        "memory_metric": "cuda_peak" if peaks else "saved_for_backward",
        "load_avg": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "dense_phase_share": {p: rows[0][f"{p}_share"] for p in PHASES},
        "config": cfg.to_dict(), "notes": list(cfg.notes), "rows": rows,
    }


def assemble(variants: Sequence[Variant], counted: dict[str, int], saved: dict[str, int],
             peaks: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """One row per variant: every figure as a ratio to the dense variant (the first)."""
    med = {v.label: medians(v) for v in variants}
    dense = variants[0].label
    d_med = med[dense]
    rows = []
    for v in variants:
        m = med[v.label]
        row: dict[str, Any] = {
            "framework": v.cfg.framework, "model": v.cfg.model, "method": v.method,
            "keep_rate": v.keep_rate, "batch_size": v.cfg.batch_size,
            "time_ratio": m["step"] / d_med["step"], "cpu_time_ratio": m["cpu"] / d_med["cpu"],
            "flops_ratio": counted[v.label] / counted[dense], "step_gflops": counted[v.label] / 1e9,
            "saved_mb": saved[v.label] / 2**20, "saved_ratio": saved[v.label] / saved[dense],
            "cuda_peak_mb": peaks[v.label][0] / 2**20 if peaks else None,
            "cuda_peak_ratio": peaks[v.label][0] / peaks[dense][0] if peaks else None,
            "cuda_peak_above_start_ratio": peaks[v.label][1] / peaks[dense][1] if peaks else None,
            "simprune_vs_evit": None, "simprune_vs_evit_cpu": None, "median_step_s": m["step"],
            "page_faults": m["faults"],
        }
        row["memory_ratio"] = row["cuda_peak_ratio"] if peaks else row["saved_ratio"]
        row.update({f"{p}_ratio": m[p] / d_med[p] for p in PHASES})
        row.update({f"{p}_share": m[p] / m["step"] for p in PHASES})
        rows.append(row)
    evit = {r["keep_rate"]: r for r in rows if r["method"] == "evit"}
    for r in rows:
        if r["method"] == "simprune" and r["keep_rate"] in evit:
            e = evit[r["keep_rate"]]
            r["simprune_vs_evit"] = r["time_ratio"] / e["time_ratio"]
            r["simprune_vs_evit_cpu"] = r["cpu_time_ratio"] / e["cpu_time_ratio"]
    return rows


# ----------------------------------------------------------------------------- output


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(res: dict[str, Any]) -> str:
    """The figures as a readable table, with the setting and the machine load."""
    load = res["load_avg"]
    lines = [
        f"{res['framework']} step, {res['model']}, batch {res['batch_size']}, {res['global_size']} px, "
        f"reduce at {tuple(res['reduce_at'])}, {res['precision']}, {res['device']}, "
        f"{res['threads']} threads; {res['repeats']} timed rounds after {res['warmup']} warm-up; "
        f"load (1-min) {load['timing_start'][0]:.2f} -> {load['timing_end'][0]:.2f}",
        "dense step time by phase: " + ", ".join(
            f"{p} {100 * s:.1f}%" for p, s in res["dense_phase_share"].items()),
        "memory: " + ("peak allocated CUDA memory" if res["memory_metric"] == "cuda_peak"
                      else "bytes saved for backward"),
        f"{'method':<10}{'keep':>6}{'time':>8}{'cpu':>8}{'FLOPs':>8}"
        f"{'memory':>8}{'SP/EViT':>9}   {'augment':>8}{'forward':>8}{'backward':>9}{'update':>8}"
        f"{'faults':>8}",
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['method']:<10}{r['keep_rate']:>6.2f}{r['time_ratio']:>8.3f}{r['cpu_time_ratio']:>8.3f}"
            f"{r['flops_ratio']:>8.3f}{r['memory_ratio']:>8.3f}"
            f"{_fmt(r['simprune_vs_evit']):>9}   {r['augment_ratio']:>8.3f}{r['forward_ratio']:>8.3f}"
            f"{r['backward_ratio']:>9.3f}{r['update_ratio']:>8.3f}{r['page_faults'] / 1e3:>7.1f}k")
    lines += [f"note: {n}" for n in res.get("notes", [])]
    lines.append("ratios to dense; time = median step wall time, cpu = median process CPU time; "
                 "FLOPs = counted by FlopCounterMode in one real step (forward + backward); "
                 "SP/EViT = SimPrune's time over EViT's at the same keep rate; augment..update = the "
                 "phases' time ratios; faults = minor page faults per step")
    return "\n".join(lines)


def plot_costs(res: dict[str, Any], path: Path) -> None:
    """Each cost ratio against keep rate, one line per method (dense at keep 1)."""
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
        for i, m in enumerate(methods):
            pts = sorted([(1.0, 1.0)] + [(r["keep_rate"], r[key]) for r in rows if r["method"] == m])
            ax.plot(*zip(*pts), marker="o", color=f"C{i}", label=m)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set(title=f"{title} / dense", xlabel="keep rate", ylabel="ratio to dense")
        ax.grid(alpha=0.3)
    axes[0].legend()
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
    with paths[0].open("x", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in res["rows"]:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_COLUMNS})
    with paths[1].open("x") as f:
        json.dump(res, f, indent=2)
    if plot:
        plot_costs(res, paths[2])
    return paths


def run_cost(args: argparse.Namespace) -> int:
    """``simprune bench cost``. Bad names or values, or an existing result file -> exit code 2."""
    try:
        cfg = train_config(args)
        from simprune.bench.mim_cost import is_mim, run_mim_cost

        if is_mim(cfg.framework):  # MAE, PCAE: settings against MAE at mask 0.75, not reducers
            if args.repeats < 1 or args.warmup < 0:
                raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, "
                                 f"{args.warmup}")
            return run_mim_cost(args, cfg, pick_device(args.device), out_dir(args))
        if args.repeats < 1 or args.warmup < 0:
            raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
        if not args.methods or DENSE in [m.partition(":")[0] for m in args.methods]:
            raise ValueError("--methods: give reducer names (dense is always measured)")
        for m in args.methods:
            for k in args.keep_rates:
                check_config(with_method(cfg, m, k))  # a bad name or setting fails here, not later
        device = pick_device(args.device)
        folder = out_dir(args)
        check_free(folder, FILES[: 2 if args.no_plot else 3])
    except (KeyError, ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = measure(cfg, args.methods, args.keep_rates, device, args.warmup, args.repeats, args.progress,
                  args.profile)
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


__all__ = ["add_cost_args", "format_table", "measure", "run_cost", "train_config", "write_results"]
