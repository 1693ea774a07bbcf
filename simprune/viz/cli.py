"""``simprune viz``: figures of the patches kept at each reduction point.

- One checkpoint (a run folder or a ``checkpoint*.pt`` file): one figure, a row per method in
  ``--methods`` (default: the run's method), all on the run's weights (see
  :mod:`simprune.viz.runs` for how another method's framework loads them).
- Several checkpoints (several ``--ckpt``, or a folder holding several ``checkpoint*.pt``): per
  method, one figure with a row per checkpoint, sorted by step, each at its own training
  progress ``step / total_steps`` (SimPrune's window moves with it).
- No checkpoint: fresh random weights from ``--config`` / ``--set`` (quick looks).
- ``simprune viz diversity``: PCAE's Figure 3a instead, the token diversity layer by layer with
  mean-similarity, random and no dropping, for fresh weights and every ``--ckpt``
  (:mod:`simprune.viz.diversity`).
- ``simprune viz logs --runs RUN ...``: what runs logged, against training progress: SimPrune's
  fill-up share, many-to-one, duplicate partners and window similarity per point by default, any
  logged key (``loss``, ``knn_top1``, ...) with ``--metrics`` (:mod:`simprune.viz.logs`).

Every figure shows the same two global views (fixed by ``--seed``) of one image: ``--image-index``
of the run's data set split, or ``--image FILE``. PNGs go to ``--out`` (default ``<run>/viz/``,
``./viz`` for fresh weights); an existing file is never overwritten: a ``-1``, ``-2`` ... suffix is
added and said.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from simprune.config import TrainConfig
    from simprune.viz.trace import PruningTrace

#: the same as :data:`simprune.viz.trace.BRANCHES` (kept here so building the parser stays light)
BRANCHES = ("student", "teacher", "pair")


def add_viz_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``simprune viz``."""
    p.add_argument("figure", nargs="?", choices=("masks", "diversity", "logs"), default="masks",
                   help="masks (default): the kept patches; diversity: PCAE Fig. 3a, token "
                        "diversity per layer (mean-sim / random / no dropping); logs: logged "
                        "series of --runs against training progress")
    p.add_argument("--ckpt", action="extend", nargs="+", default=[], metavar="RUN_OR_CKPT",
                   help="run folder or checkpoint file; several (or a folder with several "
                        "checkpoint*.pt) give the across-training figure. None: fresh weights")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="reducers to show (default: the run's method), e.g. simprune evit tome")
    p.add_argument("--image-index", type=int, default=0, help="image of the data set split (default 0)")
    p.add_argument("--image", default=None, metavar="FILE", help="an image file instead of the data set")
    p.add_argument("--split", default="test", help="data set split (default test)")
    p.add_argument("--data", default=None, help="data folder (default: the run's, or $SIMPRUNE_DATA)")
    p.add_argument("--seed", type=int, default=0, help="fixes the two views (crop, flip) (default 0)")
    p.add_argument("--progress", type=float, default=None,
                   help="training progress t in [0, 1] (default: the checkpoint's step/total_steps; "
                        "0 for fresh weights)")
    p.add_argument("--branch", choices=BRANCHES, default="student",
                   help="whose tokens: student, teacher, or pair (view 1 student, view 2 teacher)")
    p.add_argument("--no-original", action="store_true",
                   help="leave out the original-image panels (crop box, mask mapped back)")
    p.add_argument("--config", default=None, help="TOML recipe for fresh weights (no --ckpt)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="config keys for fresh weights, e.g. model=deit_tiny_patch16_224 global_size=224")
    p.add_argument("--out", default=None,
                   help="output folder (default <run>/viz, or ./viz); logs: a folder or a .png file")
    p.add_argument("--n-images", type=int, default=512, help="diversity: images of --split (512)")
    p.add_argument("--drop-at", type=int, nargs="+", default=[1, 5, 9],
                   help="diversity: blocks after whose attention tokens are dropped (1 5 9)")
    p.add_argument("--keep", type=float, default=0.5, help="diversity: share kept at each (0.5)")
    p.add_argument("--score", choices=("paper", "normalized"), default="paper",
                   help="diversity: the mean-similarity score (paper's, or the reference code's)")
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN",
                   help="logs: run folders (or their metrics.jsonl), e.g. runs/study/x/*/seed0")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="logs: logged keys or per-point families (default fill m2o dup sim_kept; "
                        "also sim, window, loss, knn_top1, ...)")
    p.add_argument("--x", choices=("progress", "epoch", "step"), default="progress",
                   help="logs: the x axis (default progress = step / total steps)")
    p.add_argument("--mean-seeds", action="store_true",
                   help="logs: average runs in <method>/seed<N> folders per method")
    p.add_argument("--table", type=int, default=None, metavar="N",
                   help="logs: also print each series averaged over N equal parts of training "
                        "(Markdown, written beside the PNG as .md)")


def _load_image(args: argparse.Namespace, cfg: TrainConfig) -> tuple[Tensor, str]:
    """``(uint8 [C, H, W], a label)`` from ``--image`` or the data set."""
    if args.image:
        from simprune.data.folder import load_image

        size = max(256, cfg.global_size)
        return load_image(args.image, size), Path(args.image).name
    from simprune.data import load_dataset, resolve_data_root

    root = resolve_data_root(args.data or cfg.data or None)
    ds = load_dataset(cfg.dataset, root, args.split)
    if not 0 <= args.image_index < len(ds):
        raise ValueError(f"--image-index {args.image_index} is out of range; {cfg.dataset} "
                         f"{args.split} has images 0..{len(ds) - 1}")
    image, label = ds[args.image_index]
    classes = getattr(ds, "classes", None)
    name = classes[label] if classes and 0 <= label < len(classes) else str(label)
    return image, f"{cfg.dataset} {args.split} #{args.image_index} ({name})"


