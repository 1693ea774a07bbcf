"""MAE (He et al., 2022; METHOD.md "MAE"): masked autoencoding of pixels, and the base PCAE builds on.

One global view per image (random-resized crop of scale ``global_scale``, MAE's 0.2–1, and a flip;
no colour operations). Per sample, ``mask_ratio`` of the patches are hidden at reduction point 0
(:mod:`simprune.drive.masking`: MAE's argsort of uniform noise, drawn from ``(seed, step, dataset
row)`` so that resumed and multi-process runs mask as one process does). The encoder sees CLS +
the visible patches; the decoder (:class:`~simprune.models.decoder.MAEDecoder`, ``decoder_depth``
blocks of ``decoder_dim`` width) predicts the pixels of every masked patch; the loss is the mean
squared error on the masked patches only, against per-patch standardised pixels
(``norm_pix_loss``; :mod:`simprune.losses.mim`). AdamW betas (0.9, 0.95) as the reference.

Evaluation (``eval_protocol = "knn"``: weighted k-NN, and a linear probe with ``linear_probe``) reads
the encoder on the whole, unmasked image, and by default pools the **mean of the final-norm patch
tokens** (``eval_pool = "mean"``), not the CLS token: no MAE or PCAE loss trains the CLS token to
summarise the image (it only reaches the decoder as one more context token), whereas every patch
token is trained to carry what the decoder needs; MAE's own fine-tuning pools the patch tokens the
same way (its ``global_pool``). ``eval_pool = "cls"`` reads the CLS token instead.

The encoder takes no ``[reducer]``: masking is its reduction. Fine-tune a trained encoder with
``simprune finetune`` (optionally with PCAE's downstream reducer ``pcae_ptr``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from simprune.config import TrainConfig, make_config
from simprune.data.augment import OneCropAugment, OneCropConfig
from simprune.drive.masking import Masking, check_mask_ratio, encode_visible, random_masking
from simprune.drive.single import PointRecord
from simprune.frameworks.base import (
    DENSE,
    FRAMEWORKS,
    Batch,
    DataInfo,
    Framework,
    Progress,
    StepOutput,
)
from simprune.frameworks.parts import build_backbone
from simprune.losses.mim import mae_loss_per_sample, pixel_targets
from simprune.models.decoder import MAEDecoder, decoder_size
from simprune.models.vit import VisionTransformer
from simprune.tokens import TokenState

EVAL_POOLS = ("mean", "cls")
#: AdamW betas of the MAE and PCAE references
BETAS = (0.9, 0.95)


@dataclass
class MAEConfig:
    """``[mae]``: masking, decoder and loss.

    Attributes:
        mask_ratio: share of the patches hidden from the encoder (``int(N·(1 − r))`` stay visible).
        decoder_depth, decoder_dim, decoder_heads: the decoder's blocks, width and heads (the CPU
            recipe: 8 × 64 with 4 heads, the 2/3 width ratio of ViT-B's 768 → 512).
        norm_pix_loss: standardise each target patch over its own pixels.
        eval_pool: features k-NN and the linear probe read: ``mean`` of the patch tokens or ``cls``.
    """

    mask_ratio: float = 0.75
    decoder_depth: int = 8
    decoder_dim: int = 64
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    eval_pool: str = "mean"


class MaskedAutoencoder(Framework):
    """What MAE and PCAE share: masking at point 0, the student encoder and the decoder."""

    #: the encoder's only reduction is masking; ``[reducer]`` stays dense
    reducers: ClassVar[tuple[str, ...] | None] = ()
    cost_masks: ClassVar[bool] = True
    cost_logs: ClassVar[tuple[str, ...]] = ("decoded",)

    def __init__(self, backbone: VisionTransformer, decoder: MAEDecoder, mask_ratio: float,
                 seed: int = 0, eval_pool: str = "mean") -> None:
        super().__init__()
        backbone.set_reduce_at((0,))
        self.student = nn.ModuleDict({"backbone": backbone, "decoder": decoder})
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.eval_pool = eval_pool

    @classmethod
    def check(cls, cfg) -> None:  # noqa: ANN001 - TrainConfig
        if cfg.reducer.method != DENSE:  # before the base's generic refusal: say why
            raise ValueError(f"framework {cfg.framework!r} masks its encoder's input at point 0 and "
                             f"reduces no other tokens: remove the [reducer] section (method "
                             f"{cfg.reducer.method!r})")
        super().check(cfg)
        c = cfg.fw
        check_mask_ratio(c.mask_ratio, f"{cfg.framework}.mask_ratio")
        for key in ("decoder_depth", "decoder_dim", "decoder_heads"):
            if getattr(c, key) < (0 if key == "decoder_depth" else 1):
                raise ValueError(f"{cfg.framework}.{key} must be >= "
                                 f"{0 if key == 'decoder_depth' else 1}, got {getattr(c, key)}")
        if c.decoder_dim % c.decoder_heads or c.decoder_dim % 4:
            raise ValueError(f"{cfg.framework}.decoder_dim {c.decoder_dim} must be divisible by "
                             f"decoder_heads ({c.decoder_heads}) and by 4 (2-D sin-cos positions)")
        if c.eval_pool not in EVAL_POOLS:
            raise ValueError(f"{cfg.framework}.eval_pool must be one of {', '.join(EVAL_POOLS)}, "
                             f"got {c.eval_pool!r}")

    @classmethod
    def cost_reference(cls, cfg: TrainConfig) -> TrainConfig:
        """The step cost tables compare this one with: MAE at mask 0.75 with the same encoder and
        the same decoder (the paper's baseline; its 2.25× puts PCAE at 0.85 against it)."""
        c = cfg.fw
        return make_config(cfg.to_dict(), {
            "framework": "mae", "teacher.kind": "none", "mae.mask_ratio": 0.75,
            "mae.decoder_depth": c.decoder_depth, "mae.decoder_dim": c.decoder_dim,
            "mae.decoder_heads": c.decoder_heads})

    @classmethod
    def cost_label(cls, cfg: TrainConfig) -> str:
        """``"mae mask 0.75, decoder 8x64"``: what cost tables print for a setting."""
        c = cfg.fw
        return f"{cfg.framework} mask {c.mask_ratio:g}, decoder {c.decoder_depth}x{c.decoder_dim}"

    @classmethod
    def cost_mask_ratio(cls, cfg: TrainConfig) -> float:
        return float(cfg.fw.mask_ratio)

    @classmethod
    def cost_fields(cls, cfg: TrainConfig) -> dict[str, Any]:
        c = cfg.fw
        return {"mask_ratio": c.mask_ratio, "decoder": f"{c.decoder_depth}x{c.decoder_dim}",
                "decoder_depth": c.decoder_depth, "decoder_dim": c.decoder_dim}

    @staticmethod
    def make_decoder(cfg, backbone: VisionTransformer, out_dim: int) -> MAEDecoder:  # noqa: ANN001
        c = cfg.fw
        return MAEDecoder(backbone.embed_dim, backbone.grid_size, out_dim, c.decoder_dim,
                          c.decoder_depth, c.decoder_heads)

    def build_augment(self, cfg, data: DataInfo) -> nn.Module:  # noqa: ANN001
        return OneCropAugment(OneCropConfig(size=cfg.global_size, scale=tuple(cfg.global_scale),
                                            mean=data.mean, std=data.std))

    def param_groups(self) -> list[dict[str, Any]]:
        return [{**g, "betas": BETAS} for g in super().param_groups()]

    @property
    def backbone(self) -> VisionTransformer:
        return self.student["backbone"]

    @property
    def decoder(self) -> MAEDecoder:
        return self.student["decoder"]

    @property
    def decoder_size(self) -> str:
        """``"8x64"`` (blocks x width)."""
        return decoder_size(self.decoder)

    def mask(self, images: Tensor, batch: Batch, progress: Progress) -> Masking:
        """This step's split of every sample's patch grid."""
        n = self.backbone.num_patches_for(*images.shape[-2:])
        return random_masking(batch.index, progress.step, self.seed, n, self.mask_ratio,
                              images.device)

    def encode(self, images: Tensor, masking: Masking) -> tuple[TokenState, list[PointRecord]]:
        """The student encoder on CLS + the visible patches (final norm)."""
        return encode_visible(self.backbone, images, masking.visible)


@FRAMEWORKS.register("mae")
class MAE(MaskedAutoencoder):
    """Masked autoencoder: reconstruct the pixels of the masked patches."""

    Config: ClassVar[type] = MAEConfig

    def __init__(self, backbone: VisionTransformer, decoder: MAEDecoder, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True, seed: int = 0, eval_pool: str = "mean") -> None:
        super().__init__(backbone, decoder, mask_ratio, seed, eval_pool)
        self.norm_pix_loss = norm_pix_loss

    @classmethod
    def build(cls, cfg, data: DataInfo) -> MAE:  # noqa: ANN001 - TrainConfig
        c: MAEConfig = cfg.fw
        backbone = build_backbone(cfg, data)
        p = backbone.cfg.patch_size
        decoder = cls.make_decoder(cfg, backbone, p * p * backbone.cfg.in_chans)
        return cls(backbone, decoder, c.mask_ratio, c.norm_pix_loss, cfg.seed, c.eval_pool)

    def predict_pixels(self, images: Tensor, masking: Masking) -> tuple[Tensor, list[PointRecord]]:
        """``[B, M, p²·C]`` predictions at ``masking.masked`` (row ``j``: patch ``masked[:, j]``)."""
        enc, records = self.encode(images, masking)
        return self.decoder(enc.x, masking.visible, masking.masked), records

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:  # type: ignore[override]
        x = batch.views.globals[0]
        masking = self.mask(x, batch, progress)
        pred, records = self.predict_pixels(x, masking)
        target = pixel_targets(x, self.backbone.cfg.patch_size, masking.masked, self.norm_pix_loss)
        per = mae_loss_per_sample(pred, target)
        logs: dict[str, Tensor | float] = {"visible": float(masking.visible.shape[1]),
                                           "decoded": float(masking.masked.shape[1])}
        return StepOutput(per.mean(), per.detach(), logs, records)


__all__ = ["BETAS", "EVAL_POOLS", "MAE", "MAEConfig", "MaskedAutoencoder"]
