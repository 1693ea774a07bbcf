"""DINOv2-style training (METHOD.md "DINOv2-style training and SimPrune's masked-token alignment").

DINO (:mod:`simprune.frameworks.dino`: its heads, centring, temperatures, multi-crop and image-level
loss) plus the two things DINOv2 adds, on the same global crops:

- **iBOT** masked-patch loss (:mod:`simprune.losses.ibot`): the student sees the global crops with
  block masks (:mod:`simprune.drive.block_mask`; half the global batch's crops masked, ratios
  stratified over ``mask_ratio_min_max``), the mask token replacing the patch embedding at point 0;
  the teacher sees them unmasked. At every masked position both branches still hold, the student's
  patch distribution (DINO head, or a separate one with ``ibot_separate_head``) learns the
  teacher's, centred with the iBOT centre (EMA ``ibot_center_momentum`` of the mean teacher patch
  logit at those positions) and sharpened with the teacher temperature.
- **KoLeo** (:mod:`simprune.losses.koleo`) on the student backbone's CLS features of each global
  view's chunk, in fp32, weight ``koleo_weight``.

Total: DINO + ``ibot_weight`` · iBOT + ``koleo_weight`` · KoLeo.

Token reduction (:func:`simprune.drive.masked_pair.masked_dual_forward`): SimPrune pairs each
student global view with the teacher's unmasked sequence **of the same view**, masked positions by
identity and the rest by similarity, one window over all pairs (A.4,
:mod:`simprune.reducers.aligned`); ``protect_masked`` keeps every masked pair (changes the FLOPs).
One-branch reducers (EViT, ToMe, Expediting ViT) run on each branch independently. Expediting ViT
must reconstruct the tokens (``reducer.options.recon_at``) for the iBOT loss to have patch tokens.

Masks are drawn per ``(seed, step, dataset row, view)`` under a per-step plan of the whole global
batch, so resumed and multi-process runs mask exactly as one uninterrupted process. Logged per
step: ``dino_loss``, ``ibot_loss``, ``koleo_loss``, ``masked/p<i>`` (share of the masked positions
still in the student after point ``i``), ``ibot_valid`` (share of masked positions in the iBOT
loss), the teacher's entropy and KL to the centre for the CLS (``teacher_entropy``,
``kl_to_center``) and the patches (``ibot_teacher_entropy``, ``ibot_kl_to_center``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simprune import dist
from simprune.drive import DualOutput
from simprune.drive.block_mask import BlockMasks, BlockMaskSpec, batch_block_masks, check_block_mask
from simprune.drive.masked_pair import masked_dual_forward, masked_rows
from simprune.frameworks.base import DENSE, FRAMEWORKS, Batch, Progress, StepOutput
from simprune.frameworks.dino import DINO, DINOConfig
from simprune.losses.dino import collapse_stats, dino_loss, dino_loss_per_sample
from simprune.losses.ibot import ibot_loss, ibot_per_image, ibot_weights, masked_center_stats
from simprune.losses.koleo import check_koleo_batch, koleo_loss
from simprune.models.heads import DINOHead
from simprune.teachers import EMATeacher
from simprune.tokens import TokenState


@dataclass
class DINOv2Config(DINOConfig):
    """``[dinov2]``: DINO's keys (``[dino]``) plus iBOT, KoLeo, masking and A.4's option.

    Attributes:
        ibot_weight: weight of the iBOT loss (0: off).
        ibot_center_momentum: momentum of the iBOT centre.
        ibot_separate_head: a second DINO-style head for the patch tokens (default: shared).
        koleo_weight: weight of KoLeo (0: off).
        mask_ratio_min_max: the masked crops' ratios are stratified over this range, in ``[0, 1)``.
        mask_probability: share of the global batch's crops that are masked.
        mask_min_patches: smallest mask block, in patches.
        protect_masked: SimPrune keeps every masked pair; ``K`` applies to the rest.
    """

    ibot_weight: float = 1.0
    ibot_center_momentum: float = 0.9
    ibot_separate_head: bool = False
    koleo_weight: float = 0.1
    mask_ratio_min_max: list[float] = field(default_factory=lambda: [0.1, 0.5])
    mask_probability: float = 0.5
    mask_min_patches: int = 4
    protect_masked: bool = False


class MaskToken(nn.Module):
    """The learned embedding that replaces a masked patch's (DINOv2 initialises it to zeros)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(dim))


