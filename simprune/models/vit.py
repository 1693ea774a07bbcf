"""Vision Transformer (ViT/DeiT) whose forward pauses at reduction points.

The backbone knows nothing about any reduction method. :meth:`VisionTransformer.stages` is a
generator: it runs the blocks and, at every reduction point, yields a :class:`ReductionPoint`
(tokens plus whatever attention extras were asked for) and receives back the reduced
:class:`~simprune.tokens.TokenState` (or ``None`` to continue unchanged). A one-branch driver
(:func:`simprune.drive.forward_reduced`) and the two-branch lock-step driver
(:func:`simprune.drive.lockstep_forward`) advance these generators.
"""

from __future__ import annotations

import numbers
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simprune.models.init import check_init_options, init_deit, init_moco, sincos_pos_embed
from simprune.models.layers import AttentionExtras, Block, PatchEmbed
from simprune.tokens import TokenState, initial_state


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT. ``reduce_at`` are 1-indexed block numbers."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 0
    drop_path_rate: float = 0.0
    reduce_at: tuple[int, ...] = (4, 7, 10)
    init: str = "deit"  # deit | moco (see simprune.models.init)
    pos_embed: str = "learned"  # learned | sincos (fixed, not trained)
    freeze_patch_embed: bool = False  # MoCo v3's frozen random patch projection
    point_placement: str = "attention"  # where points 1..depth sit: see POINT_PLACEMENTS


#: Where reduction point ``b >= 1`` sits in block ``b``: ``attention``, after the block's attention
#: residual and before its MLP (SimPrune, EViT, ToMe: the MLP then runs on the reduced tokens);
#: ``block``, after the whole block (PCAE's teacher and its downstream reduction: the paper's Eq. 2
#: reduces the block's output, so the block's MLP still runs on every token).
POINT_PLACEMENTS = ("attention", "block")


def check_point_placement(placement: str) -> str:
    """``placement`` if it is one of :data:`POINT_PLACEMENTS`, else a ``ValueError`` naming them."""
    if placement not in POINT_PLACEMENTS:
        raise ValueError(f"point placement {placement!r} is not one of {', '.join(POINT_PLACEMENTS)}")
    return placement


def check_reduce_at(reduce_at: Sequence[int], depth: int) -> tuple[int, ...]:
    """Validate reduction points: integers in ``0..depth``, strictly increasing.

    Point ``b >= 1`` lies in block ``b``: after its attention and before its MLP, or after the whole
    block, as the backbone's ``placement`` says (:data:`POINT_PLACEMENTS`); point 0 lies after the
    patch embedding, before block 1 (masking, input-level dropping), where no attention has been
    computed yet.
    """
    raw = tuple(reduce_at)
    not_int = [b for b in raw if isinstance(b, bool) or not isinstance(b, numbers.Integral)]
    if not_int:
        raise ValueError(f"reduction blocks must be integers in 0..{depth}, got {not_int}")
    pts = tuple(int(b) for b in raw)
    bad = [b for b in pts if not 0 <= b <= depth]
    if bad:
        raise ValueError(f"reduction blocks {bad} are outside 0..{depth} (blocks are 1-indexed; "
                         "0 is the point after the patch embedding)")
    if any(a >= b for a, b in zip(pts, pts[1:])):
        raise ValueError(
            f"reduction blocks must be sorted and unique, got {list(pts)}; e.g. {sorted(set(pts))}"
        )
    return pts


@dataclass
class ReductionPoint:
    """A paused forward at a reduction point (in ``block``, before its MLP or after the whole
    block; or, for block 0, after the patch embedding, with no attention extras).

    Attributes:
        block: 1-indexed block number, or 0 for the point before block 1.
        index: 0-indexed position among the model's reduction points.
        state: the tokens after the block's attention residual (``after_block``: after its MLP).
        extras: attention extras the driver asked for (CLS attention row, q/k), from the
            attention of ``block`` in either placement.
        after_block: whether the point follows the block's MLP (placement ``block``).
    """

    block: int
    index: int
    state: TokenState
    extras: AttentionExtras
    after_block: bool = False


