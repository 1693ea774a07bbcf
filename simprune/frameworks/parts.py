"""Parts every framework builds from its config: the backbone and the per-branch reduction plans."""

from __future__ import annotations

from collections.abc import Sequence

from simprune.config import TrainConfig, model_overrides
from simprune.drive.plan import ReductionPlan
from simprune.frameworks.base import DENSE
from simprune.models import MODELS, create_model
from simprune.models.vit import VisionTransformer
from simprune.reducers import REDUCERS, KeepRateSchedule, create_reducer
from simprune.reducers.base import PairReducer, TokenReducer


def backbone_reduce_at(cfg: TrainConfig) -> tuple[int, ...]:
    """The backbone's reduction points: ``reducer.reduce_at``; a dense run (which reduces nothing)
    keeps only the default points that exist in a shallower model."""
    points = tuple(cfg.reducer.reduce_at)
    if cfg.reducer.method == "dense":
        depth = cfg.depth or (MODELS.get(cfg.model).depth if cfg.model in MODELS else 0)
        points = tuple(b for b in points if b <= depth) if depth else points
    return points


def build_backbone(cfg, data=None, init: str = "deit",  # noqa: ANN001 - TrainConfig, DataInfo
                   freeze_patch_embed: bool = False) -> VisionTransformer:
    """The ViT a config describes (named model and size overrides, reduction points, position
    embedding). ``init`` and ``freeze_patch_embed`` are a framework's own choices (MoCo v3's
    section has them); the default is DeiT's init with a trained patch projection."""
    extra = {} if data is None else {"in_chans": data.in_chans}
    method = cfg.reducer.method
    if method != DENSE and method in REDUCERS:
        extra["point_placement"] = REDUCERS.get(method).placement
    return create_model(cfg.model, reduce_at=backbone_reduce_at(cfg), drop_path_rate=cfg.drop_path,
                        init=init, pos_embed=cfg.pos_embed, freeze_patch_embed=freeze_patch_embed,
                        **model_overrides(cfg), **extra)


def num_patches(cfg) -> int:  # noqa: ANN001 - TrainConfig
    """Patch tokens of a global view: ``(global_size / patch_size)²``."""
    from simprune.config import model_overrides
    from simprune.models import model_config

    vc = model_config(cfg.model, **model_overrides(cfg))
    return (vc.img_size // vc.patch_size) ** 2


def check_point_zero(method: str, reducer: TokenReducer, reduce_at: Sequence[int]) -> None:
    """Point 0 (after the patch embedding) has no attention yet: refuse reducers that read it."""
    needs = set(reducer.needs)
    if isinstance(reducer, PairReducer):
        needs |= reducer.student_needs | reducer.teacher_needs
    if 0 in reduce_at and needs:
        can = sorted(n for n in REDUCERS.names() if not REDUCERS.get(n).needs
                     and not issubclass(REDUCERS.get(n), PairReducer))
        raise ValueError(f"reducer {method!r} reads the attention ({', '.join(sorted(needs))}) and cannot "
                         f"reduce at point 0 (after the patch embedding, before any attention); "
                         f"reducers that can: {', '.join(can)}")


def build_plans(cfg) -> tuple[ReductionPlan, ReductionPlan]:  # noqa: ANN001 - TrainConfig
    """The student's and the teacher's reduction plans from the ``[reducer]`` section."""
    rc = cfg.reducer
    if rc.branches not in ("both", "student"):
        raise ValueError(f"reducer.branches must be 'both' or 'student', got {rc.branches!r}")
    if rc.method == DENSE:
        return ReductionPlan(), ReductionPlan()
    options = dict(rc.options)
    if getattr(REDUCERS.get(rc.method), "owns_flops_budget", False) and rc.flops_budget:
        if "flops_budget" in options and options["flops_budget"] != rc.flops_budget:
            raise ValueError(f"reducer.flops_budget {rc.flops_budget:g} and reducer.options "
                             f"flops_budget {options['flops_budget']:g} disagree; give one of them")
        options["flops_budget"] = rc.flops_budget  # the reducer meets the budget itself
    reducer = create_reducer(rc.method, **options)
    check_point_zero(rc.method, reducer, rc.reduce_at)
    reducer.check_plan(rc.reduce_at, num_patches(cfg))
    own = getattr(reducer, "keep_schedule", None)  # a reducer without a keep rate (dynamic_simprune)
    keep = own() if own is not None else KeepRateSchedule(rc.keep_rate, *rc.keep_warmup, rc.keep_ramp)
    student = ReductionPlan(reducer, keep, rc.window if reducer.is_pair else "sliding")
    if reducer.is_pair:
        if rc.branches != "both":
            raise ValueError(f"{rc.method!r} is a pair reducer: it reduces both branches together "
                             "(reducer.branches must be 'both')")
        return student, student
    return student, (student if rc.branches == "both" else ReductionPlan())
