"""The framework protocol: what the trainer, the cost benchmark and the study may ask of any
framework, and the registry that makes frameworks usable by name.

A framework is an ``nn.Module`` that owns its branches (backbone, head, reduction plan), its
teacher, its losses and its config section. The trainer knows it only through this protocol::

    fw = FRAMEWORKS.get(cfg.framework).build(cfg, data)   # from the config and the data's facts
    views = fw.build_augment(cfg, data)(images)            # on device, seeded per step
    out = fw(Batch(views, labels, index), progress)        # -> StepOutput(loss, per_sample, logs)
    out.loss.backward(); clip(fw.trainable()); fw.before_optimizer_step(progress); opt.step()
    fw.after_step(progress)                                # EMA teacher, centre, ...
    fw.eval_protocol, fw.eval_backbone()                   # how and what evaluation reads

Register a new framework with ``@FRAMEWORKS.register("name")`` on a subclass of
:class:`Framework`; nothing in ``train/``, ``bench/`` or ``study/`` needs to change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from simprune.config import FRAMEWORKS as _REGISTRY
from simprune.data.augment import Views
from simprune.registry import Registry

if TYPE_CHECKING:
    from simprune.config import TrainConfig
    from simprune.drive.lockstep import PairPoint
    from simprune.drive.single import PointRecord
    from simprune.models.vit import VisionTransformer

DENSE = "dense"


@dataclass
class Batch:
    """One step's data on the device.

    Attributes:
        views: the augmented views (``views.globals[i]``: ``[B, C, H, W]``).
        labels: ``[B]`` int64 class labels (``-1`` where the data set has none).
        index: ``[B]`` int64 dataset row of each sample (sampler filters key their state on it).
    """

    views: Views
    labels: Tensor
    index: Tensor


@dataclass(frozen=True)
class Progress:
    """Where training stands: ``t = step / total_steps`` drives every schedule."""

    step: int
    total_steps: int
    steps_per_epoch: int

    @property
    def t(self) -> float:
        return self.step / max(1, self.total_steps)

    @property
    def epoch(self) -> float:
        """Epochs done (fractional), for settings given in epochs."""
        return self.step / max(1, self.steps_per_epoch)


@dataclass
class StepOutput:
    """A framework forward.

    Attributes:
        loss: the scalar to minimise.
        per_sample: ``[B]`` detached per-sample loss (mean over the sample's terms).
        logs: scalar diagnostics (device tensors or floats; read only every ``log_every`` steps).
        points: per reduction point, what was kept: a :class:`~simprune.drive.PairPoint` per point
            for two-branch frameworks, a :class:`~simprune.drive.PointRecord` for one branch.
        extras: per-sample device tensors a sampler filter may read (e.g. ``correct: [B]`` bool).
    """

    loss: Tensor
    per_sample: Tensor | None
    logs: dict[str, Tensor | float]
    points: list[PairPoint | PointRecord] = field(default_factory=list)
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class DataInfo:
    """Facts about the training data a framework may need when it is built."""

    name: str
    num_classes: int
    num_examples: int
    has_labels: bool = True
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: decayed weights, and biases/norm parameters (1-d) with no decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0,
                                                  "apply_wd": False}]


class Framework(nn.Module):
    """Base of every training framework. Subclasses set the class attributes and implement
    :meth:`build`, :meth:`build_augment` and :meth:`forward`."""

    #: the framework's config section (a dataclass; ``[<name>]`` in a recipe)
    Config: ClassVar[type]
    #: teacher kinds the framework accepts, and the default
    teachers: ClassVar[tuple[str, ...]] = ("none",)
    default_teacher: ClassVar[str] = "none"
    #: ``knn`` (frozen features: k-NN, linear probe) or ``classify`` (top-1/top-5 of its head)
    eval_protocol: ClassVar[str] = "knn"
    #: the branch whose backbone evaluation reads by default
    eval_branch: ClassVar[str] = "student"
    #: the branches evaluation may read: attributes holding a ``"backbone"`` (``eval_backbone``)
    branches: ClassVar[tuple[str, ...]] = ("student",)
    #: the ``knn`` protocol's features: the final ``cls`` token or the ``mean`` of the patch tokens
    #: (MAE, PCAE: their losses never train the CLS token); instances may set it from their config
    eval_pool: str = "cls"
    #: whether some trained parameters take no part in some steps (dynamic_simprune's gates during
    #: its warm-up): DDP then looks for unused parameters at every step (``find_unused_parameters``)
    idle_parameters: bool = False
    #: whether training needs class labels
    needs_labels: ClassVar[bool] = False
    #: whether the reducer may be a pair reducer (needs two branches compared in the loss)
    pair_reducers: ClassVar[bool] = False
    #: the reducers ``[reducer] method`` may name besides ``dense`` (``None``: every registered
    #: one, pair reducers only with ``pair_reducers``; ``()``: dense only, e.g. MAE, whose
    #: reduction is its masking)
    reducers: ClassVar[tuple[str, ...] | None] = None

    #: what cost tables may vary besides the reducer: ``cost_masks`` — the share of patches the encoder
    #: hides is ``<name>.mask_ratio`` (MAE, PCAE); the mask ratios ``bench cost`` measures when
    #: none are given (empty: the recipe's); log keys of a forward a cost row reports
    #: (``decoded``: tokens the decoder reconstructs per image)
    cost_masks: ClassVar[bool] = False
    cost_mask_ratios: ClassVar[tuple[float, ...]] = ()
    cost_logs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def cost_reference(cls, cfg: TrainConfig) -> TrainConfig | None:
        """The step cost tables compare ``cfg``'s step with. Default: the same run without token
        reduction (``None`` when ``cfg`` reduces nothing: it is its own reference). MAE and PCAE:
        MAE at mask 0.75 with the same decoder."""
        if cfg.reducer.method == DENSE:
            return None
        from simprune.config import make_config

        return make_config(cfg.to_dict(), {"reducer.method": DENSE})

    @classmethod
    def cost_label(cls, cfg: TrainConfig) -> str:
        """How cost tables name ``cfg``'s step. Default: framework, method (with its options, as
        ``--methods`` takes them: ``simprune:matching=one_to_one``) and keep rate."""
        rc = cfg.reducer
        if rc.method == DENSE:
            return f"{cfg.framework} {rc.method}"
        opts = ",".join(f"{k}={v}" for k, v in sorted(rc.options.items()))
        return f"{cfg.framework} {rc.method}" + (f":{opts}" if opts else "") + f" keep {rc.keep_rate:g}"

    @classmethod
    def cost_mask_ratio(cls, cfg: TrainConfig) -> float | None:
        """The share of patches ``cfg``'s encoder never sees (``None``: it masks nothing)."""
        return None

    @classmethod
    def cost_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        """What a cost row says about ``cfg``'s setting besides its method and keep rate (MAE,
        PCAE: mask ratio and decoder size, without which their tables cannot be read). Default:
        the mask ratio when there is one."""
        ratio = cls.cost_mask_ratio(cfg)
        return {} if ratio is None else {"mask_ratio": ratio}

    @classmethod
    def accepts_reducer(cls, method: str) -> bool:
        """Whether ``[reducer] method`` may be ``method`` in this framework."""
        if method == DENSE:
            return True
        if cls.reducers is not None:
            return method in cls.reducers
        from simprune.reducers import REDUCERS

        return method in REDUCERS and (cls.pair_reducers or not REDUCERS.get(method).is_pair)

    student: nn.ModuleDict

    @classmethod
    def build(cls, cfg: TrainConfig, data: DataInfo) -> Framework:
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Refuse settings that cannot work, before anything is built (e.g. batch sizes that
        cannot learn). The base checks the teacher kind and pair reducers."""
        if cfg.teacher.kind not in cls.teachers:
            raise ValueError(f"framework {cfg.framework!r} takes teacher kind "
                             f"{' or '.join(repr(k) for k in cls.teachers)}, got {cfg.teacher.kind!r}")
        method = cfg.reducer.method
        if cls.reducers is not None and not cls.accepts_reducer(method):
            allowed = " or ".join(repr(m) for m in (DENSE, *cls.reducers))
            raise ValueError(f"framework {cfg.framework!r} takes reducer.method {allowed}, got "
                             f"{method!r}{pair_frameworks_hint(method)}")
        if not cls.pair_reducers and method != DENSE:
            from simprune.reducers import REDUCERS

            if method in REDUCERS and REDUCERS.get(method).is_pair:
                raise ValueError(f"method {method!r} is a pair reducer: it needs two "
                                 f"branches compared in the loss, which framework {cfg.framework!r} "
                                 f"does not have; choose a one-branch reducer"
                                 f"{pair_frameworks_hint(method)}")

    @classmethod
    def bench_defaults(cls, given: Collection[str]) -> dict[str, Any]:
        """Config keys the cost benchmarks (``bench flops``, ``bench cost``) set when the user gave
        none of the keys that decide them (``given``: the dotted keys given): what a training run
        reads from disk and a cost count does not need (``distill``: a random frozen teacher).
        Default: none."""
        return {}

    def build_augment(self, cfg: TrainConfig, data: DataInfo) -> nn.Module:
        """The device augmentation: uint8 ``[B, C, H, W]`` -> :class:`Views`."""
        raise NotImplementedError

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        raise NotImplementedError

    def trainable(self) -> nn.Module:
        """The module whose parameters the optimiser trains (and whose gradients are clipped)."""
        return self.student

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: weights decayed, biases and norms not."""
        return param_groups(self.trainable())

    def eval_features(self, branch: str | None = None) -> Callable[[Tensor], Tensor] | None:
        """A framework's own evaluation forward, ``images [B, C, H, W] -> [B, D]`` features, for the
        ``knn`` protocol (distill: the student with its reduction plan); ``None``: the unreduced
        backbone of ``branch`` pooled by :attr:`eval_pool`."""
        return None

    def before_optimizer_step(self, progress: Progress) -> None:
        """After backward and clipping, before the optimiser step (DINO freezes its last layer)."""

    def after_step(self, progress: Progress) -> dict[str, float]:
        """After the optimiser step (EMA teacher, ...); returns scalars to log."""
        return {}

    def sample_filter(self, indices: Tensor) -> Any:
        """A :class:`~simprune.data.sampler.SampleFilter` over the training rows ``indices`` that
        chooses the examples each epoch trains on (Tri-Level E-ViT's example level), or ``None``
        (the default): every example. The trainer saves its state in the checkpoint."""
        return None

    @classmethod
    def epoch_share(cls, cfg: TrainConfig) -> float:
        """Optimiser steps per epoch relative to training on every example (a sample filter's
        saving; the whole run's FLOPs and time scale by it). Default 1."""
        return 1.0

    def eval_backbone(self, branch: str | None = None) -> VisionTransformer:
        """The backbone evaluation reads: ``branch`` (one of :attr:`branches`) or the framework's
        default."""
        branch = branch or self.eval_branch
        if branch not in self.branches:
            raise ValueError(f"{type(self).__name__} has the branches {', '.join(self.branches)}, "
                             f"got branch {branch!r}")
        return getattr(self, branch)["backbone"]


#: Every framework by name. The registry object is the config layer's
#: (:data:`simprune.config.FRAMEWORKS`, which reads each framework's section and defaults); it is
#: named here too, where frameworks register.
FRAMEWORKS: Registry[type[Framework]] = _REGISTRY


def pair_frameworks_hint(method: str) -> str:
    """``"; it works in frameworks dino, mocov3"`` when ``method`` is a pair reducer, else ``""``."""
    from simprune.reducers import REDUCERS

    if method == DENSE or method not in REDUCERS or not REDUCERS.get(method).is_pair:
        return ""
    names = [n for n in FRAMEWORKS.names() if FRAMEWORKS.get(n).accepts_reducer(method)]
    return f", or a framework {method!r} works in: {', '.join(names)}" if names else ""
