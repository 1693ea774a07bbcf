"""Task-agnostic distillation from a frozen self-supervised teacher into a token-pruned student
(Lu & Nakamura; METHOD.md, "Task-agnostic distillation"; ANCHORS.md section 7).

- **Teacher**: frozen, in eval mode, without gradients, always dense; loaded strictly from a
  simprune run (its evaluation backbone) or a timm-named weights file (``[teacher]`` ``kind =
  "frozen"``, ``path``, ``model``), at the student's image size.
- **Student**: randomly initialised, with any one-branch reducer (``[reducer]``; EViT with fusion
  at keep 0.7 and 0.5 is the paper's). It trains on the images of any data set; labels are ignored.
- **Heads**: a projection from the student's width to the teacher's for the CLS token and, for
  ``loss = "all"``, one for the patch tokens (``shared_head``: one for both); linear by default,
  ``head = "mlp"`` for Linear-GELU-Linear.
- **Loss** (:mod:`simprune.losses.kd`): ``cls`` or ``all`` (CLS + the retained patch tokens, each
  against the teacher token at its original position; a fused token left out; a merged token
  against the mean of its sources), with ``1 − cos`` (default), ``mse`` or ``smooth_l1``, against
  the teacher's final-norm features (``target_norm = "batch"``: standardised per channel first).
- **Evaluation**: k-NN (and the linear probe with ``linear_probe``) on the student's CLS
  features, by default with the student's reduction plan at its final keep rate
  (``eval_reduced``), as the pruned student will be used; ``simprune finetune --ckpt RUN`` then
  fine-tunes the student backbone on labels.

The teacher is part of the checkpoint, so a run resumes and evaluates with exactly the teacher it
was trained with. ``random_teacher = true`` builds a randomly initialised frozen teacher of
``teacher.model`` instead of reading ``teacher.path``: it exists for the cost benchmarks
(``simprune bench flops|cost --framework distill`` set it when no teacher path is given), whose
figures do not depend on the teacher's weights; a note says so whenever it is built.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from simprune.data.augment import OneCropAugment, OneCropConfig
from simprune.drive import forward_reduced
from simprune.frameworks.base import FRAMEWORKS, Batch, DataInfo, Framework, Progress, StepOutput
from simprune.frameworks.parts import build_backbone, build_plans
from simprune.losses.kd import DISTANCES, LOSSES, TARGET_NORMS, kd_per_sample, standardize
from simprune.models.vit import VisionTransformer

HEADS = ("linear", "mlp")


@dataclass
class DistillConfig:
    """``[distill]`` (flat aliases ``kd_loss``, ``kd_distance``, ...): what is distilled and how.

    Attributes:
        loss: ``cls`` (the CLS token only) or ``all`` (CLS plus the retained patch tokens).
        distance: ``cos`` (``1 − cos``), ``mse`` or ``smooth_l1``.
        token_weight: weight of the token term in ``all`` (``cls + token_weight · tokens``).
        smooth_l1_beta: smooth-L1's threshold (``distance = "smooth_l1"``).
        target_norm: ``none`` (the teacher's final-norm features, as METHOD.md pins) or ``batch``
            (each channel standardised with the batch's mean and std: the CLS token over the
            images, the patch tokens over images and positions; removes the direction all final
            features share).
        head: projection from the student's width to the teacher's: ``linear`` or ``mlp``.
        head_hidden: the MLP's hidden width (0: the teacher's width).
        shared_head: one projection for the CLS and the patch tokens (``all``).
        eval_reduced: k-NN and linear probe read the student with its reduction plan at the final
            keep rate (false: the unreduced student).
        random_teacher: a randomly initialised frozen teacher of ``teacher.model`` (default: the
            student's architecture) instead of ``teacher.path``: for cost counting only.
    """

    alias_prefix: ClassVar[str] = "kd_"

    loss: str = "all"
    distance: str = "cos"
    token_weight: float = 1.0
    smooth_l1_beta: float = 1.0
    target_norm: str = "none"
    head: str = "linear"
    head_hidden: int = 0
    shared_head: bool = False
    eval_reduced: bool = True
    random_teacher: bool = False


def projection(d_in: int, d_out: int, kind: str, hidden: int = 0) -> nn.Module:
    """``linear``: one ``Linear``; ``mlp``: ``Linear-GELU-Linear`` (hidden ``hidden`` or
    ``d_out``). Weights truncated-normal (std 0.02), biases zero."""
    if kind == "linear":
        mods: list[nn.Module] = [nn.Linear(d_in, d_out)]
    else:
        h = hidden or d_out
        mods = [nn.Linear(d_in, h), nn.GELU(), nn.Linear(h, d_out)]
    for m in mods:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


_NOTED: set[str] = set()


def _note(msg: str) -> None:
    """A note on stderr, once per process (the cost benchmarks build many variants)."""
    if msg not in _NOTED:
        _NOTED.add(msg)
        print(f"simprune: note: {msg}", file=sys.stderr, flush=True)


def build_teacher(cfg: Any, student: VisionTransformer) -> VisionTransformer:
    """The frozen teacher of ``cfg`` (``[teacher]``, ``distill.random_teacher``), checked against
    the student: same image size, and the same patch grid when patch tokens are distilled."""
    from simprune.teachers.frozen import check_fits, load_frozen_teacher

    c: DistillConfig = cfg.fw
    if c.random_teacher:
        from simprune.models import create_model

        arch = cfg.teacher.model or f"{cfg.model} (the student's architecture)"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 7919)
            if cfg.teacher.model:
                teacher = create_model(cfg.teacher.model, reduce_at=(), img_size=cfg.global_size,
                                       in_chans=student.cfg.in_chans)
            else:
                teacher = VisionTransformer(replace(student.cfg, reduce_at=(), drop_path_rate=0.0))
        teacher.eval().requires_grad_(False)
        ignored = f"; teacher.path {cfg.teacher.path!r} is not read" if cfg.teacher.path else ""
        _note(f"distill: the teacher is a RANDOMLY INITIALISED frozen {arch} "
              f"(distill.random_teacher = true), for cost counting only: its features carry no "
              f"knowledge{ignored}")
    else:
        if not Path(cfg.teacher.path).exists():  # a recipe names its teacher before it is made
            raise FileNotFoundError(f"teacher.path {cfg.teacher.path!r} does not exist; train the teacher "
                                    "first (configs/cifar10_distill_teacher.toml) or pass another path")
        teacher = load_frozen_teacher(cfg.teacher.path, cfg.teacher.model, img_size=cfg.global_size)
    check_fits(teacher, student, cfg.global_size, tokens=c.loss == "all", projected=True)
    if teacher.cfg.in_chans != student.cfg.in_chans:
        raise ValueError(f"the teacher takes {teacher.cfg.in_chans}-channel images and the student "
                         f"{student.cfg.in_chans}-channel ones; both see the same images")
    return teacher


@FRAMEWORKS.register("distill")
class Distill(Framework):
    """A frozen teacher and a token-pruned student with projection heads; one branch trained."""

    branches: ClassVar[tuple[str, ...]] = ("student", "teacher")

    Config: ClassVar[type] = DistillConfig
    teachers: ClassVar[tuple[str, ...]] = ("frozen",)
    default_teacher: ClassVar[str] = "frozen"
    eval_protocol: ClassVar[str] = "knn"
    eval_branch: ClassVar[str] = "student"

    def __init__(self, backbone: VisionTransformer, teacher: VisionTransformer, plan,  # noqa: ANN001
                 cfg: DistillConfig) -> None:
        super().__init__()
        d_s, d_t = backbone.embed_dim, teacher.embed_dim
        parts: dict[str, nn.Module] = {"backbone": backbone,
                                       "cls_head": projection(d_s, d_t, cfg.head, cfg.head_hidden)}
        if cfg.loss == "all" and not cfg.shared_head:
            parts["token_head"] = projection(d_s, d_t, cfg.head, cfg.head_hidden)
        self.student = nn.ModuleDict(parts)
        self.teacher = nn.ModuleDict({"backbone": teacher}).eval()
        self.plan = plan
        self.opts = cfg

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001 - TrainConfig
        super().check(cfg)
        c: DistillConfig = cfg.fw
        if c.loss not in LOSSES:
            raise ValueError(f"distill.loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
        if c.distance not in DISTANCES:
            raise ValueError(f"distill.distance must be one of {', '.join(DISTANCES)}, got {c.distance!r}")
        if c.head not in HEADS:
            raise ValueError(f"distill.head must be one of {', '.join(HEADS)}, got {c.head!r}")
        if c.token_weight < 0 or c.head_hidden < 0:
            raise ValueError(f"distill.token_weight and head_hidden must be >= 0, got {c.token_weight}, "
                             f"{c.head_hidden}")
        if not c.smooth_l1_beta > 0:
            raise ValueError(f"distill.smooth_l1_beta must be > 0, got {c.smooth_l1_beta}")
        if c.target_norm not in TARGET_NORMS:
            raise ValueError(f"distill.target_norm must be one of {', '.join(TARGET_NORMS)}, got "
                             f"{c.target_norm!r}")
        from simprune.dist import world_size

        if c.target_norm == "batch" and cfg.batch_size // max(1, world_size()) < 2:
            raise ValueError("distill.target_norm = 'batch' standardises the teacher's CLS features "
                             "over the images of a batch: use batch_size >= 2 per process")
        if c.random_teacher:
            return
        if not cfg.teacher.path:
            raise ValueError("framework 'distill' needs a frozen teacher: set teacher.path (--teacher-path) "
                             "to a simprune run folder, its checkpoint.pt or a timm-named .safetensors "
                             "file with teacher.model (configs/cifar10_distill_teacher.toml makes one); "
                             "for cost counting only, distill.random_teacher = true builds a random one")

    @classmethod
    def bench_defaults(cls, given: Collection[str]) -> dict[str, Any]:
        """The cost benchmarks count without a teacher file: a random frozen teacher of
        ``teacher.model`` (default: the student's architecture) unless a path is given."""
        if "teacher.path" in given or "distill.random_teacher" in given:
            return {}
        return {"distill.random_teacher": True}

    @classmethod
    def build(cls, cfg, data: DataInfo) -> Distill:  # noqa: ANN001 - TrainConfig
        plan, _ = build_plans(cfg)  # the teacher is never reduced
        backbone = build_backbone(cfg, data)
        teacher = build_teacher(cfg, backbone)
        return cls(backbone, teacher, plan, cfg.fw)

    def build_augment(self, cfg, data: DataInfo) -> nn.Module:  # noqa: ANN001
        return OneCropAugment(OneCropConfig(size=cfg.global_size, scale=tuple(cfg.global_scale),
                                            mean=data.mean, std=data.std))

    def train(self, mode: bool = True) -> Distill:
        """The student's mode; the teacher stays in eval mode (no drop-path, fixed features)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @property
    def token_head(self) -> nn.Module:
        return self.student["token_head"] if "token_head" in self.student else self.student["cls_head"]

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        x, c = batch.views.globals[0], self.opts
        teacher = self.teacher["backbone"]
        teacher.eval()
        with torch.no_grad():
            t = teacher.forward_features(x)  # [B, 1 + N0, Dt], dense
            t_cls, t_patches = t.x[:, 0], t.patches
            if c.target_norm == "batch":
                t_cls, t_patches = standardize(t_cls, (0,)), standardize(t_patches, (0, 1))
        keep = self.plan.keep_rate(progress.t)
        out = forward_reduced(self.student["backbone"], x, self.plan.reducer, keep)
        s = out.state
        pred_cls = self.student["cls_head"](s.x[:, 0])
        if c.loss == "all":
            parts = kd_per_sample(pred_cls, t_cls, self.token_head(s.patches), t_patches, s.ids,
                                  s.source, c.distance, c.token_weight, c.smooth_l1_beta)
        else:
            parts = kd_per_sample(pred_cls, t_cls, kind=c.distance, beta=c.smooth_l1_beta)
        per = parts["total"]
        logs: dict[str, Tensor | float] = {"keep_rate": keep, "kd_cls": parts["cls"].detach().mean()}
        if "tokens" in parts:
            logs["kd_tokens"] = parts["tokens"].detach().mean()
            logs["kd_tokens_distilled"] = parts["valid"].float().mean()
        for i, pt in enumerate(out.points, start=1):
            logs[f"tokens/p{i}"] = float(pt.tokens_out)
        return StepOutput(per.mean(), per.detach(), logs, out.points)

    def eval_features(self, branch: str | None = None) -> Callable[[Tensor], Tensor] | None:
        """``images -> [B, D]`` CLS features for evaluation: the student with its reduction plan at
        the final keep rate (``eval_reduced``); ``None`` (the unreduced backbone) otherwise."""
        branch = branch or self.eval_branch
        if branch != "student" or not self.opts.eval_reduced or self.plan.reducer is None:
            return None
        backbone, reducer, keep = self.student["backbone"], self.plan.reducer, self.plan.keep_rate(1.0)
        return lambda images: forward_reduced(backbone, images, reducer, keep).cls
