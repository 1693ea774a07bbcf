"""Contract every registered reducer must meet, in fp32 and under bf16 autocast.

Parametrised over ``REDUCERS.names()``: a newly registered reducer is covered without edits. The pair
reducer (``simprune``) runs through the lock-step driver (``dual_forward``), one-branch reducers
through ``forward_reduced`` and through ``dual_forward`` on both branches. A pair reducer that keeps
a data-dependent count per row (``exact_count = False``: ``dynamic_simprune``) meets the same
invariants on its real (unpadded) slots, and the same count in both branches, row by row.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from reducer_testkit import Spy, images, pair_spy, tiny_model

from simprune.drive import dual_forward, forward_reduced
from simprune.reducers import REDUCERS, create_reducer

NAMES = REDUCERS.names()
ONE_BRANCH = [n for n in NAMES if not create_reducer(n).is_pair]
PAIR = [n for n in NAMES if create_reducer(n).is_pair and create_reducer(n).exact_count]
#: pair reducers that keep a data-dependent count per row, padded (dynamic_simprune)
PAIR_VARIABLE = [n for n in NAMES if create_reducer(n).is_pair and not create_reducer(n).exact_count]
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
RATE = 0.7
B = 2  # images per view; global batches are [v1; v2] = 2B rows


def precision(dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def expected_k(n: int, rate: float) -> int:
    """METHOD.md's K = round(r·N), on the decimal product, halves rounded up."""
    from decimal import ROUND_HALF_UP, Decimal

    k = (Decimal(str(rate)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return max(1, int(k))


def check_reduction(before_x, before_ids, n_in, k, out, adds_tokens, n_orig, rate=RATE):
    """Invariants of one reduction of one branch."""
    assert n_in == before_x.shape[1] - 1
    assert k == expected_k(n_in, rate)
    assert out.num_patches == k + adds_tokens
    assert out.x.shape == (before_x.shape[0], 1 + k + adds_tokens, before_x.shape[2])
    assert out.ids.shape == (before_x.shape[0], k + adds_tokens)
    # CLS kept, first, and exactly the value the block produced
    assert torch.equal(out.x[:, 0], before_x[:, 0])
    assert not torch.isnan(out.x).any()
    for b in range(out.ids.shape[0]):
        ids = out.ids[b].tolist()
        real = [i for i in ids if i >= 0]
        assert len(real) == len(set(real)), f"duplicate ids {ids}"
        assert all(0 <= i < n_orig for i in real)
        assert set(real) <= set(before_ids[b].tolist()), "a token came back after it was gone"
        assert all(i >= -1 for i in ids)
        if adds_tokens:
            assert ids[-1] == -1, "the fused token is appended last"
        # synthetic tokens only come from fusing: never more than arrived plus the ones added
        assert ids[:k].count(-1) <= before_ids[b].tolist().count(-1)
        assert ids.count(-1) <= before_ids[b].tolist().count(-1) + adds_tokens
        # source points every surviving original patch at the token that holds it
        for pos, orig in enumerate(ids):
            if orig >= 0:
                assert out.source[b, orig].item() == pos


def check_student_grads(model):
    for name in ("patch_embed.proj.weight", f"blocks.{model.depth - 1}.mlp.fc2.weight",
                 f"blocks.{model.depth - 1}.attn.qkv.weight", "cls_token"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", ONE_BRANCH)
def test_one_branch_contract(name, dtype):
    model = tiny_model(seed=0)
    spy = Spy(create_reducer(name))
    torch.manual_seed(0)
    with precision(dtype):
        res = forward_reduced(model, images(4, seed=1), spy, RATE)
    assert [c["block"] for c in spy.calls] == [2, 3]
    assert [(p.block, p.tokens_in, p.tokens_out) for p in res.points] == [
        (c["block"], c["n"], c["k"] + spy.adds_tokens) for c in spy.calls
    ]
    n = 64
    for c in spy.calls:
        check_reduction(c["x"], c["ids"], c["n"], c["k"], c["out"], spy.adds_tokens, 64)
        assert c["n"] == n
        n = c["k"] + spy.adds_tokens
    assert res.state.num_patches == n
    assert not torch.isnan(res.state.x).any()
    # gradients reach the first and last block through the kept (patch) tokens only
    res.state.patches.float().pow(2).mean().backward()
    check_student_grads(model)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", ONE_BRANCH)
def test_one_branch_on_both_branches(name, dtype):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    torch.manual_seed(0)
    with precision(dtype):
        out = dual_forward(student, teacher, images(2 * B, 2), images(2 * B, 3),
                           create_reducer(name), RATE)
    adds = create_reducer(name).adds_tokens
    n = 64
    for point in out.points:
        for rec in (point.student, point.teacher):
            assert rec.tokens_in == n
            assert rec.tokens_out == expected_k(n, RATE) + adds
            assert rec.ids.shape == (2 * B, rec.tokens_out)
            for row in rec.ids.tolist():
                real = [i for i in row if i >= 0]
                assert len(real) == len(set(real)) and all(0 <= i < 64 for i in real)
                assert row.count(-1) <= adds * (point.block - 1)
        n = point.student.tokens_out
    assert out.teacher.state.num_patches == out.student.state.num_patches == n
    assert not out.teacher.state.x.requires_grad
    assert not torch.isnan(out.student.state.x).any() and not torch.isnan(out.teacher.state.x).any()
    out.student.state.patches.float().pow(2).mean().backward()
    check_student_grads(student)
    assert all(p.grad is None for p in teacher.parameters())


def _run_pair(name, dtype, s_glob, t_glob, s_loc, seed=0, rate=RATE, position=0.37):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    spy = pair_spy(create_reducer(name))
    torch.manual_seed(seed)
    with precision(dtype):
        out = dual_forward(student, teacher, s_glob, t_glob, spy, rate, position,
                           student_local=s_loc)
    return student, teacher, spy, out


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", PAIR)
def test_pair_contract(name, dtype):
    student, teacher, spy, out = _run_pair(name, dtype, images(2 * B, 2), images(2 * B, 3),
                                           images(3 * B, 4, size=16))
    assert [c["block"] for c in spy.calls] == [2, 3]
    n, n_loc = 64, 16
    for c, point in zip(spy.calls, out.points):
        assert c["n"] == n and c["k"] == expected_k(n, RATE)
        for side in ("s", "t"):
            check_reduction(c[f"{side}_x"], c[f"{side}_ids"], c["n"], c["k"], c[f"{side}_out"], 0, 64)
        assert point.student.tokens_out == point.teacher.tokens_out == c["k"]
        assert point.stats is not None and 0.0 <= float(point.stats.many_to_one) <= 1.0
        assert not c["t_out"].x.requires_grad
        # local views: round(rate * N_local) of their own tokens, matched against teacher tokens
        assert point.local is not None and point.local.tokens_in == n_loc
        assert point.local.tokens_out == expected_k(n_loc, RATE)
        assert point.local_stats is not None
        n, n_loc = c["k"], point.local.tokens_out
    assert len(spy.local_calls) == 2
    for lc in spy.local_calls:
        check_reduction(lc["s_x"], lc["s_ids"], lc["n"], lc["k"], lc["s_out"], 0, 16)
    assert out.student.state.num_patches == out.teacher.state.num_patches == n
    assert out.local.state.num_patches == n_loc
    assert not out.teacher.state.x.requires_grad
    for res in (out.student, out.teacher, out.local):
        assert not torch.isnan(res.state.x).any()
    loss = out.student.state.patches.float().pow(2).mean() + out.local.state.patches.float().mean()
    loss.backward()
    check_student_grads(student)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", PAIR_VARIABLE)
def test_variable_count_pair_contract(name, dtype):
    student, teacher, spy, out = _run_pair(name, dtype, images(2 * B, 2), images(2 * B, 3),
                                           images(3 * B, 4, size=16), rate=0.5)
    assert [c["block"] for c in spy.calls] == [2, 3] and len(spy.local_calls) == 2
    for c, point in zip(spy.calls, out.points):
        for side in ("s", "t"):
            before, new = c[f"{side}_x"], c[f"{side}_out"]
            assert torch.equal(new.x[:, 0], before[:, 0]) and not torch.isnan(new.x).any()
            assert new.valid is not None and new.valid[:, 0].all()
            for b in range(new.ids.shape[0]):
                ids = new.ids[b].tolist()
                real = [i for i in ids if i >= 0]
                n_real = (c[f"{side}_ids"][b] >= 0).sum().item()
                assert expected_k(n_real, 0.5) <= len(real) <= n_real  # the window's half kept
                assert len(real) == len(set(real)) and set(real) <= set(c[f"{side}_ids"][b].tolist())
                assert ids[: len(real)] == real and new.valid[b, 1:].tolist() == [
                    i >= 0 for i in ids]  # real tokens first, padding after
                for pos, orig in enumerate(ids):
                    if orig >= 0:
                        assert new.source[b, orig].item() == pos
        # the same count per row in both branches (teacher rows rolled by B in the call)
        assert torch.equal(c["s_out"].valid, c["t_out"].valid)
        assert point.student.tokens_out == point.teacher.tokens_out == c["s_out"].num_patches
        assert point.stats is not None and point.local_stats is not None
        assert not c["t_out"].x.requires_grad
    for lc in spy.local_calls:
        assert torch.equal(lc["s_out"].x[:, 0], lc["s_x"][:, 0])
    for res in (out.student, out.teacher, out.local):
        assert not torch.isnan(res.state.x).any()
    loss = out.student.state.x[:, 0].float().pow(2).mean() + out.local.state.x[:, 0].float().mean()
    loss.backward()
    check_student_grads(student)
    assert all(p.grad is None for p in teacher.parameters())


def _real(state, rows):
    """Per row, the real (unpadded) slots' values (prefix included)."""
    if state.valid is None:
        return [state.x[r] for r in rows]
    return [state.x[r][state.valid[r]] for r in rows]


def _one_branch_run(name, dtype, x, seed):
    model = tiny_model(seed=0)
    spy = Spy(create_reducer(name))
    torch.manual_seed(seed)
    with precision(dtype), torch.no_grad():
        res = forward_reduced(model, x, spy, RATE)
    return [c["out"].ids for c in spy.calls], res.state.x


TOL = {None: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", NAMES)
def test_samples_do_not_depend_on_each_other(name, dtype):
    """A sample's kept tokens and values do not depend on the other samples of the batch (a
    variable-count reducer's padding does: only its real slots are compared)."""
    x = images(2 * B, 5)
    other = x.clone()
    keep_rows = [0, B]  # both views of image 0
    change = [r for r in range(2 * B) if r not in keep_rows]
    other[change] = images(len(change), 6)
    if name in PAIR or name in PAIR_VARIABLE:
        t, t_other = images(2 * B, 7), images(2 * B, 7)
        t_other[change] = images(len(change), 8)
        loc, loc_other = images(3 * B, 9, 16), images(3 * B, 9, 16)
        loc_rows = [0, B, 2 * B]
        loc_change = [r for r in range(3 * B) if r not in loc_rows]
        loc_other[loc_change] = images(len(loc_change), 10, 16)
        with torch.no_grad():
            *_, a = _run_pair(name, dtype, x, t, loc, seed=3)
            *_, b = _run_pair(name, dtype, other, t_other, loc_other, seed=3)
        def real_ids(rec, rows):  # padding (ids -1 after the real tokens) depends on the batch
            return [[i for i in rec.ids[r].tolist() if i >= 0] for r in rows]

        for pa, pb in zip(a.points, b.points):
            assert real_ids(pa.student, keep_rows) == real_ids(pb.student, keep_rows)
            assert real_ids(pa.teacher, keep_rows) == real_ids(pb.teacher, keep_rows)
            assert real_ids(pa.local, loc_rows) == real_ids(pb.local, loc_rows)
        pairs = [(a.student, b.student, keep_rows), (a.teacher, b.teacher, keep_rows),
                 (a.local, b.local, loc_rows)]
        for ra, rb, rows in pairs:
            for xa, xb in zip(_real(ra.state, rows), _real(rb.state, rows)):
                torch.testing.assert_close(xa, xb, atol=TOL[dtype], rtol=TOL[dtype])
        return
    ids_a, out_a = _one_branch_run(name, dtype, x, seed=3)
    ids_b, out_b = _one_branch_run(name, dtype, other, seed=3)
    assert not torch.allclose(out_a[change], out_b[change])  # the other samples did change
    for ia, ib in zip(ids_a, ids_b):
        assert torch.equal(ia[keep_rows], ib[keep_rows])
    torch.testing.assert_close(out_a[keep_rows], out_b[keep_rows], atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_fixed_seed(name, dtype):
    x = images(2 * B, 11)
    if name in PAIR or name in PAIR_VARIABLE:
        t, loc = images(2 * B, 12), images(3 * B, 13, 16)
        with torch.no_grad():
            *_, a = _run_pair(name, dtype, x, t, loc, seed=5)
            *_, b = _run_pair(name, dtype, x, t, loc, seed=5)
        for pa, pb in zip(a.points, b.points):
            for ra, rb in ((pa.student, pb.student), (pa.teacher, pb.teacher), (pa.local, pb.local)):
                assert torch.equal(ra.ids, rb.ids) and torch.equal(ra.source, rb.source)
        for ra, rb in ((a.student, b.student), (a.teacher, b.teacher), (a.local, b.local)):
            assert torch.equal(ra.state.x, rb.state.x)
        return
    ids_a, out_a = _one_branch_run(name, dtype, x, seed=5)
    ids_b, out_b = _one_branch_run(name, dtype, x, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(ids_a, ids_b))
    assert torch.equal(out_a, out_b)


@pytest.mark.parametrize("name", NAMES)
def test_rate_one_is_the_dense_forward(name):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s, t = images(2 * B, 14), images(2 * B, 15)
    with torch.no_grad():
        out = dual_forward(student, teacher, s, t, create_reducer(name), 1.0, 0.5)
        torch.testing.assert_close(out.student.state.x, student.forward_features(s).x)
        torch.testing.assert_close(out.teacher.state.x, teacher.forward_features(t).x)
    for point in out.points:
        assert point.student.tokens_in == point.student.tokens_out == 64
        assert point.stats is None


@pytest.mark.parametrize("name", [n for n in NAMES if create_reducer(n).exact_count])
def test_rate_per_point(name):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    with torch.no_grad():
        out = dual_forward(student, teacher, images(2 * B, 16), images(2 * B, 17),
                           create_reducer(name), [0.5, 0.9], 0.0)
    adds = create_reducer(name).adds_tokens
    k1 = 32 + adds
    k2 = expected_k(k1, 0.9) + adds
    assert [(p.keep_rate, p.student.tokens_out, p.teacher.tokens_out) for p in out.points] == [
        (0.5, k1, k1), (0.9, k2, k2)]
