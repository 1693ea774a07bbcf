"""Run a framework on one image and keep what each reduction point did to its two global views.

The views come from the framework's own augmentation (:func:`simprune.run.build_augment`)
with colour operations off (crop + flip + normalise), so what the network sees is exactly what the
figure shows (un-normalised). A fixed ``seed`` fixes the crop boxes and flips, so every method and
every checkpoint traced with the same seed sees the same two views; the same seed also drives a
``random`` reducer. Local views are not made: the figures show the two global views, and pruning
of the global pairs does not depend on the local views.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from simprune.config import TrainConfig
from simprune.data.augment_ops import to_unit_float
from simprune.drive import PairPoint, PointRecord
from simprune.run import build_augment, build_framework

BRANCHES = ("student", "teacher", "pair")


@dataclass
class ViewPoint:
    """One reduction point as seen by one view of one branch.

    Attributes:
        block: 1-indexed block; keep_rate: rate applied; tokens_in / tokens_out: patch tokens
        before and after (``tokens_out`` counts EViT's fused token); ids: ``[K]`` original patch
        of each token (``-1`` synthetic); source: ``[N0]`` token position holding each original
        patch (``-1`` dropped).
    """

    block: int
    keep_rate: float
    tokens_in: int
    tokens_out: int
    ids: Tensor
    source: Tensor


@dataclass
class PruningTrace:
    """What one framework did to the two global views of one image.

    Attributes:
        method: reducer name (``dense`` for none); label: free text for titles (e.g. the step).
        image: ``[C, H, W]`` float original in ``[0, 1]``.
        views: ``[2, C, S, S]`` float un-normalised global views (what the network saw).
        boxes: ``[2, 4]`` crop boxes ``(x0, y0, x1, y1)`` in original pixels; flipped: ``[2]``.
        grid: ``(gh, gw)`` patch grid of a view; patch_size: pixels per patch side in the view.
        progress, keep_rate, position: training progress ``t`` used, and the keep rate and
            SimPrune window position it gives.
        points: the driver's per-point records, batch rows ``[view 1; view 2]``.
        step, total_steps: of the checkpoint (``None`` for fresh weights).
    """

    method: str
    image: Tensor
    views: Tensor
    boxes: Tensor
    flipped: Tensor
    grid: tuple[int, int]
    patch_size: int
    progress: float
    keep_rate: float
    position: float
    points: list[PairPoint]
    step: int | None = None
    total_steps: int | None = None
    label: str = ""
    notes: list[str] = field(default_factory=list)

    def view_points(self, view: int, branch: str = "student") -> list[ViewPoint]:
        """The points of global view ``view`` (0 or 1) in ``branch``.

        ``branch="pair"`` takes view 1 from the student and view 2 from the teacher: the two
        sequences the loss (and SimPrune's matching) compares.
        """
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; valid: {', '.join(BRANCHES)}")
        if view not in (0, 1):
            raise ValueError(f"view must be 0 or 1, got {view}")
        side = branch if branch != "pair" else ("student", "teacher")[view]
        out = []
        for p in self.points:
            rec: PointRecord = getattr(p, side)
            out.append(ViewPoint(p.block, p.keep_rate, rec.tokens_in, rec.tokens_out,
                                 rec.ids[view].cpu(), rec.source[view].cpu()))
        return out


def display_augment(cfg: TrainConfig, framework: nn.Module | None = None) -> nn.Module:
    """The run's global-view augmentation with colour operations off and no local views.

    ``framework``: the framework ``cfg`` built (its ``build_augment`` makes the augmentation);
    ``None``: one is built from ``cfg`` (without touching the global RNG).
    """
    names = {f.name for f in dataclasses.fields(cfg.fw)} if dataclasses.is_dataclass(cfg.fw) else set()
    off = {k: v for k, v in (("color_ops", False), ("local_views", 0)) if k in names}
    shown = dataclasses.replace(cfg, fw=dataclasses.replace(cfg.fw, **off)) if off else cfg
    if framework is None:
        with torch.random.fork_rng(devices=[]):
            framework = build_framework(shown)
    return build_augment(shown, framework)


def unnormalize(x: Tensor, augment: nn.Module) -> Tensor:
    """Normalised views ``[N, C, S, S]`` back to ``[0, 1]`` with the augmentation's mean/std."""
    mean = augment.mean.to(x.dtype).reshape(1, -1, 1, 1)
    std = augment.std.to(x.dtype).reshape(1, -1, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


@torch.no_grad()
def trace_pruning(framework: nn.Module, augment: nn.Module, image: Tensor, progress: float,
                  seed: int = 0, method: str | None = None) -> PruningTrace:
    """Make the two global views of ``image`` and run both branches with pruning.

    Args:
        framework: a :class:`~simprune.frameworks.DualBranch` (DINO, MoCo v3); put in eval mode
            for the forward (no drop-path) and restored after.
        augment: from :func:`display_augment` (colour ops off).
        image: uint8 ``[C, H, W]`` or float in ``[0, 1]``.
        progress: training progress ``t ∈ [0, 1]`` (keep-rate warm-up, SimPrune's window).
        seed: fixes the crops, flips and any random reducer, without touching the global RNG.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    img = to_unit_float(image[None], image.shape[0])[0].float()
    was_training = framework.training
    framework.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = augment(img[None])
            globals_ = torch.cat(views.globals, dim=0)  # [2, C, S, S], rows [v1; v2]
            dual = framework.encode(globals_, None, progress)
    finally:
        framework.train(was_training)
    plan = framework.plan  # the student's reduction plan
    keep_rate, position = plan.keep_rate(progress), plan.position(progress)
    backbone = framework.student["backbone"]
    patch = backbone.cfg.patch_size
    size = globals_.shape[-1]
    name = method or (plan.reducer.name if plan.reducer is not None else "dense")
    return PruningTrace(
        method=name, image=img, views=unnormalize(globals_, augment), boxes=views.boxes[:2, 0].float(),
        flipped=views.flipped[:2, 0].clone(), grid=(globals_.shape[-2] // patch, size // patch),
        patch_size=patch, progress=float(progress), keep_rate=float(keep_rate),
        position=float(position), points=dual.points)
