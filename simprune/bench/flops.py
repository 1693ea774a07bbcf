"""FLOPs of one real training step of any registered framework × reducer, and ``simprune bench flops``.

Nothing here knows a framework or a reducer by name. The step is the one the trainer runs
(:meth:`simprune.train.loop.Trainer.train_step`): the framework is built from a
:class:`~simprune.config.TrainConfig` by :func:`~simprune.run.build_framework`, its own
augmentation (:func:`~simprune.run.build_augment`) turns random ``uint8`` images of the
data set's shape into views (global and, where the framework has them, local views), and the
framework's forward and the loss's backward run on CPU under ``torch.utils.flop_counter``
(:mod:`simprune.bench.flops_count`, MATH attention so ``q@kᵀ`` and ``attn@v`` are seen).

So every token count the drivers produce, every head, the teacher's forward, the reducers' matrix
products (SimPrune's matching, ToMe's scores, EViT's CLS attention) and the loss's matrix products
(MoCo v3's ``q·kᵀ``) are counted as they happen; only matrix products and convolutions count
(layer norms, softmax, GELU and elementwise reducer work do not). The pruned step is compared with
the same config with ``reducer.method = "dense"``: ``flops_ratio`` = pruned / dense, and
``train_flops`` is the step's own count (absolute, per step at ``batch_size`` images). A framework
may name another reference step (``cost_reference(cfg)``): MAE and PCAE are compared with MAE at
mask 0.75 with the same encoder and decoder (``--mask-ratio`` sets the mask ratio counted; the
table and the JSON show the decoder size).

The count runs on a small batch (``batch_size``, default 2) and is reported per image as well;
per-batch terms that grow with the batch squared (contrastive logits) are negligible at these
sizes. Token counts per reduction point come from the ``StepOutput.points`` records of the same
run (from the ``tokens/p<i>`` logs where a framework returns no records).

Example: ``simprune bench flops --framework supervised --model vit_micro_patch4_32 --method evit
--keep-rate 0.7 --json``; framework section keys with ``--set``, e.g. ``--set local_views=6``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from simprune.bench.flops_count import count_flops, count_flops_by_module, count_flops_by_op
from simprune.bench.framework_defaults import bench_defaults, describe
from simprune.config import TrainConfig, load_recipe, make_config
from simprune.config.flags import parse_option
from simprune.frameworks import DENSE, FRAMEWORKS, Batch, Framework, Progress
from simprune.run import build_augment, build_framework, check_config, data_info

#: the configuration keys ``simprune bench flops`` sets from its own flags
FLAG_KEYS = ("framework", "model", "dataset", "global_size", "reducer.method", "reducer.keep_rate",
             "reducer.reduce_at", "reducer.options")


# ----------------------------------------------------------------------------- configs


def with_reducer(cfg: TrainConfig, method: str, keep_rate: float | None = None) -> TrainConfig:
    """``cfg`` with another reduction method (and keep rate). The config's own rule for a switched
    component applies: keys of the old method that do not apply to the new one are dropped
    (``dense`` drops the whole reducer section)."""
    over: dict[str, Any] = {"reducer.method": method}
    if method != DENSE:
        over["reducer.keep_rate"] = cfg.reducer.keep_rate if keep_rate is None else keep_rate
    return make_config(cfg.to_dict(), over)


def dense_config(cfg: TrainConfig) -> TrainConfig:
    """The same run without token reduction."""
    return with_reducer(cfg, DENSE)


def reference_config(cfg: TrainConfig) -> TrainConfig | None:
    """The step ``cfg``'s step is compared with: the framework's ``cost_reference`` (by default the
    dense config; MAE, PCAE: MAE at mask 0.75 with the same decoder; ``None`` when ``cfg`` is its
    own reference)."""
    return FRAMEWORKS.get(cfg.framework).cost_reference(cfg)


def cost_label(cfg: TrainConfig) -> str:
    """How tables name a config's step (the framework's ``cost_label``)."""
    return FRAMEWORKS.get(cfg.framework).cost_label(cfg)


# ----------------------------------------------------------------------------- the count


@dataclass
class StepFlops:
    """FLOPs of one training step at ``batch_size`` images.

    Attributes:
        forward, backward: counted FLOPs of the framework forward and of the loss's backward.
        parts: forward FLOPs by the framework's branch parts (``student.backbone``,
            ``teacher.head``, ...; ``other``: outside any module, e.g. matching and the loss).
        points: per reduction point, the tokens each branch had before and after (``tokens_in``,
            ``tokens_out``; a fused token included), from the run's ``StepOutput.points``.
        points_source: ``points`` (the records) or ``logs`` (``tokens/p<i>``: outgoing only).
    """

    config: TrainConfig
    batch_size: int
    progress: float
    forward: int
    backward: int
    parts: dict[str, int] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    points_source: str = "points"

    @property
    def total(self) -> int:
        return self.forward + self.backward

    @property
    def per_image(self) -> float:
        return self.total / self.batch_size


def _record(rec: Any) -> dict[str, int]:
    return {"tokens_in": int(rec.tokens_in), "tokens_out": int(rec.tokens_out)}


def point_tokens(points: Sequence[Any], logs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Per-point token counts of a step: from pair records (``student``/``teacher``/``local``),
    one-branch records (``tokens_in``/``tokens_out``) or, without records, the ``tokens/p<i>``
    logs."""
    out: list[dict[str, Any]] = []
    for i, pt in enumerate(points, start=1):
        row: dict[str, Any] = {"point": i, "block": int(pt.block)}
        if hasattr(pt, "tokens_out"):
            row[getattr(pt, "branch", "student")] = _record(pt)
        else:
            row["keep_rate"] = float(pt.keep_rate)
            for branch in ("student", "teacher", "local"):
                rec = getattr(pt, branch, None)
                if rec is not None:
                    row[branch] = _record(rec)
        out.append(row)
    if out:
        return out, "points"
    i = 1
    while f"tokens/p{i}" in logs:
        out.append({"point": i, "student": {"tokens_out": int(round(float(logs[f"tokens/p{i}"])))}})
        i += 1
    return out, "logs"


