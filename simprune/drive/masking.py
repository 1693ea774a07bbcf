"""Per-sample random masking at reduction point 0 (MAE, PCAE), and the drivers around it.

Masking is not a reducer: it splits the patch grid of every sample in two complementary sets, the
*visible* patches (the student encoder's input, after the CLS token) and the *masked* ones (the
positions MAE reconstructs; PCAE's EMA teacher sees exactly these, without a CLS token). A reducer
returns one set; masking needs both, drawn from the same noise. So masking is a function here and
the frameworks drive their backbones through point 0 with it (:func:`encode_visible`,
:func:`encode_masked`); the backbone itself knows nothing about masking (``stages()`` pauses at
point 0 and takes the state it is sent back).

The noise is MAE's: uniform per patch, argsort, the first ``K`` visible. It is drawn per sample from
a generator seeded by ``(seed, step, dataset row)`` (:func:`mask_noise`), so a sample's mask depends
neither on the process nor on the rest of its batch: a resumed run and a run split over several
processes mask every sample as one uninterrupted process does. Both id sets are returned sorted
(ascending original patch id); a transformer with position embeddings does not care about the
order, and sorted ids make records and tests readable.

``K = int(N · (1 − mask_ratio))`` as in the MAE and PCAE reference code (64 patches: 16 visible at
mask 0.75, 9 at 0.85, 6 at 0.90), at least one visible and one masked patch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from simprune.drive.single import PointRecord, finish
from simprune.models.vit import ReductionPoint, VisionTransformer
from simprune.tokens import TokenState, gather_patches

#: 64-bit mixing constants (splitmix64's) that spread (seed, step, row) over generator seeds
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def check_mask_ratio(mask_ratio: float, name: str = "mask_ratio") -> None:
    """Raise ``ValueError`` unless ``0 <= mask_ratio < 1``."""
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1), got {mask_ratio!r}")
    if not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the share of patches hidden from the encoder), "
                         f"got {mask_ratio!r}")


def num_visible(n: int, mask_ratio: float) -> int:
    """Visible patches out of ``n``: ``int(n · (1 − mask_ratio))`` (MAE's rule), in ``[1, n − 1]``."""
    check_mask_ratio(mask_ratio)
    if n < 2:
        raise ValueError(f"masking needs at least 2 patches, got {n}")
    k = int(round(n * (1.0 - float(mask_ratio)), 9))  # 64 · 0.25 is 16, not 15.999…
    return min(n - 1, max(1, k))


def _seed_for(seed: int, step: int, row: int) -> int:
    x = (seed * _MIX[0] + step * _MIX[1] + row * _MIX[2] + 1) & (2**64 - 1)
    x ^= x >> 31
    x = (x * _MIX[1]) & (2**64 - 1)
    x ^= x >> 29
    return x & (2**63 - 1)


def mask_noise(index: Tensor, step: int, seed: int, n: int) -> Tensor:
    """``[B, n]`` uniform noise on the CPU, row ``b`` from a generator seeded by
    ``(seed, step, index[b])``: the same sample at the same step always gets the same noise."""
    gen = torch.Generator()
    rows = []
    for row in index.detach().cpu().tolist():
        gen.manual_seed(_seed_for(int(seed), int(step), int(row)))
        rows.append(torch.rand(n, generator=gen))
    return torch.stack(rows) if rows else torch.empty(0, n)


@dataclass
class Masking:
    """One batch's split of the patch grid.

    Attributes:
        visible: ``[B, K]`` original patch ids the encoder sees, ascending.
        masked: ``[B, N − K]`` the others, ascending.
    """

    visible: Tensor
    masked: Tensor

    @property
    def num_patches(self) -> int:
        return self.visible.shape[1] + self.masked.shape[1]


def split_by_noise(noise: Tensor, k: int) -> Masking:
    """MAE's split: the ``k`` patches with the lowest noise are visible (a stable argsort, so equal
    noise values rank the lower patch id first)."""
    order = noise.argsort(dim=1, stable=True)
    return Masking(order[:, :k].sort(dim=1).values, order[:, k:].sort(dim=1).values)


def random_masking(index: Tensor, step: int, seed: int, n: int, mask_ratio: float,
                   device: torch.device | str | None = None) -> Masking:
    """Per-sample random masking of ``n`` patches for the dataset rows ``index`` at ``step``."""
    k = num_visible(n, mask_ratio)
    m = split_by_noise(mask_noise(index, step, seed, n), k)
    if device is not None:
        m = Masking(m.visible.to(device), m.masked.to(device))
    return m


def drop_prefix(state: TokenState) -> TokenState:
    """The same patch tokens without the prefix (CLS): PCAE's teacher sees patches only."""
    p = state.num_prefix
    return TokenState(state.x[:, p:], state.ids, state.source, None if state.size is None else
                      state.size[:, p:], None, num_prefix=0)


#: a reduction at a point after point 0: ``point -> reduced state`` (``None``: unchanged)
PointFn = Callable[[ReductionPoint], "TokenState | None"]


def _drive(backbone: VisionTransformer, images: Tensor, at_zero: Callable[[TokenState], TokenState],
           later: PointFn | None = None) -> tuple[TokenState, list[PointRecord]]:
    if not backbone.reduce_at or backbone.reduce_at[0] != 0:
        raise ValueError(f"masking happens at point 0, but the backbone reduces at "
                         f"{list(backbone.reduce_at)}; set_reduce_at((0, ...)) first")
    gen = backbone.stages(images)
    point, final = finish(gen, None)
    records: list[PointRecord] = []
    while point is not None:
        before = point.state
        if point.block == 0:
            after = at_zero(before)
        else:
            after = later(point) if later is not None else None
        shown = before if after is None else after
        records.append(PointRecord(point.block, before.num_patches, shown.num_patches, shown.ids,
                                   shown.source))
        point, final = finish(gen, after)
    return final, records


def encode_visible(backbone: VisionTransformer, images: Tensor, visible: Tensor,
                   later: PointFn | None = None) -> tuple[TokenState, list[PointRecord]]:
    """The encoder on CLS + the ``visible`` patches (MAE's and PCAE's student).

    Returns the final-norm state ``[B, 1 + K, D]`` (its ``ids`` are ``visible``) and a record per
    reduction point (point 0: ``N -> K``). ``later`` may reduce at the backbone's other points.
    """
    return _drive(backbone, images, lambda s: gather_patches(s, visible), later)


def encode_masked(backbone: VisionTransformer, images: Tensor, masked: Tensor,
                  later: PointFn | None = None) -> tuple[TokenState, list[PointRecord]]:
    """The encoder on the ``masked`` patches only, without CLS (PCAE's teacher).

    ``later(point)`` reduces at the backbone's points after point 0 (the teacher's
    progressive dropping). Returns the final-norm state ``[B, M, D]`` (``num_prefix`` 0; ``ids``:
    the surviving original patch ids) and a record per point.
    """
    return _drive(backbone, images, lambda s: drop_prefix(gather_patches(s, masked)), later)


def token_counts(records: Sequence[PointRecord]) -> list[int]:
    """Patch tokens after each point: ``[after point 0, after the next, ...]``."""
    return [r.tokens_out for r in records]


__all__ = ["Masking", "check_mask_ratio", "drop_prefix", "encode_masked", "encode_visible",
           "mask_noise", "num_visible", "random_masking", "split_by_noise", "token_counts"]
