"""Analytic FLOPs of one self-supervised training step, and ``simprune bench flops``.

A step (METHOD.md, "Cost figures") is the student's forward and backward (backward = 2 × forward)
over the global and local views, the teacher's forward over the global views, the heads (student
forward + backward, teacher forward) and the reducers' own work, with token counts that follow
the drivers (:mod:`simprune.bench.flops_model`). Only matrix products are counted, for the
backbone and the heads alike; the reducers' elementwise work (EViT's fusion, ToMe's merge,
``mean_sim``) is counted too. The loss's elementwise work (DINO's softmax over ``out_dim``) is not.

- DINO: ``G`` global views (default 2) and ``L`` local views through the student, the global ones
  through the teacher; head ``D -> hidden -> hidden -> bottleneck -> out_dim`` (2048, 256, 65536).
- MoCo v3: both views through the student (base encoder) and the momentum encoder; projector
  ``D -> 4096 -> 4096 -> 256`` on both, predictor ``256 -> 4096 -> 256`` on the student; the
  contrastive logits ``q·kᵀ`` over the batch count with the student head. No local views.

Example: ``simprune bench flops --model deit_small_patch16_224 --method simprune --keep-rate 0.8``.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from simprune.bench.flops_count import count_flops, count_flops_by_op
from simprune.bench.flops_model import (
    MODELLED,
    BranchFlops,
    PointPlan,
    Tally,
    Term,
    backbone_flops,
    branch_plan,
    dual_forward_flops,
    forward_flops,
    matmul_flops,
    num_tokens,
    one_branch_reducer_flops,
    pair_plan,
    resolve_model,
    resolve_reducer,
    train_flops,
)

FRAMEWORKS = ("dino", "mocov3")
PARTS = ("student_fwd", "student_bwd", "teacher_fwd", "student_head", "teacher_head", "reducer")


@dataclass(frozen=True)
class StepConfig:
    """One SSL training step to cost. ``method="dense"`` is the unpruned step.

    ``global_size`` defaults to the model's image size; ``local_size`` to 96 px for 224-px models
    and half the global size otherwise (16 px for the 32-px models, as METHOD.md's CIFAR recipe).
    """

    model: str = "deit_small_patch16_224"
    method: str = "simprune"
    keep_rate: float | tuple[float, ...] = 0.8
    framework: str = "dino"
    batch_size: int = 1
    global_size: int | None = None
    num_global: int = 2
    num_local: int = 0
    local_size: int | None = None
    reduce_at: tuple[int, ...] | None = None
    reducer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # DINO head
    head_hidden: int = 2048
    head_bottleneck: int = 256
    out_dim: int = 65536
    # MoCo v3 projector and predictor
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096

    def dense(self) -> StepConfig:
        """The same step without a reducer."""
        return replace(self, method="dense", reducer_kwargs={})


@dataclass
class StepFlops:
    """FLOPs of one step by part (see :data:`PARTS`), with the branches they came from.

    ``matching``: the part of ``reducer`` spent on matching (SimPrune's cross-branch similarity,
    ToMe's bipartite scores).
    """

    config: StepConfig
    parts: dict[str, float]
    matching: float
    branches: dict[str, BranchFlops]

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def head_flops(cfg: StepConfig, dim: int) -> tuple[float, float]:
    """Matmul FLOPs per view row of the (student, teacher) heads' forward."""
    if cfg.framework == "dino":
        h, b = cfg.head_hidden, cfg.head_bottleneck
        head = 2.0 * (dim * h + h * h + h * b + b * cfg.out_dim)
        return head, head
    proj = 2.0 * (dim * cfg.proj_hidden + cfg.proj_hidden**2 + cfg.proj_hidden * cfg.proj_dim)
    pred = 2.0 * 2 * cfg.proj_dim * cfg.pred_hidden
    return proj + pred, proj


def check_step(cfg: StepConfig) -> None:
    if cfg.framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {cfg.framework!r}; valid: {', '.join(FRAMEWORKS)}")
    if cfg.framework == "mocov3" and cfg.num_local:
        raise ValueError(f"MoCo v3 has no local views, got num_local={cfg.num_local}; use 0")
    for name in ("batch_size", "num_global"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.num_local < 0:
        raise ValueError(f"num_local must be >= 0, got {cfg.num_local}")


def step_flops(cfg: StepConfig) -> StepFlops:
    """Analytic FLOPs of one training step, split into :data:`PARTS`."""
    check_step(cfg)
    vit = resolve_model(cfg.model, cfg.reduce_at)
    local_size = cfg.local_size
    if local_size is None:
        local_size = 96 if vit.img_size == 224 else vit.img_size // 2
    branches = dual_forward_flops(
        vit, cfg.method, cfg.keep_rate, batch=cfg.batch_size, num_global=cfg.num_global,
        global_size=cfg.global_size, num_local=cfg.num_local, local_size=local_size,
        reducer_kwargs=cfg.reducer_kwargs)
    trained = [b for b in branches.values() if b.trained]
    teacher = branches["teacher"]
    s_head, t_head = head_flops(cfg, vit.embed_dim)
    student_rows = sum(b.rows for b in trained)
    student_head = 3.0 * s_head * student_rows
    if cfg.framework == "mocov3":  # logits q·kᵀ over the batch, both directions, fwd + bwd
        student_head += 3.0 * 2 * 2 * cfg.batch_size**2 * cfg.proj_dim
    reducer = sum(b.reducer.total() for b in branches.values())
    reducer += sum(b.reducer.backward() for b in trained)
    parts = {
        "student_fwd": sum(b.backbone.total() for b in trained),
        "student_bwd": sum(b.backbone.backward() for b in trained),
        "teacher_fwd": teacher.backbone.total(),
        "student_head": student_head,
        "teacher_head": t_head * teacher.rows,
        "reducer": reducer,
    }
    matching = sum(t.flops for b in branches.values() for t in b.reducer.terms
                   if t.name == "reducer.match")
    return StepFlops(cfg, parts, matching, branches)


def step_report(cfg: StepConfig) -> dict[str, Any]:
    """The pruned and dense steps side by side, as a JSON-ready dict.

    ``flops_ratio`` is the pruned step over the dense step; ``reducer_share`` and
    ``matching_share`` are shares of the pruned step (``matching_share_of_dense``: of the dense
    step, as appendix B states its 0.16%).
    """
    pruned, dense = step_flops(cfg), step_flops(cfg.dense())
    student = pruned.branches["student"]
    fwd_ratio = student.total() / dense.branches["student"].total()
    report: dict[str, Any] = {
        "config": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(cfg).items()},
        "reduce_at": list(resolve_model(cfg.model, cfg.reduce_at).reduce_at),
        "flops_ratio": pruned.total / dense.total,
        "step_gflops": pruned.total / 1e9,
        "dense_step_gflops": dense.total / 1e9,
        "student_forward_ratio": fwd_ratio,
        "reducer_share": pruned.parts["reducer"] / pruned.total,
        "matching_share": pruned.matching / pruned.total,
        "matching_share_of_dense": pruned.matching / dense.total,
        "matching_gflops": pruned.matching / 1e9,
        "parts": {
            name: {"gflops": pruned.parts[name] / 1e9, "dense_gflops": dense.parts[name] / 1e9,
                   "ratio": (pruned.parts[name] / dense.parts[name]) if dense.parts[name] else None}
            for name in PARTS
        },
        "tokens": {name: [asdict(p) for p in b.plan] for name, b in pruned.branches.items()},
    }
    return report


# ----------------------------------------------------------------------------- command line


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``; the value is a Python literal when it parses as one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_flops_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``simprune bench flops``."""
    parser.add_argument("--model", default="deit_small_patch16_224", help="registered ViT name")
    parser.add_argument("--method", default="simprune",
                        help=f"reducer name or 'dense' (modelled: {', '.join(MODELLED)})")
    parser.add_argument("--keep-rate", type=float, nargs="+", default=[0.8],
                        help="keep rate, one for all points or one per point")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="dino")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=None, help="global view size (px)")
    parser.add_argument("--global-views", type=int, default=2)
    parser.add_argument("--local-views", type=int, default=0)
    parser.add_argument("--local-size", type=int, default=None,
                        help="local view size (px); default 96 for 224-px models, else half")
    parser.add_argument("--reduce-at", type=int, nargs="+", default=None,
                        help="1-indexed reduction blocks (default: the model's, 4 7 10)")
    parser.add_argument("--reducer-opt", type=parse_option, action="append", default=[],
                        metavar="KEY=VALUE", help="reducer option, e.g. metric=keys, attn_keep=0.5")
    parser.add_argument("--out-dim", type=int, default=65536, help="DINO head output dim")
    parser.add_argument("--head-hidden", type=int, default=2048)
    parser.add_argument("--head-bottleneck", type=int, default=256)
    parser.add_argument("--proj-hidden", type=int, default=4096, help="MoCo v3 projector hidden")
    parser.add_argument("--proj-dim", type=int, default=256, help="MoCo v3 projector output")
    parser.add_argument("--pred-hidden", type=int, default=4096, help="MoCo v3 predictor hidden")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def config_from_args(args: argparse.Namespace) -> StepConfig:
    rates = args.keep_rate
    return StepConfig(
        model=args.model, method=args.method,
        keep_rate=rates[0] if len(rates) == 1 else tuple(rates),
        framework=args.framework, batch_size=args.batch_size, global_size=args.img_size,
        num_global=args.global_views, num_local=args.local_views, local_size=args.local_size,
        reduce_at=tuple(args.reduce_at) if args.reduce_at else None,
        reducer_kwargs=dict(args.reducer_opt), out_dim=args.out_dim, head_hidden=args.head_hidden,
        head_bottleneck=args.head_bottleneck, proj_hidden=args.proj_hidden,
        proj_dim=args.proj_dim, pred_hidden=args.pred_hidden)


def format_report(report: Mapping[str, Any]) -> str:
    """A readable table of :func:`step_report`."""
    c = report["config"]
    lines = [
        f"{c['framework']} step, {c['model']}, {c['method']} keep {c['keep_rate']} at blocks "
        f"{tuple(report['reduce_at'])}, batch {c['batch_size']}, {c['num_global']} global + "
        f"{c['num_local']} local views",
    ]
    for name, plan in report["tokens"].items():
        pts = ", ".join(f"b{p['block']} {p['n_in']}->{p['n_out']}" for p in plan)
        lines.append(f"  tokens {name:8s} {pts}")
    lines.append(f"{'part':<16}{'GFLOPs':>12}{'dense':>12}{'ratio':>9}")
    for name, part in report["parts"].items():
        ratio = "-" if part["ratio"] is None else f"{part['ratio']:.4f}"
        lines.append(f"{name:<16}{part['gflops']:>12.3f}{part['dense_gflops']:>12.3f}{ratio:>9}")
    lines.append(f"{'total step':<16}{report['step_gflops']:>12.3f}"
                 f"{report['dense_step_gflops']:>12.3f}{report['flops_ratio']:>9.4f}")
    lines.append(f"student forward ratio {report['student_forward_ratio']:.4f}; reducer work "
                 f"{100 * report['reducer_share']:.3f}% of the step, of which matching "
                 f"{100 * report['matching_share']:.3f}% ({report['matching_gflops']:.3f} GFLOPs; "
                 f"{100 * report['matching_share_of_dense']:.3f}% of the dense step)")
    return "\n".join(lines)


def run_flops(args: argparse.Namespace) -> int:
    """``simprune bench flops``: print the table (or one JSON object). Bad names -> exit code 2."""
    try:
        report = step_report(config_from_args(args))
    except (KeyError, ValueError, TypeError) as err:
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
    "FRAMEWORKS",
    "MODELLED",
    "PARTS",
    "BranchFlops",
    "PointPlan",
    "StepConfig",
    "StepFlops",
    "Tally",
    "Term",
    "add_flops_args",
    "backbone_flops",
    "branch_plan",
    "count_flops",
    "count_flops_by_op",
    "dual_forward_flops",
    "forward_flops",
    "head_flops",
    "matmul_flops",
    "num_tokens",
    "one_branch_reducer_flops",
    "pair_plan",
    "resolve_model",
    "resolve_reducer",
    "run_flops",
    "step_flops",
    "step_report",
    "train_flops",
]