def _module_parts(by_module: Mapping[str, int], total: int) -> dict[str, int]:
    """Forward FLOPs grouped by the first two attribute names below the framework
    (``student.backbone``); modules nested in a counted one are not counted twice."""
    names = [n for n in by_module if n != "Global" and "." in n]
    keys = set(names)
    parts: dict[str, int] = {}
    for n in names:
        parents = [n[:i] for i in range(len(n)) if n[i] == "." and n[:i] in keys and n[:i].count(".")]
        if parents:
            continue
        part = ".".join(n.split(".")[1:3])
        parts[part] = parts.get(part, 0) + by_module[n]
    parts["other"] = total - sum(parts.values())
    return dict(sorted(parts.items()))


class StepCounter:
    """A framework built once from ``cfg`` and a fixed synthetic batch; :meth:`count` runs one
    training step at a given progress under the FLOP counter (schedules such as a keep-rate
    warm-up follow the progress)."""

    def __init__(self, cfg: TrainConfig, batch_size: int = 2, seed: int = 0) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch statistics, pairs), got {batch_size}")
        check_config(cfg)
        self.cfg, self.batch_size = cfg, batch_size
        data = data_info(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.framework: Framework = build_framework(cfg, data)
            augment = build_augment(cfg, self.framework, data)
            size = cfg.global_size
            images = torch.randint(0, 256, (batch_size, data.in_chans, size, size), dtype=torch.uint8)
            with torch.no_grad():
                views = augment(images)
        classes = max(1, data.num_classes)
        labels = torch.arange(batch_size) % classes
        self.batch = Batch(views, labels, torch.arange(batch_size))

    def count(self, progress: float = 1.0) -> StepFlops:
        """FLOPs of one step at training progress ``progress`` (``1.0``: the final keep rate)."""
        total = 1000
        prog = Progress(int(round(progress * total)), total, total)
        fw = self.framework
        fw.trainable().train()
        fw.zero_grad(set_to_none=True)
        box: dict[str, Any] = {}

        def forward() -> None:
            box["out"] = fw(self.batch, prog)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            by_module, fwd = count_flops_by_module(forward)
            out = box["out"]
            bwd = count_flops(out.loss.backward)
        fw.zero_grad(set_to_none=True)
        points, source = point_tokens(out.points, out.logs)
        return StepFlops(self.cfg, self.batch_size, progress, fwd, bwd, _module_parts(by_module, fwd),
                         points, source)


def step_flops(cfg: TrainConfig, progress: float = 1.0, batch_size: int = 2) -> StepFlops:
    """Counted FLOPs of one training step of ``cfg`` (see :class:`StepCounter`)."""
    return StepCounter(cfg, batch_size).count(progress)


def step_report(cfg: TrainConfig, progress: float = 1.0, batch_size: int = 2) -> dict[str, Any]:
    """The step of ``cfg`` and the same step dense, side by side, as a JSON-ready dict.

    ``flops_ratio``: pruned over dense (exactly 1 for a dense config), or over the framework's
    reference step (:func:`reference_config`; ``reference`` names it); ``train_flops``: the step's
    own FLOPs; ``tokens``: per reduction point, each branch's tokens in and out in the pruned step.
    """
    pruned = step_flops(cfg, progress, batch_size)
    ref_cfg = reference_config(cfg)
    same = ref_cfg is None or ref_cfg.to_dict() == cfg.to_dict()
    dense = pruned if same else step_flops(ref_cfg, progress, batch_size)
    parts = {}
    for name in sorted(set(pruned.parts) | set(dense.parts)):
        p, d = pruned.parts.get(name, 0), dense.parts.get(name, 0)
        parts[name] = {"gflops": p / 1e9, "dense_gflops": d / 1e9, "ratio": p / d if d else None}
    rc = cfg.reducer
    return {
        "framework": cfg.framework, "model": cfg.model, "dataset": cfg.dataset,
        "global_size": cfg.global_size, "method": rc.method,
        "keep_rate": 1.0 if rc.method == DENSE else rc.keep_rate, "reduce_at": list(rc.reduce_at),
        "batch_size": batch_size, "progress": progress,
        "flops_ratio": pruned.total / dense.total, "train_flops": pruned.total,
        "train_flops_per_image": pruned.per_image, "reference_train_flops": dense.total,
        "label": cost_label(cfg), "reference": cost_label(ref_cfg if ref_cfg is not None else cfg),
        "forward_ratio": pruned.forward / dense.forward,
        "backward_ratio": pruned.backward / dense.backward if dense.backward else None,
        "step_gflops": pruned.total / 1e9, "dense_step_gflops": dense.total / 1e9,
        "gflops_per_image": pruned.per_image / 1e9, "dense_gflops_per_image": dense.per_image / 1e9,
        "parts": parts, "tokens": pruned.points, "tokens_source": pruned.points_source,
        "dense_tokens": dense.points, "config": cfg.to_dict(),
        **FRAMEWORKS.get(cfg.framework).cost_fields(cfg),
    }


# ----------------------------------------------------------------------------- command line


def add_flops_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``simprune bench flops``."""
    parser.add_argument("--framework", default=None, help="a registered framework (default dino)")
    parser.add_argument("--model", default=None, help="registered ViT (default deit_small_patch16_224)")
    parser.add_argument("--method", default=None, help="reducer name or 'dense' (default simprune)")
    parser.add_argument("--keep-rate", type=float, default=None, help="keep rate per point (0.8)")
    parser.add_argument("--dataset", default=None,
                        help="data set whose shape, classes and statistics to use (default imagenet "
                             "for 224-px models, else cifar10; no data is read)")
    parser.add_argument("--img-size", "--global-size", dest="img_size", type=int, default=None,
                        help="global view size (px; default: the model's)")
    parser.add_argument("--reduce-at", type=int, nargs="+", default=None,
                        help="1-indexed reduction blocks (default 4 7 10)")
    parser.add_argument("--reducer-opt", type=parse_option, action="append", default=[],
                        metavar="KEY=VALUE", help="reducer option, e.g. metric=keys, attn_keep=0.5")
    parser.add_argument("--config", default=None, help="TOML training recipe for the other settings")
    parser.add_argument("--set", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="any training-config key, e.g. out_dim=1024, local_views=6 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=2, help="images in the counted step")
    parser.add_argument("--progress", type=float, default=1.0,
                        help="training progress of the step (keep-rate warm-up, window position)")
    parser.add_argument("--mask-ratio", type=float, default=None,
                        help="MAE/PCAE: share of patches masked (the framework's mask_ratio)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config to count: recipe < ``--set`` < flags < defaults."""
    from simprune.models.configs import model_config

    base = load_recipe(args.config) if args.config else {}
    over: dict[str, Any] = dict(args.set)
    flags = {"framework": args.framework, "model": args.model, "dataset": args.dataset,
             "global_size": args.img_size, "reducer.method": args.method,
             "reducer.keep_rate": args.keep_rate,
             "reducer.reduce_at": list(args.reduce_at) if args.reduce_at else None,
             "reducer.options": dict(args.reducer_opt) or None,
             "mask_ratio": getattr(args, "mask_ratio", None)}
    over.update({k: v for k, v in flags.items() if v is not None})
    given = {**base, **over}
    for key, default in (("framework", "dino"), ("model", "deit_small_patch16_224")):
        if key not in given:
            over[key] = default
    reducer = base.get("reducer", {}) if isinstance(base.get("reducer"), dict) else {}
    fw_cls = FRAMEWORKS.get(str(given.get("framework", over.get("framework"))))
    if "mask_ratio" in over and not fw_cls.cost_masks:
        raise ValueError(f"--mask-ratio: framework {fw_cls.__name__} masks nothing (MAE and PCAE do)")
    takes = fw_cls.reducers != ()
    if takes and not any(k in given or k in reducer for k in ("method", "reducer.method")) \
            and "method" not in reducer:
        over["reducer.method"] = "simprune"
    img = model_config(str(over.get("model", base.get("model")))).img_size
    if "global_size" not in given:
        over["global_size"] = img
    if "dataset" not in given:
        over["dataset"] = "imagenet" if img >= 224 else "cifar10"
    defaults = bench_defaults(base, over)  # e.g. distill: a random frozen teacher, no file read
    cfg = make_config(base, {**over, **defaults})
    cfg.notes += describe(defaults)
    return cfg


def format_report(report: Mapping[str, Any]) -> str:
    """A readable table of :func:`step_report`."""
    r = report
    if "decoder" in r:
        head = (f"{r['label']} ({r['model']}, {r['global_size']} px), counted on batch "
                f"{r['batch_size']}; compared with {r['reference']}")
    else:
        head = (f"{r['framework']} step, {r['model']} ({r['global_size']} px), {r['method']} keep "
                f"{r['keep_rate']} at blocks {tuple(r['reduce_at'])}, counted on batch {r['batch_size']}")
    lines = [head]
    for p in r["tokens"]:
        branches = ", ".join(f"{b} {v.get('tokens_in', '?')}->{v['tokens_out']}"
                             for b, v in p.items() if isinstance(v, dict))
        lines.append(f"  tokens p{p['point']}" + (f" (block {p['block']})" if "block" in p else "")
                     + f": {branches}")
    ref = "dense" if "decoder" not in r else "ref"
    lines.append(f"{'forward part':<22}{'GFLOPs':>12}{ref:>12}{'ratio':>9}")
    for name, part in r["parts"].items():
        ratio = "-" if part["ratio"] is None else f"{part['ratio']:.4f}"
        lines.append(f"{name:<22}{part['gflops']:>12.4f}{part['dense_gflops']:>12.4f}{ratio:>9}")
    lines.append(f"{'step (fwd + bwd)':<22}{r['step_gflops']:>12.4f}{r['dense_step_gflops']:>12.4f}"
                 f"{r['flops_ratio']:>9.4f}")
    lines.append(f"per image {r['gflops_per_image']:.4f} GFLOPs ({ref} {r['dense_gflops_per_image']:.4f}); "
                 f"flops_ratio {r['flops_ratio']:.4f}; train_flops {r['train_flops']:.4g} per step")
    return "\n".join(lines)


def run_flops(args: argparse.Namespace) -> int:
    """``simprune bench flops``: print the table (or one JSON object). Bad names -> exit code 2."""
    try:
        report = step_report(config_from_args(args), args.progress, args.batch_size)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simprune bench flops", description=__doc__.split("\n")[0])
    add_flops_args(parser)
    return run_flops(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "StepCounter",
    "StepFlops",
    "add_flops_args",
    "config_from_args",
    "count_flops",
    "count_flops_by_op",
    "dense_config",
    "format_report",
    "parse_option",
    "point_tokens",
    "reference_config",
    "run_flops",
    "step_flops",
    "step_report",
    "with_reducer",
]
