"""Dynamic SimPrune (METHOD.md "Dynamic SimPrune"): candidates from the window, gates, padding,
the FLOPs budget.

A loop re-derivation of one point, per row: match each real student token to its most similar
real teacher token; rank the row's own pairs, most similar first; the window ``[w, w + k)``,
``k = round(0.5 n)``, ``w = round(p (n - k))``, is kept for sure; every other pair is a candidate,
kept when its gate ``sigmoid(linear(mean-pool_4(s_i)))`` is at least 0.5; the teacher keeps every
kept pair's partner and fills up to the same count by CLS attention (first among tokens no dropped
pair points to).
"""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import images, pair_spy, tiny_model

from simprune.bench.flops_count import count_flops_by_module
from simprune.drive import dual_forward
from simprune.reducers import REDUCERS, create_reducer
from simprune.reducers.dynamic import DynamicSimPruneReducer, GateBank, masked_match
from simprune.reducers.dynamic_cost import ViTCost
from simprune.tokens import gather_patches

B = 2


def _bound(budget=0.8, seed=0, **opts):
    student, teacher = tiny_model(seed=seed), tiny_model(seed=seed + 1)
    red = create_reducer("dynamic_simprune", flops_budget=budget, **opts)
    torch.manual_seed(seed)
    gates = red.bind(student)
    with torch.no_grad():  # gates that keep some candidates and drop others
        for lin in gates.gates.values():
            lin.weight.normal_(0, 0.5)
    return student, teacher, red


def _run(student, teacher, red, s_img, t_img, loc=None, position=0.3, grad=False):
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        return dual_forward(student, teacher, s_img, t_img, red, red.keep_share, position,
                            student_local=loc)


def test_registered_and_a_pair_reducer():
    assert "dynamic_simprune" in REDUCERS.names()
    red = create_reducer("dynamic_simprune")
    assert red.is_pair and not red.exact_count and red.flops_budget == 0.78
    sched = red.keep_schedule()
    assert sched(0.0) == sched(0.029) == 1.0 and sched(0.03) == sched(1.0) == 0.5


def _cos(u, v):
    return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))


def ref_point(s, t, t_attn, gate, p, share=0.5):
    """One row: s [n, D] real student patches, t [n, D] real teacher patches, t_attn [n], gate a
    Linear(D/4, 1). Returns (student positions kept, teacher positions kept)."""
    n = s.shape[0]
    partner, sim = [], []
    for i in range(n):
        sims = [_cos(s[i], t[j]) for j in range(t.shape[0])]
        j = max(range(t.shape[0]), key=lambda jj: (sims[jj], -jj))
        partner.append(j)
        sim.append(sims[j])
    ranked = sorted(range(n), key=lambda i: -sim[i])  # stable: ties keep position order
    k = max(1, math.floor(share * n + 0.5))
    w = round(p * (n - k))
    sure = set(ranked[w : w + k])
    keep = []
    for i in range(n):
        pooled = s[i].reshape(-1, 4).mean(-1)
        g = 1 / (1 + math.exp(-float(gate(pooled).detach())))
        if i in sure or g >= 0.5:
            keep.append(i)
    kept_partners = {partner[i] for i in keep}
    dropped_partners = {partner[i] for i in range(n) if i not in keep}
    t_keep = set(kept_partners)
    by_attn = sorted(range(t.shape[0]), key=lambda j: -float(t_attn[j]))
    for tier in ([j for j in by_attn if j not in dropped_partners], by_attn):
        for j in tier:
            if len(t_keep) < len(keep) and j not in t_keep:
                t_keep.add(j)
    return keep, sorted(t_keep)


def test_one_point_equals_loop_rederivation():
    student, teacher, red = _bound()
    spy = pair_spy(red)
    s_img, t_img = images(2 * B, 2), images(2 * B, 3)
    out = _run(student, teacher, spy, s_img, t_img, position=0.4)
    c = spy.calls[0]
    gate = red.gates.gates["0"]
    s_pts, t_pts = c["s_x"][:, 1:], c["t_x"][:, 1:]
    assert out.points[0].stats is not None
    # the teacher's CLS attention at the point (the spy saw the teacher rows rolled by B)
    attn = _teacher_cls_attn(teacher, t_img, block=c["block"]).roll(B, dims=0)
    for b in range(2 * B):
        keep, t_keep = ref_point(s_pts[b], t_pts[b], attn[b], gate, 0.4)
        s_ids = [i for i in c["s_out"].ids[b].tolist() if i >= 0]
        t_ids = [i for i in c["t_out"].ids[b].tolist() if i >= 0]
        assert s_ids == keep  # first point: ids are positions
        assert t_ids == t_keep
        assert len(s_ids) == len(t_ids)


