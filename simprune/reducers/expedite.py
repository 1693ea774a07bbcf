"""``expedite``: Expediting ViT (Liang et al. 2022a, "Hourglass"), the baseline of SimPrune's A.4.

Non-parametric, as SimPrune (METHOD.md "Expediting ViT"). At a clustering point the patch tokens
become ``K`` cluster centres; at an optional later reconstruction point every token comes back as a
weighted sum of the centres, so a dense head still sees every position.

**Clustering** (``K = round(rate · N)``, or the option ``clusters``):

- *Initial centres*: the average pool of the patch grid into ``h × w = K`` cells. When ``K`` has a
  factor pair that fits the grid, the one closest to a square is used (``K = 36`` on 8×8: 6×6 cells,
  ``K = 32``: 4×8); otherwise (the "closest grid", e.g. ``K = 45``) ``h = round(√K)`` bands of rows,
  ``K`` split as evenly as possible over them. Cells are a balanced partition of the tokens, read
  in raster order of their original positions (``ids``): ``h`` bands of consecutive tokens, each
  band split into its cells by column; on a full grid whose sides the cell counts divide, exactly
  ``adaptive_avg_pool2d``. The same rule clusters a token set that is not a full grid (a second
  clustering point), and no cell is ever empty.
- ``n_iters`` (5) rounds of local soft k-means: token ``i``'s affinity to the centres whose cell is
  within ``r = window // 2`` cells (window 5) of its own cell (the reference's label window) is
  ``softmax_j(−‖x_i − c_j‖² / τ)``; each centre becomes the affinity-weighted mean of the tokens,
  with the affinities detached as in the reference (gradients reach the centres through the
  tokens). ``τ = 100`` is the reference's multiplier 0.01. CLS is never clustered.
- Bookkeeping: each centre carries the id of one original patch of its cell (the middle one of the
  cell in column-major order), so ``ids`` stay unique real patches; ``source`` sends every other
  patch to its nearest centre (over all centres) after the last round (the reference's hard
  labels).

**Reconstruction** at block ``recon_at`` (option; 0: none, the SSL default): every token that
arrived at the clustering point is rebuilt as ``Σ_j w_ij c_j`` from the centres after block β, with
``w_ij ∝ exp(−‖x_i − c_j‖² / τ')`` between the token and the centres *at the clustering point*,
kept for its ``recon_k`` (3) nearest centres and L1-normalised (a softmax over those ``k``). The
restored state has the arriving tokens' ``ids`` and ``source`` again. What it needs travels in
``TokenState.restore``. At the reconstruction point the keep rate is not used (it must be below 1
there, or the driver skips the point).

Cost: every distance and weighted mean is a batched matrix product over all ``N × K`` (token,
centre) pairs (the window is a mask, as in the reference), so the FLOP counter sees the clustering
iterations: ``(2 + 2·n_iters)·N·K·D`` multiply-adds per image and clustering point (initial pool,
``n_iters`` × (distances, means), final distances for the hard labels and the reconstruction
weights), plus ``N·K·D`` at reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.tokens import TokenState


def cluster_layout(k: int, grid: tuple[int, int]) -> tuple[int, ...]:
    """Cells per band of rows: ``(w,) * h`` for the most square ``h × w = K`` that fits ``grid``,
    else ``h = round(√K)`` bands sharing ``K`` as evenly as possible (the first bands one more)."""
    h_grid, w_grid = grid
    if not 1 <= k <= h_grid * w_grid:
        raise ValueError(f"expedite: K = {k} clusters for a {h_grid}x{w_grid} grid; valid: 1 to "
                         f"{h_grid * w_grid}")
    pairs = [(h, k // h) for h in range(1, k + 1) if k % h == 0 and h <= h_grid and k // h <= w_grid]
    if pairs:
        h, w = min(pairs, key=lambda p: (abs(p[0] - p[1]), p[0]))
        return (w,) * h
    h = max(1, min(h_grid, k, round(math.sqrt(k))))
    base, extra = divmod(k, h)
    return (base + 1,) * extra + (base,) * (h - extra)


@dataclass(frozen=True)
class _Partition:
    """Host constants of the balanced partition of ``n`` tokens into ``layout``'s cells, indexed by
    a token's rank ``q`` in (band, column, row) order."""

    band_of_sorted: tuple[int, ...]  # band of the token at raster rank s
    band_start: tuple[int, ...]  # first (band, column, row) rank of each band
    cell_of_rank: tuple[int, ...]  # cell of the token at (band, column, row) rank q
    rep_rank: tuple[int, ...]  # (band, column, row) rank of each cell's representative
    cell_band: tuple[int, ...]  # band of each cell
    cell_col: tuple[int, ...]  # column (within its band) of each cell