def tokens_at(state: TokenState, rows: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """The final patch token of original patch ``pos[t]`` in batch row ``rows[t]``.

    Returns:
        ``tokens: [T, D]`` and ``present: [T]`` bool: the branch still holds that patch as its own
        token (not pruned, merged away or fused; a dropped one reads an arbitrary token).
    """
    src = state.source[rows, pos]
    safe = src.clamp(min=0)
    present = (src >= 0) & (state.ids[rows, safe] == pos)
    return state.patches[rows, safe], present


def spec_of(cfg) -> BlockMaskSpec:  # noqa: ANN001 - TrainConfig
    """The block-mask settings of a config (the global crop's patch grid from the model)."""
    from simprune.config import model_overrides
    from simprune.models import model_config

    vc = model_config(cfg.model, **model_overrides(cfg))
    side = cfg.global_size // vc.patch_size
    lo, hi = cfg.fw.mask_ratio_min_max
    return BlockMaskSpec((side, side), (lo, hi), cfg.fw.mask_probability, cfg.fw.mask_min_patches)


@FRAMEWORKS.register("dinov2")
class DINOv2(DINO):
    """DINO + iBOT + KoLeo, with masking at point 0 and A.4's alignment for SimPrune."""

    Config: ClassVar[type] = DINOv2Config

    @classmethod
    def accepts_reducer(cls, method: str) -> bool:
        """A pair reducer here is A.4's alignment, which is SimPrune's matching and window
        (:mod:`simprune.reducers.aligned`): other pair reducers (``dynamic_simprune``) are refused."""
        base = super().accepts_reducer(method)
        if not base or method == DENSE:
            return base
        from simprune.reducers import REDUCERS, SimPruneReducer

        cls_ = REDUCERS.get(method)
        return not cls_.is_pair or issubclass(cls_, SimPruneReducer)

    def __init__(self, backbone, plan, out_dim: int = 4096, hidden: int = 2048,  # noqa: ANN001
                 bottleneck: int = 256, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_frac: float = 0.0,
                 center_momentum: float = 0.9, freeze_last_layer: float = 0.0,
                 teacher_plan=None, momentum: float = 0.996, momentum_end: float = 1.0,  # noqa: ANN001
                 mask_spec: BlockMaskSpec | None = None, seed: int = 0, ibot_weight: float = 1.0,
                 ibot_center_momentum: float = 0.9, ibot_separate_head: bool = False,
                 koleo_weight: float = 0.1, protect_masked: bool = False) -> None:
        backbone.set_reduce_at((0, *(b for b in backbone.reduce_at if b != 0)))
        super().__init__(backbone, plan, out_dim, hidden, bottleneck, student_temp, teacher_temp,
                         warmup_teacher_temp, warmup_teacher_frac, center_momentum,
                         freeze_last_layer, teacher_plan, momentum, momentum_end)
        dim = backbone.embed_dim
        self.student["mask_token"] = MaskToken(dim)
        if ibot_separate_head:
            self.student["ibot_head"] = DINOHead(dim, out_dim, hidden, bottleneck)
            self.teacher["ibot_head"] = copy.deepcopy(self.student["ibot_head"])
            self.ema = EMATeacher(self.student, self.teacher, momentum, momentum_end)
        self.mask_spec = mask_spec or BlockMaskSpec(backbone.grid_size)
        self.seed = seed
        self.ibot_weight = ibot_weight
        self.ibot_center_momentum = ibot_center_momentum
        self.koleo_weight = koleo_weight
        self.protect_masked = protect_masked
        self.register_buffer("ibot_center", torch.zeros(1, out_dim))

    @classmethod
    def options(cls, cfg) -> dict[str, Any]:  # noqa: ANN001 - TrainConfig
        c: DINOv2Config = cfg.fw
        return dict(super().options(cfg), mask_spec=spec_of(cfg), seed=cfg.seed,
                    ibot_weight=c.ibot_weight, ibot_center_momentum=c.ibot_center_momentum,
                    ibot_separate_head=c.ibot_separate_head, koleo_weight=c.koleo_weight,
                    protect_masked=c.protect_masked)

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001 - TrainConfig
        super().check(cfg)
        c: DINOv2Config = cfg.fw
        name = cfg.framework
        if len(c.mask_ratio_min_max) != 2:
            raise ValueError(f"{name}.mask_ratio_min_max must be [min, max] in [0, 1), got "
                             f"{list(c.mask_ratio_min_max)}")
        check_block_mask(spec_of(cfg), f"{name}: ")
        for key in ("ibot_weight", "koleo_weight"):
            if getattr(c, key) < 0:
                raise ValueError(f"{name}.{key} must be >= 0, got {getattr(c, key)}")
        if not 0.0 <= c.ibot_center_momentum <= 1.0:
            raise ValueError(f"{name}.ibot_center_momentum must be in [0, 1], got {c.ibot_center_momentum}")
        if c.koleo_weight > 0:
            world = int(os.environ.get("WORLD_SIZE", "1") or 1)
            per_process = cfg.batch_size // max(1, world)
            check_koleo_batch(per_process, f"{name}: batch_size {cfg.batch_size}"
                              + (f" over {world} processes" if world > 1 else "") + ": ")
        method = cfg.reducer.method
        if 0 in cfg.reducer.reduce_at and method != DENSE:
            raise ValueError(f"{name} masks the student at point 0; reducer.reduce_at "
                             f"{list(cfg.reducer.reduce_at)} must not contain 0")
        if c.protect_masked and method != DENSE:  # dense prunes nothing: nothing to protect
            from simprune.reducers import REDUCERS

            pairs = [m for m in REDUCERS.names() if REDUCERS.get(m).is_pair and cls.accepts_reducer(m)]
            if method not in pairs:
                raise ValueError(f"{name}.protect_masked keeps the masked pairs of a pair reducer; it "
                                 f"applies to reducer.method {' or '.join(map(repr, pairs))}, got "
                                 f"{method!r}")
        if method == "simprune" and cfg.reducer.options.get("matching", "argmax") != "argmax":
            raise ValueError(f"{name} pairs SimPrune's visible tokens by argmax (A.4's alignment); "
                             f"reducer.options matching {cfg.reducer.options['matching']!r} does not "
                             "apply to it")
        if method == "expedite" and c.ibot_weight > 0 and not cfg.reducer.options.get("recon_at"):
            raise ValueError(f"{name}'s iBOT loss reads patch tokens at masked positions, which "
                             "expedite replaces by cluster centres: set reducer.options recon_at (a "
                             f"block after the clustering one) or {name}.ibot_weight = 0")

    def masks(self, batch: Batch, progress: Progress, num_views: int) -> BlockMasks:
        """This step's block masks of this process's global crops."""
        return batch_block_masks(batch.index, progress.step, self.seed, self.mask_spec, num_views,
                                 dist.rank(), dist.world_size())

    def encode_masked(self, g: Tensor, loc: Tensor | None, mask: Tensor, masked_max: int,
                      t: float) -> DualOutput:
        """Both backbones: the student on the masked global crops (+ locals), the teacher unmasked."""
        self.teacher["backbone"].eval()
        self.teacher["head"].train()
        reducer = self.plan.reducer
        teacher_reducer = "same" if self.teacher_plan is self.plan else self.teacher_plan.reducer
        return masked_dual_forward(self.student["backbone"], self.teacher["backbone"], g, g, mask,
                                   self.student["mask_token"].token, reducer, self.plan.keep_rate(t),
                                   self.plan.position(t), loc, self.protect_masked and self.plan.is_pair,
                                   masked_max,
                                   teacher_reducer=teacher_reducer)

    def ibot_heads(self) -> tuple[nn.Module, nn.Module]:
        if "ibot_head" in self.student:
            return self.student["ibot_head"], self.teacher["ibot_head"]
        return self.student["head"], self.teacher["head"]

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        views, t = batch.views, progress.t
        nv = len(views.globals)
        g = torch.cat(views.globals, dim=0)
        loc = torch.cat(views.locals, dim=0) if views.locals else None
        bm = self.masks(batch, progress, nv)
        mask = bm.mask.to(g.device, non_blocking=True)
        flat = bm.mask.nonzero()  # host: the masked (row, patch) pairs, T of them
        rows, pos = flat[:, 0].to(g.device), flat[:, 1].to(g.device)
        dual = self.encode_masked(g, loc, mask, bm.max_target, t)
        num_images = g.shape[0]
        temp = self.teacher_temp_at(t)

        # DINO: the CLS tokens of every student view against the teacher's global views
        s_cls = dual.student.cls if dual.local is None else torch.cat([dual.student.cls, dual.local.cls])
        s_tok, s_here = tokens_at(dual.student.state, rows, pos)
        t_tok, t_here = tokens_at(dual.teacher.state, rows, pos)
        s_head, t_head = self.ibot_heads()
        shared = s_head is self.student["head"]
        s_out = self.student["head"](torch.cat([s_cls, s_tok]) if shared else s_cls).float()
        s_patch = s_out[s_cls.shape[0]:] if shared else s_head(s_tok).float()
        s_out = s_out[: s_cls.shape[0]]
        with torch.no_grad():
            t_all = self.teacher["head"](torch.cat([dual.teacher.cls, t_tok]) if shared
                                         else dual.teacher.cls).float()
            t_patch = t_all[num_images:] if shared else t_head(t_tok).float()
            t_out = t_all[:num_images]
            t_probs = F.softmax((t_out - self.center) / temp, dim=-1)
            t_patch_probs = F.softmax((t_patch - self.ibot_center) / temp, dim=-1)
            valid = s_here & t_here
            weights = ibot_weights(rows, valid, num_images)
        loss_dino = dino_loss(s_out, t_probs, nv, self.student_temp)
        loss_ibot = ibot_loss(s_patch, t_patch_probs, weights, num_images, self.student_temp)
        loss_koleo = s_out.new_zeros(())
        if self.koleo_weight > 0:
            for chunk in dual.student.cls.chunk(nv):
                loss_koleo = loss_koleo + koleo_loss(chunk)
        loss = loss_dino + self.ibot_weight * loss_ibot + self.koleo_weight * loss_koleo

        logs = self.pruning_logs(dual, t)
        with torch.no_grad():
            per_sample = dino_loss_per_sample(s_out, t_probs, nv, self.student_temp)
            per_ibot = ibot_per_image(s_patch, t_patch_probs, weights, rows, num_images, self.student_temp)
            per_sample = per_sample + self.ibot_weight * per_ibot.view(nv, -1).mean(0)
            logs.update(collapse_stats(t_probs, self.center, temp))
            logs.update({"dino_loss": loss_dino.detach(), "ibot_loss": loss_ibot.detach(),
                         "koleo_loss": loss_koleo.detach(), "teacher_temp": temp,
                         "masked_share": float(flat.shape[0]) / max(1, bm.mask.numel())})
            total_masked = mask.sum().clamp(min=1)
            for i, pt in enumerate(dual.points, start=1):
                logs[f"masked/p{i}"] = masked_rows(mask, pt.student.ids).sum() / total_masked
            if flat.shape[0]:
                logs["ibot_valid"] = valid.float().mean()
                ibot_stats = collapse_stats(t_patch_probs, self.ibot_center, temp)
                logs.update({f"ibot_{k}": v for k, v in ibot_stats.items()})
            self.update_center(t_out)
            self.update_ibot_center(t_patch, weights)
        return StepOutput(loss, per_sample, logs, dual.points)

    def before_optimizer_step(self, progress: Progress) -> None:
        super().before_optimizer_step(progress)
        if progress.epoch < self.freeze_last_layer and "ibot_head" in self.student:
            for p in self.student["ibot_head"].last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def update_ibot_center(self, teacher_patch: Tensor, weights: Tensor) -> None:
        """EMA of the mean teacher patch logit at the valid masked positions (over processes); no
        change when no position is valid."""
        total, count = masked_center_stats(teacher_patch, weights)
        total, count = dist.all_reduce_mean(total), dist.all_reduce_mean(count)
        m = self.ibot_center_momentum
        new = self.ibot_center * m + (total / count.clamp(min=1e-12)) * (1 - m)
        self.ibot_center.copy_(torch.where(count > 0, new, self.ibot_center))


__all__ = ["DINOv2", "DINOv2Config", "MaskToken", "spec_of", "tokens_at"]
