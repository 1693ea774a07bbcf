"""Tri-Level E-ViT (Kong et al., AAAI 2023; METHOD.md, "Tri-Level E-ViT"): supervised training with
sparsity at the example, token and attention levels, each turned on by its own setting.

``framework = "trilevel"`` is the supervised framework (:mod:`simprune.frameworks.supervised`: the
same head, loss, augmentation and evaluation; its ``[supervised]`` keys live in ``[trilevel]``) plus:

- **Example level** (``[trilevel] example = "forgetting"``; ``"random"`` is the random-refresh
  baseline; ``"off"`` by default): a sample filter (:class:`~simprune.data.filters.ForgettingFilter`)
  trains on ``example_keep`` of the training set and runs remove-and-restore rounds at
  ``rounds_at``. Its tie-break reads the variance of the last block's CLS attention over the patch
  tokens, which this framework returns per sample as ``extras["cls_attn_var"]`` while the filter
  gathers statistics (the last block is then a reduction point that reduces nothing).
- **Token level** (``[reducer] method = "attn_topk"``, ``keep_rate`` = R_T at ``reduce_at``, default
  blocks 4/7/10): the patches with the highest CLS attention survive, no fusion. Warm-up:
  ``keep_warmup = [0.03, 0.36]`` (keep 1 for the first 3% of training, then a cosine to R_T by 36%).
- **Attention level** (``[reducer] options = {attn_keep = 0.3}`` = R_A): each kept patch query
  attends to ``ceil(R_A·(1+K))`` keys (CLS row and column dense), chosen at every point and used
  until the next. R_A follows the same warm-up as R_T (as the reference code does).
  ``attn_form = "masked"`` (default, the reference's dense masked softmax) or ``"sparse"``
  (gathered keys). With ``keep_rate = 1`` the attention level runs alone: unlike the one-branch
  driver, this framework's driver calls the selector at a point whose K equals N.

Table 3's ablation is one setting per level on a dense base: ``--trilevel.example forgetting``;
``--method attn_topk --keep-rate 0.8``; ``--method attn_topk --keep-rate 1 --reducer.options
'{"attn_keep": 0.3}'`` (JSON on the command line; studies/trilevel_cpu.toml has every row).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from torch import Tensor

from simprune.data.filters.forgetting import (
    MODES,
    TIE_BREAKS,
    ForgettingFilter,
    check_rounds_at,
    kept_count,
    stats_until,
)
from simprune.drive.single import Reduced, finish, record
from simprune.frameworks.base import FRAMEWORKS, Batch, DataInfo, Progress, StepOutput
from simprune.frameworks.supervised import Supervised, SupervisedConfig, pool_tokens
from simprune.models.vit import VisionTransformer
from simprune.reducers.attn_topk import AttnTopKReducer
from simprune.tokens import num_keep

EXAMPLE_MODES = ("off", *MODES)


@dataclass
class TrilevelConfig(SupervisedConfig):
    """``[trilevel]``: the supervised keys (label smoothing, pooling, mixing, init) and the example
    level.

    Attributes:
        example: ``off``, ``forgetting`` (Tri-Level's example level) or ``random`` (random refresh
            on the same schedule).
        example_keep: share of the training set trained on (r_E, reference 0.8).
        remove_frac: share of the training set removed and restored per round (reference 0.05).
        rounds_at: fractions of training at which rounds happen (default every 10%, five rounds).
        tie_break: ``cls_var`` (the paper's: lowest mean CLS-attention variance first) or ``none``
            (seeded random order among equal forgetting counts).
    """

    example: str = "off"
    example_keep: float = 0.8
    remove_frac: float = 0.05
    rounds_at: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])
    tie_break: str = "cls_var"


def attn_keep_at(plan: Any, t: float) -> float:
    """R_A at progress ``t``: the selector's ``attn_keep`` under the plan's keep-rate warm-up."""
    reducer = plan.reducer
    if not isinstance(reducer, AttnTopKReducer) or reducer.attn_keep >= 1.0:
        return 1.0
    return replace(plan.keep, target=reducer.attn_keep)(t)  # the same start, end (and ramp)


def trilevel_forward(model: VisionTransformer, images: Tensor, plan: Any, t: float,
                     points: tuple[int, ...], var_block: int | None = None) -> tuple[Reduced, Tensor | None]:
    """Forward through the TA-selector at ``points`` at progress ``t``.

    Returns the final tokens with one record per point of ``points``, and, when ``var_block`` is
    given, ``[B]`` the (unbiased) variance of that block's head-averaged CLS attention over its
    patch tokens. A point whose K equals N still chooses connections when R_A(t) < 1.
    """
    reducer = plan.reducer
    rate = plan.keep_rate(t)
    ra = attn_keep_at(plan, t)
    if isinstance(reducer, AttnTopKReducer) and ra != reducer.attn_keep:
        reducer = reducer.with_attn_keep(ra)
    if rate >= 1.0 and ra >= 1.0:
        reducer = None  # nothing to select at this progress (warm-up): no CLS attention computed
    need = set(reducer.needs) if reducer is not None else set()
    if var_block is not None:
        need.add("cls_attn")
    gen = model.stages(images, frozenset(need))
    out = Reduced(state=None)  # type: ignore[arg-type]
    variance = None
    point, final = finish(gen, None)
    while point is not None:
        state, reduced = point.state, None
        if point.block == var_block:
            variance = point.extras.cls_attn[:, state.num_prefix:].detach().var(dim=1)
        if point.block in points:
            k = num_keep(state.num_patches, rate)
            if reducer is not None and (k < state.num_patches or ra < 1.0):
                reduced = reducer(point, k)
            out.points.append(record(point.block, state, reduced if reduced is not None else state))
        point, final = finish(gen, reduced)
    out.state = final
    return out, variance


@FRAMEWORKS.register("trilevel")
class Trilevel(Supervised):
    """Supervised classification with Tri-Level E-ViT's example, token and attention levels."""

    Config: ClassVar[type] = TrilevelConfig
    #: the token level; other reducers train with framework ``supervised``
    reducers: ClassVar[tuple[str, ...] | None] = ("attn_topk",)

    def __init__(self, backbone, num_classes: int, plan, cfg: TrilevelConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, num_classes, plan, cfg)
        self.seed = 0
        self.points: tuple[int, ...] = tuple(backbone.reduce_at)
        self.var_block: int | None = None
        self._want_var = False
        self._variance: Tensor | None = None

    @property
    def tracks_variance(self) -> bool:
        c: TrilevelConfig = self.opts
        return c.example == "forgetting" and c.tie_break == "cls_var"

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001
        super().check(cfg)
        c: TrilevelConfig = cfg.fw
        if cfg.reducer.method == "attn_topk":
            from simprune.reducers import create_reducer

            create_reducer("attn_topk", **cfg.reducer.options)  # bad R_A or form: refused here
        if c.example not in EXAMPLE_MODES:
            raise ValueError(f"trilevel.example must be one of {', '.join(EXAMPLE_MODES)}, got "
                             f"{c.example!r}")
        if c.tie_break not in TIE_BREAKS:
            raise ValueError(f"trilevel.tie_break must be one of {', '.join(TIE_BREAKS)}, got "
                             f"{c.tie_break!r}")
        if c.example != "off":
            if not 0.0 < c.example_keep < 1.0:
                raise ValueError(f"trilevel.example_keep must be in (0, 1) when the example level is on, "
                                 f"got {c.example_keep} (example = 'off' trains on everything)")
            if not 0.0 < c.remove_frac <= 1.0 - c.example_keep:
                raise ValueError(f"trilevel.remove_frac must be in (0, 1 - example_keep = "
                                 f"{1.0 - c.example_keep:g}] (a round restores as many as it removes "
                                 f"from the pool), got {c.remove_frac}")
            check_rounds_at(c.rounds_at)

    @classmethod
    def build(cls, cfg, data: DataInfo) -> Trilevel:  # noqa: ANN001 - TrainConfig
        fw = super().build(cfg, data)
        assert isinstance(fw, Trilevel)
        fw.seed = int(cfg.seed)
        backbone = fw.student["backbone"]
        fw.points = tuple(backbone.reduce_at)  # records at these; the variance point is extra
        if fw.tracks_variance:
            fw.var_block = backbone.depth
            backbone.set_reduce_at(sorted(set(backbone.reduce_at) | {backbone.depth}))
        return fw

    @classmethod
    def epoch_share(cls, cfg) -> float:  # noqa: ANN001 - TrainConfig
        """Optimiser steps per epoch relative to training on every example: the example level's
        saving (exact for a ``train_subset`` run, else the kept share)."""
        c: TrilevelConfig = cfg.fw
        if c.example == "off":
            return 1.0
        n = int(cfg.train_subset)
        if n <= 0:
            return float(c.example_keep)
        kept = kept_count(c.example_keep, n)
        return (kept // cfg.batch_size) / max(1, n // cfg.batch_size)

    def sample_filter(self, indices: Tensor) -> ForgettingFilter | None:
        """The example level's filter over the training rows ``indices`` (``None`` when off)."""
        c: TrilevelConfig = self.opts
        if c.example == "off":
            return None
        device = next(self.parameters()).device
        return ForgettingFilter(indices, c.example_keep, c.remove_frac, c.rounds_at, self.seed,
                                mode=c.example, tie_break=c.tie_break, device=device)

    def logits(self, images: Tensor, t: float = 1.0):  # noqa: ANN201
        """``[B, K]`` class logits with the three-level plan at progress ``t``, and the record."""
        var_block = self.var_block if self._want_var else None
        out, self._variance = trilevel_forward(self.student["backbone"], images, self.plan, t,
                                               self.points, var_block)
        return self.student["head"](pool_tokens(out.state, self.opts.pool)), out

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        self._want_var = self.tracks_variance and progress.step < stats_until(
            self.opts.rounds_at, progress.total_steps, progress.steps_per_epoch)
        try:
            out = super().forward(batch, progress)
        finally:
            self._want_var = False
        if self._variance is not None:
            out.extras["cls_attn_var"] = self._variance
            self._variance = None
        out.logs["attn_keep"] = attn_keep_at(self.plan, progress.t)
        return out