@lru_cache(maxsize=256)
def _partition(n: int, layout: tuple[int, ...]) -> _Partition:
    k = sum(layout)
    cum = [0]
    for w in layout:
        cum.append(cum[-1] + w)
    starts = [n * c // k for c in cum]  # band r holds raster ranks [starts[r], starts[r + 1])
    band_of_sorted, cell_of_rank, rep_rank, cell_band, cell_col = [], [], [], [], []
    for r, w in enumerate(layout):
        size = starts[r + 1] - starts[r]
        band_of_sorted += [r] * size
        bounds = [-(-g * size // w) for g in range(w + 1)]  # ceil(g·size/w)
        for g in range(w):
            cell_of_rank += [cum[r] + g] * (bounds[g + 1] - bounds[g])
            rep_rank.append(starts[r] + bounds[g] + (bounds[g + 1] - bounds[g] - 1) // 2)
            cell_band.append(r)
            cell_col.append(g)
    return _Partition(tuple(band_of_sorted), tuple(starts[:-1]), tuple(cell_of_rank),
                      tuple(rep_rank), tuple(cell_band), tuple(cell_col))


def grid_of(state: TokenState) -> tuple[int, int]:
    """The original (square) patch grid of a state, from ``source``'s width."""
    n0 = state.source.shape[1]
    side = math.isqrt(n0)
    if side * side != n0:
        raise ValueError(f"expedite needs a square patch grid, got {n0} patches")
    return side, side


def cell_assignment(ids: Tensor, grid: tuple[int, int], layout: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Initial cell of every token and each cell's representative token.

    Args:
        ids: ``[B, N]`` original patch ids (``>= 0``); grid: the original ``(H, W)``.
    Returns:
        ``cell: [B, N]`` cell index in ``[0, K)`` and ``rep: [B, K]`` position (among the ``N``
        tokens) of each cell's representative.
    """
    b, n = ids.shape
    part = _partition(n, layout)
    dev = ids.device
    h_grid, w_grid = grid
    raster = ids.argsort(dim=1, stable=True)  # tokens in raster order of their positions
    band = torch.empty_like(ids)
    band.scatter_(1, raster, torch.tensor(part.band_of_sorted, device=dev).expand(b, n))
    y, x = ids // w_grid, ids % w_grid
    key = (band * w_grid + x) * h_grid + y
    order = key.argsort(dim=1, stable=True)  # (band, column, row) order
    cell = torch.empty_like(ids)
    cell.scatter_(1, order, torch.tensor(part.cell_of_rank, device=dev).expand(b, n))
    rep = order[:, torch.tensor(part.rep_rank, device=dev)]
    return cell, rep


def window_mask(cell: Tensor, layout: tuple[int, ...], radius: int) -> Tensor:
    """``[B, N, K]`` bool: centre ``j`` lies within ``radius`` cells (bands and columns) of token
    ``i``'s cell."""
    part = _partition(cell.shape[1], layout)
    dev = cell.device
    c_band = torch.tensor(part.cell_band, device=dev)
    c_col = torch.tensor(part.cell_col, device=dev)
    t_band, t_col = c_band[cell], c_col[cell]  # [B, N]
    return ((t_band[..., None] - c_band).abs() <= radius) & ((t_col[..., None] - c_col).abs() <= radius)


def sq_distances(x: Tensor, c: Tensor) -> Tensor:
    """``[B, N, K]`` squared distances ``‖x_i − c_j‖²`` (one batched product, clamped at 0)."""
    d = (x * x).sum(-1, keepdim=True) + (c * c).sum(-1).unsqueeze(1) - 2 * torch.bmm(x, c.transpose(1, 2))
    return d.clamp_min(0.0)


def soft_kmeans(x: Tensor, cell: Tensor, window: Tensor, k: int, n_iters: int, tau: float) -> Tensor:
    """Local soft k-means from the cells' average pool.

    Args:
        x: ``[B, N, D]`` fp32 tokens; cell: ``[B, N]`` initial cell; window: ``[B, N, K]`` allowed
        (token, centre) pairs (every token's own cell included); k: ``K``.
    Returns:
        ``[B, K, D]`` the centres after ``n_iters`` rounds.
    """
    member = torch.nn.functional.one_hot(cell, k).to(x.dtype)  # [B, N, K]
    centres = torch.bmm(member.transpose(1, 2), x) / member.sum(1).clamp_min(1.0).unsqueeze(-1)
    far = torch.zeros_like(window, dtype=x.dtype).masked_fill(~window, float("inf"))
    for _ in range(n_iters):
        affinity = torch.softmax(-(sq_distances(x, centres) + far) / tau, dim=-1).detach()
        centres = torch.bmm(affinity.transpose(1, 2), x) / affinity.sum(1).clamp_min(1e-16).unsqueeze(-1)
    return centres


@dataclass
class Restore:
    """What reconstruction needs: the arriving state's bookkeeping and the weights.

    Attributes:
        block: the clustering point's block; ids, source, size, attn_mask: of the tokens that
        arrived there; weights: ``[B, N, K]`` each arriving token's L1-normalised weights over the
        centres (``recon_k`` non-zero per row).
    """

    block: int
    ids: Tensor
    source: Tensor
    size: Tensor | None
    attn_mask: Tensor | None
    weights: Tensor


@REDUCERS.register("expedite")
class ExpediteReducer(TokenReducer):
    """Token clustering at a point, optional reconstruction at block ``recon_at``.

    Options: ``recon_at`` (block of the reconstruction, one of ``reducer.reduce_at``; 0: none),
    ``n_iters`` (5), ``window`` (5, odd), ``tau`` (100), ``recon_tau`` (100), ``recon_k`` (3),
    ``clusters`` (``K`` at the one clustering point; 0: from the keep rate).
    """

    name = "expedite"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, recon_at: int = 0, n_iters: int = 5, window: int = 5, tau: float = 100.0,
                 recon_tau: float = 100.0, recon_k: int = 3, clusters: int = 0) -> None:
        if recon_at < 0 or n_iters < 0 or recon_k < 1 or clusters < 0:
            raise ValueError(f"expedite: recon_at {recon_at} and clusters {clusters} must be >= 0, "
                             f"n_iters {n_iters} >= 0 and recon_k {recon_k} >= 1")
        if window < 1 or window % 2 == 0:
            raise ValueError(f"expedite: window {window} must be odd and >= 1 (cells across)")
        if not tau > 0 or not recon_tau > 0:
            raise ValueError(f"expedite: tau {tau} and recon_tau {recon_tau} must be > 0")
        self.recon_at = recon_at
        self.n_iters = n_iters
        self.window = window
        self.tau = tau
        self.recon_tau = recon_tau
        self.recon_k = recon_k
        self.clusters = clusters

    def check_plan(self, reduce_at: Sequence[int], num_patches: int) -> None:
        """Refuse a plan that cannot work: ``K`` above the token count, a reconstruction block
        that is not a reduction point or does not come after the clustering block."""
        points = list(reduce_at)
        cluster_at = [b for b in points if b != self.recon_at]
        if self.clusters > num_patches:
            raise ValueError(f"expedite: clusters K = {self.clusters} is larger than the "
                             f"{num_patches} patch tokens; valid: 1 to {num_patches}")
        if self.clusters and len(cluster_at) != 1:
            raise ValueError(f"expedite: clusters = {self.clusters} sets K at one clustering point, "
                             f"but reducer.reduce_at {points} has {len(cluster_at)}")
        if not self.recon_at:
            return
        if self.recon_at not in points:
            raise ValueError(f"expedite: reconstruction block recon_at = {self.recon_at} must be one "
                             f"of reducer.reduce_at {points}")
        first = min(cluster_at) if cluster_at else None
        if first is None or self.recon_at <= first:
            raise ValueError(f"expedite: the reconstruction block recon_at = {self.recon_at} must come "
                             f"after the clustering block {first} (reducer.reduce_at {points})")
        if len(cluster_at) != 1 or max(points) != self.recon_at:
            raise ValueError(f"expedite: with reconstruction, reducer.reduce_at {points} must be "
                             f"[clustering block, recon_at] (one clustering, then {self.recon_at})")

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        state = point.state
        if self.recon_at and point.block == self.recon_at:
            return self.reconstruct(point)
        n = state.num_patches
        if self.clusters:
            if self.clusters > n:
                raise ValueError(f"expedite: clusters K = {self.clusters} is larger than the {n} "
                                 f"patch tokens at block {point.block}")
            k = self.clusters
        grid = grid_of(state)
        layout = cluster_layout(k, grid)
        cell, rep = cell_assignment(state.ids, grid, layout)
        window = window_mask(cell, layout, self.window // 2)
        with torch.autocast(state.x.device.type, enabled=False):
            x = state.patches.float()
            centres = soft_kmeans(x, cell, window, k, self.n_iters, self.tau)
            dist = sq_distances(x, centres)  # to every centre, as the reference's hard labels
            restore = None
            if self.recon_at:
                restore = Restore(point.block, state.ids, state.source, state.size, state.attn_mask,
                                  recon_weights(dist, self.recon_k, self.recon_tau))
        assign = dist.argmin(dim=-1)  # hard labels
        assign = assign.scatter(1, rep, torch.arange(k, device=assign.device).expand_as(rep))
        source = torch.where(state.source >= 0, assign.gather(1, state.source.clamp(min=0)),
                             state.source)
        x_out = torch.cat([state.prefix, centres.to(state.x.dtype)], dim=1)
        return TokenState(x=x_out, ids=state.ids.gather(1, rep), source=source,
                          num_prefix=state.num_prefix, restore=restore)

    def reconstruct(self, point: ReductionPoint) -> TokenState:
        """Every token that arrived at the clustering point, from the current centres."""
        state = point.state
        saved = state.restore
        if not isinstance(saved, Restore):
            raise ValueError(f"expedite reconstructs at block {point.block} (recon_at), but no "
                             "clustering came before it; put a clustering block before recon_at in "
                             "reducer.reduce_at")
        with torch.autocast(state.x.device.type, enabled=False):
            patches = torch.bmm(saved.weights, state.patches.float())
        x = torch.cat([state.prefix, patches.to(state.x.dtype)], dim=1)
        return TokenState(x=x, ids=saved.ids, source=saved.source, size=saved.size,
                          attn_mask=saved.attn_mask, num_prefix=state.num_prefix)


def recon_weights(dist: Tensor, k: int, tau: float) -> Tensor:
    """``[B, N, K]``: ``exp(−d² / τ')`` over each token's ``k`` nearest centres, L1-normalised
    (a softmax over those ``k``), 0 elsewhere."""
    k = min(k, dist.shape[-1])
    near, idx = dist.topk(k, dim=-1, largest=False)
    w = torch.softmax(-near / tau, dim=-1)
    return torch.zeros_like(dist).scatter(-1, idx, w)


__all__ = ["ExpediteReducer", "Restore", "cell_assignment", "cluster_layout", "recon_weights",
           "soft_kmeans", "sq_distances", "window_mask"]