def _stem(args: argparse.Namespace) -> str:
    img = f"img-{Path(args.image).stem}" if args.image else f"{args.split}{args.image_index}"
    return f"{img}_seed{args.seed}_{args.branch}"


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _write(fig_fn, traces: list[PruningTrace], path: Path, **kwargs) -> Path:
    written = fig_fn(traces, path, **kwargs)
    note = "" if written == path else f" ({path.name} exists and was kept)"
    print(f"wrote {written}{note}")
    for t in traces:
        for n in t.notes:
            print(f"note: {t.label or t.method}: {n}")
    return written


def run_viz(args: argparse.Namespace) -> int:
    """Make the figures; prints each path written. Returns 0."""
    if getattr(args, "figure", "masks") == "logs":
        from simprune.viz.logs import run_logs

        run_logs(args.runs, args.metrics, args.x, args.out, args.mean_seeds, args.table)
        return 0
    if getattr(args, "runs", None):
        raise ValueError("--runs belongs to 'simprune viz logs'; the mask figures take --ckpt")
    if getattr(args, "figure", "masks") == "diversity":
        from simprune.viz.diversity import run_diversity

        if args.n_images < 1 or not 0.0 < args.keep <= 1.0:
            raise ValueError(f"--n-images must be >= 1 and --keep in (0, 1], got {args.n_images}, "
                             f"{args.keep}")
        return run_diversity(args)
    from simprune.viz.figure import plot_methods, plot_training
    from simprune.viz.runs import base_method, framework_from_run, fresh_framework, load_runs, unique_steps
    from simprune.viz.trace import display_augment, trace_pruning

    if args.progress is not None and not 0.0 <= args.progress <= 1.0:
        raise ValueError(f"--progress must be in [0, 1], got {args.progress}")
    kw = dict(branch=args.branch, show_original=not args.no_original)
    if not args.ckpt:
        from simprune.config import load_recipe
        from simprune.config.flags import parse_sets

        recipe = load_recipe(args.config) if args.config else {}
        overrides = parse_sets(args.overrides)
        methods = args.methods or [base_method(overrides, base_method(recipe, "simprune"))]
        progress = args.progress if args.progress is not None else 0.0
        traces, image, label = [], None, ""
        for m in methods:
            cfg, fw = fresh_framework(recipe, m, args.seed, overrides)
            if image is None:
                image, label = _load_image(args, cfg)
            traces.append(trace_pruning(fw, display_augment(cfg, fw), image, progress, args.seed, m))
        out = Path(args.out or "viz")
        title = f"{label}: fresh random weights ({cfg.model}, {cfg.framework})"
        _write(plot_methods, traces, out / f"viz_fresh_{'-'.join(methods)}_{_stem(args)}.png",
               title=title, **kw)
        return 0
    if args.config or args.overrides:
        raise ValueError("--config/--set build fresh weights; with --ckpt the run's config is used")
    runs, twins = unique_steps(load_runs(args.ckpt))
    for skipped, kept in twins:
        print(f"note: skipping {skipped.path}: same step {skipped.step} as {kept.path}")
    first = runs[0]
    run_method = base_method(first.config, "simprune")
    methods = args.methods or [run_method]
    out = Path(args.out) if args.out else first.run_dir / "viz"
    if len(runs) == 1:
        progress = first.progress if args.progress is None else args.progress
        traces, image, label = [], None, ""
        for m in methods:
            cfg, fw, notes = framework_from_run(first, m)
            if image is None:
                image, label = _load_image(args, cfg)
            t = trace_pruning(fw, display_augment(cfg, fw), image, progress, args.seed, m)
            t.step, t.total_steps, t.notes = first.step, first.total_steps, notes
            traces.append(t)
        title = (f"{label}: weights of {_short(first.path)} ({run_method}, step "
                 f"{first.step}/{first.total_steps})")
        _write(plot_methods, traces, out / f"viz_{'-'.join(methods)}_step{first.step}_{_stem(args)}.png",
               title=title, **kw)
        return 0
    keys = ("model", "framework", "global_size")
    differ = [k for k in keys if len({str(r.config.get(k)) for r in runs}) > 1]
    if differ:
        raise ValueError(f"the checkpoints differ in {differ}; the across-training figure needs one run")
    for m in methods:
        traces, image, label = [], None, ""
        for run in runs:
            cfg, fw, notes = framework_from_run(run, m)
            if image is None:
                image, label = _load_image(args, cfg)
            progress = run.progress if args.progress is None else args.progress
            t = trace_pruning(fw, display_augment(cfg, fw), image, progress, args.seed, m)
            t.step, t.total_steps, t.notes = run.step, run.total_steps, notes
            traces.append(t)
        title = f"{label}: {m} across training ({len(runs)} checkpoints of {first.run_dir.name}/)"
        _write(plot_training, traces, out / f"viz_training_{m}_{_stem(args)}.png", title=title, **kw)
    return 0