def _teacher_cls_attn(model, imgs, block):
    gen = model.stages(imgs, frozenset({"cls_attn"}))
    with torch.no_grad():
        pt = gen.send(None)
        while pt.block != block:
            pt = gen.send(None)
    return pt.extras.cls_attn[:, 1:]


def test_both_branches_keep_the_same_pairs():
    student, teacher, red = _bound(seed=3)
    spy = pair_spy(red)
    _run(student, teacher, spy, images(2 * B, 4), images(2 * B, 5), position=0.7)
    assert len(spy.calls) == 2
    for c in spy.calls:
        s_new, t_new = c["s_out"], c["t_out"]
        assert torch.equal(s_new.valid, t_new.valid)  # the same count per row, the same padding
        s_valid, t_valid = c["s_ids"] >= 0, c["t_ids"] >= 0  # no fused tokens: -1 is padding
        partner, _ = masked_match(c["s_x"][:, 1:], c["t_x"][:, 1:], s_valid, t_valid)
        for b in range(2 * B):
            kept_pos = [c["s_ids"][b].tolist().index(i) for i in s_new.ids[b].tolist() if i >= 0]
            partners = {int(c["t_ids"][b, partner[b, i]]) for i in kept_pos}
            assert partners <= set(t_new.ids[b].tolist())
            assert (s_new.ids[b] >= 0).sum() == (t_new.ids[b] >= 0).sum()


def test_padded_slots_never_change_a_real_token():
    """The padded batch against each sample's own unpadded forward with the same kept tokens."""
    student, teacher, red = _bound(seed=1)
    s_img, t_img = images(2 * B, 6), images(2 * B, 7)
    out = _run(student, teacher, red, s_img, t_img)
    widths = [p.student.tokens_out for p in out.points]
    counts = [(p.student.ids >= 0).sum(1).tolist() for p in out.points]
    assert any(min(c) < w for c, w in zip(counts, widths)), "the test needs padding"
    for model, imgs, branch in ((student, s_img, "student"), (teacher, t_img, "teacher")):
        res = getattr(out, branch)
        for b in range(2 * B):
            gen = model.stages(imgs[b : b + 1])
            with torch.no_grad():
                pt, i = gen.send(None), 0
                try:
                    while True:
                        keep_ids = [x for x in getattr(out.points[i], branch).ids[b].tolist() if x >= 0]
                        cur = pt.state.ids[0].tolist()
                        keep = torch.tensor([[cur.index(x) for x in keep_ids]])
                        pt, i = gen.send(gather_patches(pt.state, keep)), i + 1
                except StopIteration as stop:
                    alone = stop.value
            real = res.state.valid[b]
            assert torch.equal(res.state.ids[b][real[1:]], alone.ids[0])
            torch.testing.assert_close(res.state.x[b][real], alone.x[0], atol=1e-5, rtol=1e-5)
            assert torch.all(res.state.ids[b][~real[1:]] == -1)


def test_padded_slots_own_no_patch_and_hold_zeros():
    student, teacher, red = _bound(seed=2)
    spy = pair_spy(red)
    _run(student, teacher, spy, images(2 * B, 8), images(2 * B, 9), loc=images(3 * B, 10, 16))
    for c in spy.calls + spy.local_calls:
        new = c["s_out"]
        pad = ~new.valid[:, 1:]
        assert torch.all(new.ids[pad] == -1)
        assert torch.all(new.patches[pad] == 0)
        for b in range(new.ids.shape[0]):
            for pos, orig in enumerate(new.ids[b].tolist()):
                if orig >= 0:
                    assert new.source[b, orig] == pos
            assert set(new.source[b][new.source[b] >= 0].tolist()) == set(
                p for p in range(new.ids.shape[1]) if new.ids[b, p] >= 0)


