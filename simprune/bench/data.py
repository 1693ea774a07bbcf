"""``simprune bench data``: can the loader keep the training step busy, and how many cores it needs.

On a recipe's data (an image folder or tar shards, read as training reads a split that is not
cached: :mod:`simprune.data.loader`, views cut from whole images) it measures

- **decode cost**: the CPU seconds one process spends per image to read, decode and cut every
  view (:class:`~simprune.data.loader.StepBatches`, in this process, one batch);
- **loader images/s** with ``--num-workers N`` worker processes: ``K`` batches of the recipe's
  batch size through :class:`~simprune.data.loader.TrainLoader`, timed from the loader's start
  (worker start-up included) to the last batch;
- **step images/s**: the recipe's dense training step (:mod:`simprune.bench.cost_step`: the
  trainer's augmentation, forward, backward and AdamW) on real batches from the loader, the
  median of ``--repeats`` timed steps after ``--warmup``; at ``--step-batch-size`` images (default:
  the recipe's batch on CUDA, 8 on CPU, where a step of 128 DINO images takes minutes);
- **cores per GPU**: decode cost x the GPU step's images/s. The GPU step is the measured one when
  the benchmark runs on CUDA; else ``--step-time`` (seconds per step at the recipe's batch, e.g.
  from ``scripts/gpu_check.sh``); else an estimate: the step's FLOPs counted by
  :func:`simprune.bench.flops.step_flops` over ``--gpu-tflops`` (default 300: an H100 SXM's
  989 dense bf16 TFLOP/s at an assumed 30% utilisation). The source is printed with the figure.

Example (this machine: an ImageNet-like folder from ``scripts/make_fake_imagenet.py``)::

    simprune bench data --config configs/imagenet_dino_deit_small_dense.toml \\
        --data /tmp/fake_imagenet --num-workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from simprune.bench.flops import parse_option
from simprune.config import TrainConfig, load_recipe, make_config
from simprune.data import load_dataset, resolve_data_root
from simprune.data.crops import Crops, crop_spec
from simprune.data.datasets import dataset_key
from simprune.data.folder import default_load_size
from simprune.data.loader import StepBatches, TrainLoader, cores_available, is_streamed, resolve_workers
from simprune.data.sampler import ResumableSampler
from simprune.data.shards import shard_sampler

#: assumed sustained training throughput of an H100-class GPU (bf16), TFLOP/s
GPU_TFLOPS = 300.0
GPU_SOURCE = ("estimate: the step's counted FLOPs at {tflops:g} TFLOP/s (an H100 SXM's 989 dense bf16 "
              "TFLOP/s at an assumed 30% utilisation)")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``simprune bench data``."""
    parser.add_argument("--config", required=True, help="TOML training recipe (an image folder data set)")
    parser.add_argument("--data", default=None, help="data folder (default $SIMPRUNE_DATA)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="loader worker processes (default: the recipe's num_workers; -1: one per "
                             "free core)")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches the loader is timed over (default 4 per worker, at least 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="loader batch (default: the recipe's)")
    parser.add_argument("--step-batch-size", type=int, default=None,
                        help="images per timed training step (default: the batch on CUDA, 8 on CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--step-time", type=float, default=None,
                        help="seconds of one GPU training step at the recipe's batch, for the cores-per-"
                             "GPU figure when no GPU is here (default: a FLOPs estimate, see --gpu-tflops)")
    parser.add_argument("--gpu-tflops", type=float, default=GPU_TFLOPS,
                        help="sustained TFLOP/s assumed for the GPU estimate (default 300)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="of the timed step (default: the recipe's; fp16 recipes run bf16)")
    parser.add_argument("--no-step", action="store_true", help="measure the loader only")
    parser.add_argument("--set", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="any training-config key (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def bench_config(args: argparse.Namespace) -> TrainConfig:
    over: dict[str, Any] = dict(args.set)
    if args.batch_size is not None:
        over["batch_size"] = args.batch_size
    if args.data is not None:
        over["data"] = args.data
    if args.num_workers is not None:
        over["num_workers"] = args.num_workers
    cfg = make_config(load_recipe(args.config), over)
    if cfg.precision == "fp16":
        cfg.precision = "bf16"
    if args.precision is not None:
        cfg.precision = args.precision
    if dataset_key(cfg.dataset) != "imagefolder":
        raise ValueError(f"bench data measures the loader of image folders and tar shards; the recipe's "
                         f"data set {cfg.dataset!r} is cached in memory (no decoding per step)")
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _say(msg: str) -> None:
    print(f"[bench data] {msg}", file=sys.stderr, flush=True)


def measure(cfg: TrainConfig, device: torch.device, batches: int | None = None, step_batch: int | None = None,
            warmup: int = 1, repeats: int = 3, step_time: float | None = None,
            gpu_tflops: float = GPU_TFLOPS, with_step: bool = True) -> dict[str, Any]:
    """The figures of the module docstring, as a JSON-ready dict."""
    from simprune.bench.cost_step import build_variants, medians, time_rounds
    from simprune.bench.flops import step_flops
    from simprune.run import build_augment, build_framework, data_info

    root = resolve_data_root(cfg.data or None)
    load_size = cfg.load_size or default_load_size(cfg.global_size)
    train = load_dataset("imagefolder", root, "train", load_size=load_size, cache_mb=0)
    if not is_streamed(train):  # pragma: no cover - cache_mb=0 always streams
        raise ValueError(f"{root} is cached; bench data measures the streamed path")
    with torch.random.fork_rng(devices=[]):
        data = data_info(cfg, train)
        augment = build_augment(cfg, build_framework(cfg, data), data)
    spec = crop_spec(augment)
    indices = torch.arange(len(train))
    sampler = (shard_sampler(train, indices, cfg.batch_size, cfg.seed)
               or ResumableSampler(indices, cfg.batch_size, cfg.seed))
    steps = sampler.steps_per_epoch
    source = StepBatches(train, sampler, steps, cfg.seed, spec=spec)
    views = f"{spec.n_views} views per image ({', '.join(f'{g.n_views} x {g.size} px' for g in spec.groups)})"
    _say(f"{len(train)} training images in {root}; {views}; decoding one batch of {cfg.batch_size} here")

    c0, t0 = time.process_time(), time.perf_counter()
    first, _, _ = source.make(0)
    decode_cpu = (time.process_time() - c0) / cfg.batch_size
    decode_wall = (time.perf_counter() - t0) / cfg.batch_size

    workers = resolve_workers(cfg.num_workers)
    k = batches or max(4, 4 * max(1, workers))
    _say(f"loader: {k} batches of {cfg.batch_size} with {workers} worker(s)")
    loader = TrainLoader(source, workers, stop=k + 1, pin_memory=device.type == "cuda")
    t0 = time.perf_counter()
    for s in range(1, k + 1):
        loader.get(s)
    loader_s = time.perf_counter() - t0
    loader.close()
    loader_ips = k * cfg.batch_size / loader_s

    res: dict[str, Any] = {
        "config": cfg.to_dict(), "data": str(root), "n_images": len(train), "device": str(device),
        "cores": cores_available(), "views": [list(g) for g in spec.groups], "batch_size": cfg.batch_size,
        "decode_cpu_ms_per_image": 1e3 * decode_cpu, "decode_wall_ms_per_image": 1e3 * decode_wall,
        "num_workers": workers, "loader_batches": k, "loader_images_per_s": loader_ips,
        "step_images_per_s": None, "step_batch_size": None, "step_median_s": None,
    }
    if with_step:
        sb = step_batch or (cfg.batch_size if device.type == "cuda" else min(8, cfg.batch_size))
        step_cfg = make_config(cfg.to_dict(), {"batch_size": sb})
        _say(f"dense {cfg.framework} step of {cfg.model} at batch {sb} on {device}: {warmup} warm-up + "
             f"{repeats} timed")
        [v] = build_variants(step_cfg, [], [], device)
        crops = _take(first, sb).to(device)

        def real_views(round_: int) -> Any:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(round_)
                return v.augment(crops)

        v.views = real_views  # type: ignore[method-assign]  # the loader's crops, not synthetic
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        time_rounds([v], warmup, repeats)
        med = medians(v)["step"]
        res.update(step_batch_size=sb, step_median_s=med, step_images_per_s=sb / med,
                   step_precision=step_cfg.precision)
    res["loader_over_step"] = (loader_ips / res["step_images_per_s"]) if res["step_images_per_s"] else None
    # cores per GPU: decode cost x the GPU step's images/s
    if device.type == "cuda" and res["step_images_per_s"]:
        gpu_ips, source_txt = res["step_images_per_s"], f"measured on {torch.cuda.get_device_name(device)}"
        gpu_step = cfg.batch_size / gpu_ips
    elif step_time:
        gpu_step, source_txt = step_time, "--step-time (given)"
        gpu_ips = cfg.batch_size / step_time
    else:
        _say("counting the step's FLOPs for the GPU estimate")
        per_image = step_flops(cfg, progress=1.0, batch_size=2).per_image
        gpu_ips = gpu_tflops * 1e12 / per_image
        gpu_step = cfg.batch_size / gpu_ips
        source_txt = GPU_SOURCE.format(tflops=gpu_tflops)
        res["step_gflops_per_image"] = per_image / 1e9
    res.update(gpu_step_s=gpu_step, gpu_images_per_s=gpu_ips, gpu_step_source=source_txt,
               cores_per_gpu=decode_cpu * gpu_ips)
    return res


def _take(crops: Any, n: int) -> Any:
    if isinstance(crops, Crops):
        return Crops([g[:n] for g in crops.groups], crops.boxes[:n])
    return crops[:n]


def format_report(res: dict[str, Any]) -> str:
    cfg = res["config"]
    views = " + ".join(f"{n} x {s} px" for s, _, n in res["views"])
    lines = [
        f"bench data: {cfg['framework']} {cfg['model']}, views {views} cut from whole images, "
        f"{res['n_images']} images in {res['data']}; {res['device']}, {res['cores']} cores",
        f"decode + crop: {res['decode_cpu_ms_per_image']:.1f} ms CPU per image (one process; "
        f"{res['decode_wall_ms_per_image']:.1f} ms wall)",
        f"loader: {res['loader_images_per_s']:.1f} images/s with {res['num_workers']} worker(s) "
        f"({res['loader_batches']} batches of {res['batch_size']})",
    ]
    if res["step_images_per_s"]:
        lines.append(f"training step (dense, batch {res['step_batch_size']}, {res['step_precision']}, "
                     f"{res['device']}): {res['step_images_per_s']:.2f} images/s (median "
                     f"{res['step_median_s']:.3f} s)")
        ratio = res["loader_over_step"]
        verdict = ("the loader keeps up: training is compute-bound" if ratio >= 1 else
                   "the loader is the bottleneck: add workers (--num-workers)")
        lines.append(f"loader / step: {ratio:.2f}x; {verdict}")
    lines.append(f"GPU step: {res['gpu_step_s']:.3f} s at batch {res['batch_size']} = "
                 f"{res['gpu_images_per_s']:.0f} images/s ({res['gpu_step_source']})")
    lines.append(f"cores per GPU for decoding: {res['cores_per_gpu']:.1f} "
                 f"(= {res['decode_cpu_ms_per_image']:.1f} ms x {res['gpu_images_per_s']:.0f} images/s)")
    return "\n".join(lines)


def run_data(args: argparse.Namespace) -> int:
    """``simprune bench data``."""
    cfg = bench_config(args)
    device = pick_device(args.device)
    for name in ("repeats", "batches", "step_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.step_time is not None and not args.step_time > 0:
        raise ValueError(f"--step-time must be > 0 seconds, got {args.step_time}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = measure(cfg, device, args.batches, args.step_batch_size, args.warmup, args.repeats,
                  args.step_time, args.gpu_tflops, with_step=not args.no_step)
    print(json.dumps(res) if args.json else format_report(res))
    return 0


__all__ = ["add_data_args", "format_report", "measure", "run_data"]
