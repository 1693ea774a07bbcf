"""``simprune viz diversity``: PCAE's Figure 3a, the diversity of the token sequence layer by layer.

Diversity of a sequence of ``N`` tokens is the nuclear norm of its L2-normalised token matrix
``Â ∈ R^{N×D}`` divided by ``N`` (the paper's appendix A: ``‖Â‖_* / N``, in ``(0, 1]``; 1 when the
tokens are orthogonal, ``1/sqrt(N)`` when they all point the same way). It is measured on real
images at the output of the patch embedding (layer 0) and of every block, averaged over the images,
for three settings of PCAE's teacher forward (:func:`simprune.drive.progressive.progressive_layers`:
all patch tokens, no CLS, dropping after the attention of blocks ``drop_at`` to ``keep`` each):

- ``mean_sim``: drop the tokens most similar to the mean (PCAE);
- ``random``: drop random tokens;
- ``none``: no dropping.

The paper (randomly initialised ViT-B, ImageNet val) finds mean-similarity dropping raises the
diversity above both others, which stay close together. The figure has one panel per backbone:
randomly initialised (the first run's architecture, or ``--config``/``--set``) and each ``--ckpt``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.drive.progressive import DROPS, progressive_layers

LABELS = {"mean_sim": "drop most mean-like (PCAE)", "random": "drop random", "none": "no dropping"}


def nuclear_diversity(x: Tensor) -> Tensor:
    """``x: [B, N, D]`` -> ``[B]``: ``‖normalize(x)‖_* / N`` per sample (float64 SVD)."""
    xn = F.normalize(x.double(), dim=-1)
    return torch.linalg.svdvals(xn).sum(dim=-1) / x.shape[1]


def diversity_curves(backbone: Any, images: Tensor, drop_at: Sequence[int] = (1, 5, 9),
                     keep: float = 0.5, score: str = "paper", seed: int = 0,
                     batch: int = 128) -> dict[str, dict[str, list[float]]]:
    """Per setting: the mean diversity per layer and the token count per layer."""
    out: dict[str, dict[str, list[float]]] = {}
    for drop in DROPS:
        sums: list[float] = []
        counts: list[float] = []
        n = 0
        for start in range(0, images.shape[0], batch):
            chunk = images[start:start + batch]
            layers = progressive_layers(backbone, chunk, drop, drop_at, keep, score, seed + start)
            vals = [float(nuclear_diversity(x).sum()) for x in layers]
            sums = vals if not sums else [a + b for a, b in zip(sums, vals)]
            counts = [float(x.shape[1]) for x in layers]
            n += chunk.shape[0]
        out[drop] = {"diversity": [s / n for s in sums], "tokens": counts}
    return out


def plot_diversity(panels: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One panel per backbone, three lines each; never overwrites (``-1``, ``-2`` … suffixes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False,
                             constrained_layout=True)
    for ax, panel in zip(axes[0], panels):
        for i, drop in enumerate(DROPS):
            ys = panel["curves"][drop]["diversity"]
            ax.plot(range(len(ys)), ys, marker="o", ms=3, color=f"C{i}", label=LABELS[drop])
        for b in panel["drop_at"]:
            ax.axvline(b, color="gray", lw=0.6, ls=":")
        ax.set(title=panel["name"], xlabel="layer (0: patch embedding)", ylabel="‖Â‖* / N")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    target, i = path, 0
    while target.exists():
        i += 1
        target = path.with_name(f"{path.stem}-{i}{path.suffix}")
    with target.open("xb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return target


def ordering(curves: dict[str, dict[str, list[float]]], after: int) -> list[tuple[str, float]]:
    """Settings by their mean diversity over the layers from ``after`` on, highest first."""
    means = {d: sum(c["diversity"][after:]) / len(c["diversity"][after:]) for d, c in curves.items()}
    return sorted(means.items(), key=lambda kv: -kv[1])


def _images(cfg: Any, split: str, n: int, seed: int, data: str | None) -> Tensor:
    """``n`` random images of the split, normalised as evaluation does (no augmentation)."""
    from simprune.data import load_dataset, resolve_data_root
    from simprune.data.augment import EvalTransform
    from simprune.data.stats import dataset_stats
    from simprune.subset import random_subset

    ds = load_dataset(cfg.dataset, resolve_data_root(data or cfg.data or None), split)
    idx = random_subset(len(ds), n, seed)
    get_batch = getattr(ds, "get_batch", None)
    if get_batch is not None:
        images, _ = get_batch(idx)
    else:
        images = torch.stack([ds[i][0] for i in idx.tolist()])
    return EvalTransform(cfg.global_size, *dataset_stats(cfg.dataset))(images)


def run_diversity(args: Any) -> int:
    """Compute the curves for a fresh backbone and every ``--ckpt``, write PNG and JSON."""
    from simprune.config import load_recipe
    from simprune.viz.runs import framework_from_run, fresh_framework, load_runs

    runs = load_runs(args.ckpt) if args.ckpt else []
    if runs:
        base = dict(runs[0].config)
        fresh_cfg, fresh_fw = fresh_framework(base, None, args.seed)
    else:
        from simprune.config.flags import parse_sets

        recipe = load_recipe(args.config) if args.config else {}
        fresh_cfg, fresh_fw = fresh_framework(recipe, None, args.seed, parse_sets(args.overrides))
    drop_at = tuple(args.drop_at)
    images = _images(fresh_cfg, args.split, args.n_images, args.seed, args.data)
    panels = []
    backbones = [(f"random init ({fresh_cfg.model})", fresh_fw.eval_backbone())]
    for run in runs:
        cfg, fw, _ = framework_from_run(run)
        name = f"{run.run_dir.name} ({cfg.framework}, step {run.step}, {fw.eval_branch})"
        backbones.append((name, fw.eval_backbone()))
    for name, backbone in backbones:
        curves = diversity_curves(backbone, images, drop_at, args.keep, args.score, args.seed)
        panels.append({"name": name, "drop_at": list(drop_at), "curves": curves,
                       "ordering_after_first_drop": ordering(curves, drop_at[0])})
    out = Path(args.out or (runs[0].run_dir / "viz" if runs else "viz"))
    title = (f"token diversity, {args.n_images} {fresh_cfg.dataset} {args.split} images; dropping "
             f"after blocks {', '.join(map(str, drop_at))} to {args.keep:g} each (PCAE Fig. 3a)")
    png = plot_diversity(panels, out / "diversity.png", title)
    js = png.with_suffix(".json")
    js.write_text(json.dumps({"images": args.n_images, "split": args.split, "seed": args.seed,
                              "keep": args.keep, "score": args.score, "panels": panels}, indent=2))
    print(f"wrote {png} and {js.name}")
    for p in panels:
        order = " > ".join(f"{LABELS[d]} {v:.3f}" for d, v in p["ordering_after_first_drop"])
        print(f"{p['name']}: mean diversity from layer {drop_at[0]} on: {order}")
    return 0


__all__ = ["diversity_curves", "nuclear_diversity", "ordering", "plot_diversity", "run_diversity"]