def test_gates_get_gradients_from_the_budget_and_the_task():
    for which in ("budget", "task"):
        student, teacher, red = _bound(seed=4)
        out = _run(student, teacher, red, images(2 * B, 11), images(2 * B, 12), grad=True)
        term, logs = red.budget_terms(out)
        loss = term if which == "budget" else out.student.state.x[:, 0].pow(2).sum()
        loss.backward()
        for name, p in red.gates.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (which, name)
            assert p.grad.abs().sum() > 0, (which, name)
        assert float(logs["kept_min/p1"]) <= float(logs["kept_mean/p1"]) <= float(logs["kept_max/p1"])


def test_short_run_meets_the_budget_on_a_fixed_input():
    student, teacher, red = _bound(budget=0.68, seed=5, penalty=1.0)
    s_img, t_img = images(8, 13), images(8, 14)
    opt = torch.optim.Adam(red.gates.parameters(), lr=0.05)
    history = []
    for _ in range(60):
        out = _run(student, teacher, red, s_img, t_img, grad=True)
        term, logs = red.budget_terms(out)
        opt.zero_grad()
        term.backward()
        opt.step()
        history.append(logs["flops"])
    assert abs(history[0] - 0.68) > 0.08, history[0]  # it started away from the budget
    tail = history[-10:]
    assert abs(sum(tail) / len(tail) - 0.68) < 0.02, history


def test_analytic_fraction_counts_what_runs():
    """Forward FLOPs of both backbones, the matching and the gates, padding included, as
    ``torch.utils.flop_counter`` counts them, against :class:`ViTCost` at the padded widths."""
    student, teacher, red = _bound(seed=6)
    s_img, t_img = images(2 * B, 15), images(2 * B, 16)
    box = {}

    def fwd():
        box["out"] = _run(student, teacher, red, s_img, t_img)

    _, total = count_flops_by_module(fwd)
    out = box["out"]
    cost = ViTCost.of(student)
    rows = 2 * B
    embed = 2 * 64 * 3 * 16 * 32  # conv: 64 patches of 3·4·4 pixels to 32 channels, per row
    widths = [p.student.tokens_out for p in out.points]
    backbone = rows * cost.row(64, widths)
    cls_rows = sum(rows * 2 * (1 + p.student.tokens_in) * 32 for p in out.points)
    match = sum(rows * 2 * p.student.tokens_in ** 2 * 32 for p in out.points)
    gates = sum(rows * 2 * 8 * p.student.tokens_in for p in out.points)
    assert total == 2 * rows * embed + 2 * backbone + cls_rows + match + gates


def test_warmup_and_rate_one_drop_nothing():
    student, teacher, red = _bound()
    with torch.no_grad():
        out = dual_forward(student, teacher, images(2 * B, 17), images(2 * B, 18), red,
                           red.keep_schedule()(0.01), 0.0)
    assert all(p.stats is None and p.student.tokens_out == 64 for p in out.points)
    term, logs = red.budget_terms(out)
    assert term == 0.0 and 1.0 < logs["flops"] < 1.01  # only the teacher's CLS-attention rows


def test_bf16_no_nan():
    student, teacher, red = _bound(seed=7, gumbel=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(student, teacher, red, images(2 * B, 19), images(2 * B, 20),
                   loc=images(3 * B, 21, 16), grad=True)
        term, _ = red.budget_terms(out)
    for res in (out.student, out.teacher, out.local):
        assert torch.isfinite(res.state.x.float()).all()
    (term + out.student.state.x[:, 0].float().pow(2).mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in red.gates.parameters())


@pytest.mark.parametrize("opts, words", [
    ({"flops_budget": 1.0}, "flops_budget must be a fraction"),
    ({"flops_budget": 0.0}, "flops_budget must be a fraction"),
    ({"candidates": 1.5}, "candidates must be in (0, 1)"),
    ({"tau": 0.0}, "tau > 0"),
    ({"penalty": "a"}, "penalty must be a number"),
])
def test_bad_options(opts, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        create_reducer("dynamic_simprune", **opts)


def test_budget_below_reach_names_the_range():
    red = create_reducer("dynamic_simprune", flops_budget=0.2)
    lo, hi = ViTCost.of(tiny_model()).fraction_bounds(64, 0.5)
    with pytest.raises(ValueError) as err:
        red.bind(tiny_model())
    msg = str(err.value)
    assert "0.2" in msg and f"{math.ceil(lo * 1000) / 1000:.3f}" in msg and "valid" in msg
    assert 0.4 < lo < 0.7 and hi > 1.0


def test_gate_width_must_pool_by_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        GateBank(30)
    assert isinstance(create_reducer("dynamic_simprune"), DynamicSimPruneReducer)