class VisionTransformer(nn.Module):
    """ViT with timm-compatible parameter names and reduction points."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(
                f"img_size {cfg.img_size} is not divisible by patch_size {cfg.patch_size}"
            )
        check_init_options(cfg.init, cfg.pos_embed, "ViT ")
        self.cfg = cfg
        self.reduce_at = check_reduce_at(cfg.reduce_at, cfg.depth)
        self.placement = check_point_placement(cfg.point_placement)
        self.num_prefix_tokens = 1
        self.embed_dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        grid = cfg.img_size // cfg.patch_size
        self.grid_size = (grid, grid)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, cfg.embed_dim))
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, rates[i])
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``cfg.init`` says (DeiT's by default); a ``sincos`` position embedding
        is filled and frozen, and ``freeze_patch_embed`` stops the patch projection's gradient."""
        (init_moco if self.cfg.init == "moco" else init_deit)(self)
        if self.cfg.pos_embed == "sincos":
            with torch.no_grad():
                self.pos_embed.copy_(sincos_pos_embed(self.grid_size, self.embed_dim))
            self.pos_embed.requires_grad_(False)
        if self.cfg.freeze_patch_embed:
            self.patch_embed.requires_grad_(False)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def set_reduce_at(self, reduce_at: Sequence[int], placement: str | None = None) -> None:
        """Change the reduction blocks (validated), and their placement when given."""
        self.reduce_at = check_reduce_at(reduce_at, self.depth)
        if placement is not None:
            self.placement = check_point_placement(placement)

    def num_patches_for(self, height: int, width: int) -> int:
        """Patch tokens for an input of ``height × width`` pixels."""
        p = self.cfg.patch_size
        return (height // p) * (width // p)

    def interpolate_pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """``[1, 1 + gh·gw, D]`` position embedding for a patch grid (bicubic for other sizes)."""
        if grid == self.grid_size:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        gh, gw = self.grid_size
        patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def embed(self, images: Tensor) -> TokenState:
        """``images: [B, C, H, W]`` -> initial ``TokenState`` ``[B, 1 + N, D]``."""
        x, grid = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return initial_state(x + self.interpolate_pos_embed(grid), self.num_prefix_tokens)

    def stages(
        self, images: Tensor, need: frozenset[str] = frozenset()
    ) -> Generator[ReductionPoint, TokenState | None, TokenState]:
        """Run the blocks, pausing at every reduction point.

        Yields a :class:`ReductionPoint` per point and receives the reduced state (``None`` keeps
        it). Returns the final normalised state. ``need`` ⊆ {"cls_attn", "qk"} says which
        attention extras to compute at the points (nowhere else). With placement ``block`` a point
        follows its block's MLP; the extras are still those of the block's attention.
        """
        state = self.embed(images)
        points = {b: i for i, b in enumerate(self.reduce_at)}
        if 0 in points:
            reduced = yield ReductionPoint(0, points[0], state, AttentionExtras())
            if reduced is not None:
                state = reduced
        after_block = self.placement == "block"
        for number, block in enumerate(self.blocks, start=1):
            if number not in points:
                state = block(state)
                continue
            state, extras = block.attend(state, need)
            if after_block:
                state = block.feed_forward(state)
            reduced = yield ReductionPoint(number, points[number], state, extras, after_block)
            if reduced is not None:
                state = reduced
            if not after_block:
                state = block.feed_forward(state)
        return state.with_x(self.norm(state.x))

    def forward_features(self, images: Tensor) -> TokenState:
        """Unreduced forward to the final norm."""
        gen = self.stages(images)
        try:
            while True:
                gen.send(None)
        except StopIteration as stop:
            return stop.value

    def forward_head(self, state: TokenState) -> Tensor:
        """CLS token -> head (identity when ``num_classes == 0``)."""
        return self.head(state.x[:, 0])

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))
