"""PCAE's downstream progressive token reduction (``pcae_ptr``), its linear ramp, and the two
``mean_sim`` scores (the paper's and the reference code's), each against a loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reducer_testkit import images, synthetic_point, tiny_model

from simprune.config import make_config
from simprune.drive import forward_reduced
from simprune.frameworks.parts import build_plans
from simprune.frameworks.supervised import pool_tokens
from simprune.models import ReductionPoint
from simprune.models.layers import AttentionExtras
from simprune.reducers import KeepRateSchedule, create_reducer
from simprune.reducers.mean_sim import mean_sim_keep, mean_similarity


def test_drops_the_most_mean_like_and_appends_their_mean():
    torch.manual_seed(0)
    x = torch.randn(2, 1 + 10, 6)
    out = create_reducer("pcae_ptr")(synthetic_point(x), 6)
    assert out.num_patches == 7 and out.ids[:, -1].tolist() == [-1, -1]
    for b in range(2):
        p = x[b, 1:]
        mean = p.mean(0)
        sim = [float(F.cosine_similarity(p[i], mean, dim=0)) for i in range(10)]
        order = sorted(range(10), key=lambda i: (sim[i], i))
        keep, drop = sorted(order[:6]), order[6:]
        assert out.ids[b, :6].tolist() == keep
        torch.testing.assert_close(out.x[b, 1:7], p[keep])
        torch.testing.assert_close(out.x[b, 7], p[drop].mean(0))
        assert torch.equal(out.x[b, 0], x[b, 0])  # CLS untouched
        for i in drop:  # the dropped patches now live in the appended token
            assert out.source[b, i] == 6


def test_a_dropped_mean_token_weighs_the_patches_it_averaged():
    torch.manual_seed(1)
    reducer = create_reducer("pcae_ptr")
    first = reducer(synthetic_point(torch.randn(1, 1 + 8, 4)), 5)  # 5 kept + the mean of 3 (pos 5)
    x2 = first.x.clone()
    x2[0, 6] = x2[0, 1:6].mean(0) + 1e-3  # make the appended token the most mean-like one
    second = reducer(ReductionPoint(2, 1, first.with_x(x2), AttentionExtras()), 4)
    keep = mean_sim_keep(x2[:, 1:], 4)[0].tolist()
    dropped = [j for j in range(6) if j not in keep]
    assert 5 in dropped  # the first mean token went
    weights = {j: (3.0 if j == 5 else 1.0) for j in dropped}  # it held 3 original patches
    expect = sum(weights[j] * x2[0, 1 + j] for j in dropped) / sum(weights.values())
    torch.testing.assert_close(second.x[0, -1], expect)
    assert second.ids[0, -1] == -1 and -1 not in second.ids[0, :4].tolist()
    assert (second.source[0] == 4).sum() == 3 + len(dropped) - 1  # every original patch it holds


def test_mean_pooling_leaves_the_appended_tokens_out():
    model = tiny_model(seed=0, reduce_at=(1, 2, 3))
    with torch.no_grad():
        out = forward_reduced(model, images(2, 3), create_reducer("pcae_ptr"), 0.6)
    state = out.state
    assert [p.tokens_out for p in out.points] == [39, 24, 15]  # round(0.6 n) + 1 each time
    real = state.ids >= 0
    expect = torch.stack([state.patches[b][real[b]].mean(0) for b in range(2)])
    torch.testing.assert_close(pool_tokens(state, "mean"), expect)
    assert all(1 <= n <= 3 for n in (~real).sum(1).tolist())  # the last point's, at least


def test_linear_ramp_is_pcaes_fine_tuning_schedule():
    s = KeepRateSchedule(0.6, 0.1, 0.35, "linear")
    assert [s(t) for t in (0.0, 0.05, 0.1)] == [1.0, 1.0, 1.0]
    assert s(0.225) == pytest.approx(0.8) and s(0.35) == 0.6 and s(1.0) == 0.6
    cosine = KeepRateSchedule(0.6, 0.1, 0.35)
    assert cosine(0.15) != pytest.approx(s(0.15))
    with pytest.raises(ValueError, match="ramp"):
        KeepRateSchedule(0.6, 0.1, 0.35, "step")


def test_the_recipe_keys_reach_the_plan():
    cfg = make_config({"framework": "supervised", "method": "pcae_ptr", "keep_rate": 0.6,
                       "reduce_at": [1, 8, 11], "keep_warmup": [0.1, 0.35], "keep_ramp": "linear"})
    plan, _ = build_plans(cfg)
    assert plan.reducer.name == "pcae_ptr"
    assert plan.keep_rate(0.0) == 1.0 and plan.keep_rate(0.225) == pytest.approx(0.8)


def test_the_two_scores_rank_differently_when_norms_differ():
    # three tokens along e1, one long token along e2: the raw mean leans to e2, the mean of the
    # unit vectors to e1
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.0, 30.0]]])
    paper, normalized = mean_similarity(x, "paper"), mean_similarity(x, "normalized")
    assert paper.argmax().item() == 3 and normalized.argmax().item() != 3
    xn = F.normalize(x[0], dim=-1)
    torch.testing.assert_close(normalized[0], xn @ xn.mean(0))
    for score in ("paper", "normalized"):
        ptr = create_reducer("pcae_ptr", score=score)(synthetic_point(torch.cat([x[:, :1], x], 1)), 3)
        ms = create_reducer("mean_sim", score=score)(synthetic_point(torch.cat([x[:, :1], x], 1)), 3)
        assert torch.equal(ptr.ids[:, :3], ms.ids)
    with pytest.raises(ValueError, match="score"):
        create_reducer("mean_sim", score="raw")


def test_a_built_backbone_reduces_after_the_block_for_pcae_ptr_only():
    """The paper reduces "after the 0th, 7th and 10th layer": a backbone built for ``pcae_ptr``
    places its points after the whole block; every other reducer before the MLP."""
    from simprune.frameworks.parts import build_backbone
    from simprune.reducers import REDUCERS

    cfg = make_config({"framework": "supervised", "model": "vit_micro_patch4_32", "method": "pcae_ptr",
                       "keep_rate": 0.6, "reduce_at": [1, 8, 11]})
    net = build_backbone(cfg).eval()
    assert net.placement == "block" and net.reduce_at == (1, 8, 11)
    x = images(1, 7)
    with torch.no_grad():
        out = forward_reduced(net, x, create_reducer("pcae_ptr"), 0.6)
        # written out: block 1 whole, then the reduction of its output
        h = net.blocks[0](net.embed(x))
        first = create_reducer("pcae_ptr")(ReductionPoint(1, 0, h, AttentionExtras()), round(0.6 * 64))
    assert torch.equal(out.points[0].ids, first.ids)
    for name in REDUCERS.names():
        if name != "pcae_ptr":
            assert REDUCERS.get(name).placement == "attention", name
