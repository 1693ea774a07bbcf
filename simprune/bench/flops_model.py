"""Analytic forward FLOPs of a reducible ViT, from the token counts the drivers produce.

Conventions (METHOD.md, "Cost figures"): one multiply-add is 2 FLOPs; counts are per whole batch.
A block at a reduction point runs its attention on the tokens that arrive and its MLP on the
tokens that remain. Per block with ``n`` tokens (CLS included), width ``D`` and MLP width ``F``:

- ``qkv``: ``2·n·D·3D``; ``attn``: ``q@kᵀ`` and ``attn@v``, ``2·2·n²·D``; ``proj``: ``2·n·D²``;
- ``mlp``: ``fc1 + fc2``, ``2·2·n·D·F``; plus the patch embedding ``2·N·D·C·p²`` and the head.

Only matrix products are counted for the backbone: layer norms, GELU, softmax, residual adds and
bias adds are left out (a few percent of a ViT at these sizes; they are what
``torch.utils.flop_counter`` leaves out too, so the analytic matmul total can be checked against
it exactly). The reducers' own work is always counted, as :class:`Term` s named ``reducer.*``,
tagged with whether it is a matrix product (what the counter sees) and whether it lies on the
student's autograd path (then its backward costs 2× its forward):

- ``reducer.cls_attn``: the CLS attention row ``q_cls·Kᵀ`` over ``n`` tokens, ``2·n·D``, at every
  point of a branch run with ``need={"cls_attn"}`` (the backbone computes it even at a skipped
  point). On the autograd path only for ``evit``, whose fused token is weighted by it.
- ``reducer.fuse`` (``evit``): ``2·(n−K)·D`` (the code multiplies all ``n`` by weights that are 0
  for kept tokens, ``2·n·D``; the difference is below 0.01% of a forward).
- ``reducer.match``: ToMe's bipartite scores ``2·|A|·|B|·d_head`` per round (head-averaged keys);
  SimPrune's ``2·N·M·d`` per student row and point (appendix B's ``N²·2D``), and the local views'
  ``2·N_l·M·D`` against the teacher tokens kept at that point.
- ``reducer.merge`` (``tome``): size-weighted sums of values and keys, ``2·n·(D + d_head)``.
- ``reducer.mean_sim``: cosine to the mean patch, ``2·n·D``.
- ``reducer.connections`` (``attn_topk`` with ``attn_keep < 1``): the kept tokens' attention map
  ``2·m²·D``, ``m = 1 + K``.

Token counts come from :func:`branch_plan` / :func:`pair_plan`, which follow
:func:`simprune.drive.forward_reduced` and :func:`simprune.drive.lockstep_forward` rule for rule:
``K = num_keep(N, rate)`` with ``N`` the patch tokens arriving, ``evit`` adds one fused token, a
point with ``K == N`` is skipped. The SSL training step and the CLI are in
:mod:`simprune.bench.flops`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from simprune.drive.single import rates_per_point
from simprune.models.configs import model_config
from simprune.models.vit import ViTConfig, check_reduce_at
from simprune.reducers.base import TokenReducer, create_reducer
from simprune.tokens import num_keep

#: Reducers this model knows the work of; "dense" means no reducer.
MODELLED = ("dense", "random", "evit", "evit_nofuse", "tome", "mean_sim", "attn_topk", "simprune")


@dataclass(frozen=True)
class Term:
    """One counted piece of forward work, for the whole batch.

    Attributes:
        name: ``embed``, ``qkv``, ``attn``, ``proj``, ``mlp``, ``head`` (backbone) or ``reducer.*``.
        flops: forward FLOPs. matmul: a matrix product (``FlopCounterMode`` counts it).
        grad: on the autograd path of a trained branch (backward = 2 × forward).
    """

    name: str
    flops: float
    matmul: bool = True
    grad: bool = True


@dataclass
class Tally:
    """A list of :class:`Term` with the sums the figures need."""

    terms: list[Term] = field(default_factory=list)

    def add(self, name: str, flops: float, matmul: bool = True, grad: bool = True) -> None:
        if flops:
            self.terms.append(Term(name, float(flops), matmul, grad))

    def extend(self, other: Tally) -> Tally:
        self.terms.extend(other.terms)
        return self

    def total(self, matmul_only: bool = False, reducer: bool | None = None) -> float:
        """Forward FLOPs; ``reducer=True/False`` keeps only reducer / only backbone terms."""
        return sum(t.flops for t in self._select(matmul_only, reducer))

    def backward(self, reducer: bool | None = None) -> float:
        """Backward FLOPs of a trained branch: 2 × the forward of the terms on the autograd path."""
        return 2.0 * sum(t.flops for t in self._select(False, reducer) if t.grad)

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.terms:
            out[t.name] = out.get(t.name, 0.0) + t.flops
        return out

    def _select(self, matmul_only: bool, reducer: bool | None) -> Iterable[Term]:
        for t in self.terms:
            if matmul_only and not t.matmul:
                continue
            if reducer is not None and t.name.startswith("reducer.") != reducer:
                continue
            yield t


@dataclass(frozen=True)
class PointPlan:
    """Token counts of one branch at one reduction point (patch tokens, CLS excluded).

    ``n_in`` arrive, ``k = num_keep(n_in, rate)``; ``n_out`` leave (``k`` plus any fused token, or
    ``n_in`` when the point is skipped). ``anchors``: teacher tokens a local view is matched against.
    """

    block: int
    n_in: int
    k: int
    n_out: int
    anchors: int = 0

    @property
    def reduced(self) -> bool:
        return self.k < self.n_in


def resolve_model(model: str | ViTConfig, reduce_at: Sequence[int] | None = None) -> ViTConfig:
    """A config by registry name (``KeyError`` listing the known ones) or as given."""
    cfg = model_config(model) if isinstance(model, str) else model
    if reduce_at is not None:
        cfg = replace(cfg, reduce_at=check_reduce_at(tuple(reduce_at), cfg.depth))
    return cfg


def resolve_reducer(method: str | None, reducer_kwargs: Mapping[str, Any] | None = None
                    ) -> TokenReducer | None:
    """``None``/``"dense"`` -> ``None``; else the registered reducer (its errors list the names)."""
    if method is None or method == "dense":
        if reducer_kwargs:
            raise ValueError(f"reducer options {dict(reducer_kwargs)} given for the dense model")
        return None
    reducer = create_reducer(method, **dict(reducer_kwargs or {}))
    if method not in MODELLED:
        raise ValueError(f"no FLOPs model for reducer {method!r}; modelled: {', '.join(MODELLED)}")
    return reducer


def num_tokens(cfg: ViTConfig, img_size: int | None = None) -> int:
    """Patch tokens of a square ``img_size`` input (the config's size by default)."""
    size = cfg.img_size if img_size is None else img_size
    if size % cfg.patch_size:
        raise ValueError(f"image size {size} is not divisible by the patch size {cfg.patch_size}")
    return (size // cfg.patch_size) ** 2


def branch_plan(n0: int, reduce_at: Sequence[int], keep_rate: float | Sequence[float],
                reducer: TokenReducer | None) -> list[PointPlan]:
    """Token counts of :func:`simprune.drive.forward_reduced` with a one-branch reducer."""
    rates = rates_per_point(keep_rate, len(reduce_at))
    n, plan = n0, []
    for block, rate in zip(reduce_at, rates):
        k = num_keep(n, rate)
        n_out = k + reducer.adds_tokens if reducer is not None and k < n else n
        plan.append(PointPlan(block, n, k, n_out))
        n = n_out
    return plan


def pair_plan(n0: int, reduce_at: Sequence[int], keep_rate: float | Sequence[float],
              n0_local: int | None = None) -> tuple[list[PointPlan], list[PointPlan], list[PointPlan]]:
    """Token counts of :func:`simprune.drive.lockstep_forward`: (student, teacher, local) plans.

    Student and teacher global views arrive with the same ``n``; both keep ``K = num_keep(n)`` (the
    teacher ``min(K, M)``). A local view keeps ``num_keep(n_l)`` and is matched against the
    teacher's tokens after that point (``anchors``). ``local`` is empty without local views.
    """
    rates = rates_per_point(keep_rate, len(reduce_at))
    s = t = n0
    loc = n0_local
    student, teacher, local = [], [], []
    for block, rate in zip(reduce_at, rates):
        k = num_keep(s, rate)
        s_out, t_out = (k, min(k, t)) if k < s else (s, t)
        student.append(PointPlan(block, s, k, s_out, anchors=t))
        teacher.append(PointPlan(block, t, min(k, t), t_out))
        if loc is not None:
            k_l = num_keep(loc, rate)
            l_out = k_l if k_l < loc else loc
            local.append(PointPlan(block, loc, k_l, l_out, anchors=t_out))
            loc = l_out
        s, t = s_out, t_out
    return student, teacher, local


def backbone_flops(cfg: ViTConfig, rows: int, n0: int, plan: Sequence[PointPlan]) -> Tally:
    """Matmul FLOPs of the backbone over ``rows`` sequences that start with ``n0`` patch tokens."""
    d, hidden, prefix = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), 1
    tally = Tally()
    tally.add("embed", rows * 2 * n0 * d * cfg.in_chans * cfg.patch_size**2)
    at = {p.block: p for p in plan}
    n = n0
    for block in range(1, cfg.depth + 1):
        seq = prefix + n
        tally.add("qkv", rows * 2 * seq * d * 3 * d)
        tally.add("attn", rows * 2 * 2 * seq * seq * d)
        tally.add("proj", rows * 2 * seq * d * d)
        if block in at:
            n = at[block].n_out
        tally.add("mlp", rows * 2 * 2 * (prefix + n) * d * hidden)
    if cfg.num_classes:
        tally.add("head", rows * 2 * d * cfg.num_classes)
    return tally


def one_branch_reducer_flops(cfg: ViTConfig, rows: int, plan: Sequence[PointPlan],
                             reducer: TokenReducer | None) -> Tally:
    """The work a one-branch reducer adds at every point (see the module docstring)."""
    tally = Tally()
    if reducer is None:
        return tally
    d, hd = cfg.embed_dim, cfg.embed_dim // cfg.num_heads
    for p in plan:
        reduced = p.k < p.n_in
        if "cls_attn" in reducer.needs:
            tally.add("reducer.cls_attn", rows * 2 * (1 + p.n_in) * d,
                      grad=reducer.name == "evit" and reduced)
        if not reduced:
            continue
        if reducer.name == "evit":
            tally.add("reducer.fuse", rows * 2 * (p.n_in - p.k) * d, matmul=False)
        elif reducer.name == "tome":
            n = p.n_in
            while n > p.k:
                r = min(n - p.k, (n + 1) // 2)
                tally.add("reducer.match", rows * 2 * ((n + 1) // 2) * (n // 2) * hd, grad=False)
                tally.add("reducer.merge", rows * 2 * n * d, matmul=False)
                tally.add("reducer.merge", rows * 2 * n * hd, matmul=False, grad=False)
                n -= r
        elif reducer.name == "mean_sim":
            tally.add("reducer.mean_sim", rows * 2 * p.n_in * d, matmul=False, grad=False)
        elif reducer.name == "attn_topk" and getattr(reducer, "attn_keep", 1.0) < 1.0:
            tally.add("reducer.connections", rows * 2 * (1 + p.k) ** 2 * d, grad=False)
    return tally


@dataclass
class BranchFlops:
    """Forward work of one branch of a forward: its plan, backbone and reducer tallies."""

    rows: int
    n0: int
    plan: list[PointPlan]
    backbone: Tally
    reducer: Tally
    trained: bool = True

    def total(self, matmul_only: bool = False) -> float:
        return self.backbone.total(matmul_only) + self.reducer.total(matmul_only)


def forward_flops(model: str | ViTConfig, method: str | None = None,
                  keep_rate: float | Sequence[float] = 1.0, *, batch: int = 1,
                  img_size: int | None = None, reduce_at: Sequence[int] | None = None,
                  reducer_kwargs: Mapping[str, Any] | None = None) -> BranchFlops:
    """Analytic FLOPs of ``forward_reduced(model, images[batch], reducer, keep_rate)``."""
    cfg = resolve_model(model, reduce_at)
    reducer = resolve_reducer(method, reducer_kwargs)
    if reducer is not None and reducer.is_pair:
        raise ValueError(f"{method!r} is a pair reducer; use dual_forward_flops")
    n0 = num_tokens(cfg, img_size)
    plan = branch_plan(n0, cfg.reduce_at, keep_rate, reducer)
    return BranchFlops(batch, n0, plan, backbone_flops(cfg, batch, n0, plan),
                       one_branch_reducer_flops(cfg, batch, plan, reducer))


def dual_forward_flops(model: str | ViTConfig, method: str | None = None,
                       keep_rate: float | Sequence[float] = 1.0, *, batch: int = 1,
                       num_global: int = 2, global_size: int | None = None,
                       num_local: int = 0, local_size: int | None = None,
                       reduce_at: Sequence[int] | None = None,
                       reducer_kwargs: Mapping[str, Any] | None = None) -> dict[str, BranchFlops]:
    """Analytic FLOPs of :func:`simprune.drive.dual_forward` for ``batch`` images.

    Returns branches ``student`` (``num_global·batch`` rows), ``teacher`` (same rows, not trained)
    and, with local views, ``local`` (``num_local·batch`` rows). SimPrune's matching is booked on
    the student and local branches (``reducer.match``, never trained), the teacher's CLS row on the
    teacher.
    """
    cfg = resolve_model(model, reduce_at)
    reducer = resolve_reducer(method, reducer_kwargs)
    rows, local_rows = num_global * batch, num_local * batch
    n0 = num_tokens(cfg, global_size)
    n0_l = num_tokens(cfg, local_size) if num_local else None
    if reducer is None or not reducer.is_pair:
        s_plan = branch_plan(n0, cfg.reduce_at, keep_rate, reducer)
        l_plan = branch_plan(n0_l, cfg.reduce_at, keep_rate, reducer) if n0_l else []
        out = {
            "student": BranchFlops(rows, n0, s_plan, backbone_flops(cfg, rows, n0, s_plan),
                                   one_branch_reducer_flops(cfg, rows, s_plan, reducer)),
            "teacher": BranchFlops(rows, n0, s_plan, backbone_flops(cfg, rows, n0, s_plan),
                                   one_branch_reducer_flops(cfg, rows, s_plan, reducer), False),
        }
        if n0_l:
            out["local"] = BranchFlops(local_rows, n0_l, l_plan,
                                       backbone_flops(cfg, local_rows, n0_l, l_plan),
                                       one_branch_reducer_flops(cfg, local_rows, l_plan, reducer))
        return out
    s_plan, t_plan, l_plan = pair_plan(n0, cfg.reduce_at, keep_rate, n0_l)
    d = cfg.embed_dim
    d_match = d // cfg.num_heads if getattr(reducer, "metric", "hidden") == "keys" else d
    s_red, t_red, l_red = Tally(), Tally(), Tally()
    for p, tp in zip(s_plan, t_plan):
        t_red.add("reducer.cls_attn", rows * 2 * (1 + tp.n_in) * d, grad=False)
        if p.k < p.n_in:
            s_red.add("reducer.match", rows * 2 * p.n_in * p.anchors * d_match, grad=False)
    for p in l_plan:
        if p.k < p.n_in:  # local views always match on hidden states (reduce_against)
            l_red.add("reducer.match", local_rows * 2 * p.n_in * p.anchors * d, grad=False)
    out = {
        "student": BranchFlops(rows, n0, s_plan, backbone_flops(cfg, rows, n0, s_plan), s_red),
        "teacher": BranchFlops(rows, n0, t_plan, backbone_flops(cfg, rows, n0, t_plan), t_red, False),
    }
    if n0_l:
        out["local"] = BranchFlops(local_rows, n0_l, l_plan,
                                   backbone_flops(cfg, local_rows, n0_l, l_plan), l_red)
    return out


def train_flops(branches: Mapping[str, BranchFlops]) -> float:
    """Forward of every branch plus the backward of the trained ones (no heads)."""
    total = 0.0
    for b in branches.values():
        total += b.total()
        if b.trained:
            total += b.backbone.backward() + b.reducer.backward()
    return total


def matmul_flops(branches: Mapping[str, BranchFlops] | BranchFlops) -> float:
    """Forward matmul FLOPs, the quantity ``count_flops`` measures on a forward."""
    if isinstance(branches, BranchFlops):
        return branches.total(matmul_only=True)
    return sum(b.total(matmul_only=True) for b in branches.values())
