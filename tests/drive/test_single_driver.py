"""The one-branch driver: where the reduction happens, what is recorded, and its errors."""

from __future__ import annotations

import pytest
import torch
from reducer_testkit import Spy, images, tiny_model

from simprune.drive import forward_reduced, rates_per_point
from simprune.reducers import SimPruneReducer, create_reducer
from simprune.tokens import gather_patches


@torch.no_grad()
def test_no_reducer_is_the_dense_forward():
    model = tiny_model(seed=0)
    x = images(3, 1)
    res = forward_reduced(model, x)
    torch.testing.assert_close(res.state.x, model.forward_features(x).x, rtol=0, atol=0)
    assert [(p.block, p.tokens_in, p.tokens_out) for p in res.points] == [(2, 64, 64), (3, 64, 64)]
    torch.testing.assert_close(res.cls, res.state.x[:, 0])


@torch.no_grad()
def test_reduction_sits_between_attention_and_mlp():
    """Re-run the blocks by hand with the kept positions the driver chose: same result."""
    model = tiny_model(seed=1)
    x = images(2, 2)
    spy = Spy(create_reducer("random"))
    torch.manual_seed(0)
    res = forward_reduced(model, x, spy, 0.5)
    state = model.embed(x)
    kept_ids = [c["out"].ids for c in spy.calls]
    state = model.blocks[0](state)
    for call_no, blk in zip(range(2), model.blocks[1:3]):
        state, _ = blk.attend(state)
        assert torch.equal(state.x, spy.calls[call_no]["x"])  # the point shows the block's tokens
        # positions among the current tokens that hold the kept original ids
        keep = torch.stack([(state.ids[b][None, :] == kept_ids[call_no][b][:, None]).float().argmax(1)
                            for b in range(2)])
        state = blk.feed_forward(gather_patches(state, keep))
    state = model.blocks[3](state)
    torch.testing.assert_close(res.state.x, model.norm(state.x))
    assert [(p.tokens_in, p.tokens_out) for p in res.points] == [(64, 32), (32, 16)]
    assert torch.equal(res.points[1].ids, kept_ids[1])


@torch.no_grad()
def test_identity_reducer_changes_nothing():
    class Identity(Spy):
        def __call__(self, point, k):
            return point.state

    model = tiny_model(seed=2)
    x = images(2, 3)
    res = forward_reduced(model, x, Identity(create_reducer("random")), 0.5)
    torch.testing.assert_close(res.state.x, model.forward_features(x).x, rtol=0, atol=0)


@torch.no_grad()
def test_point_with_k_equal_n_is_skipped():
    model = tiny_model(seed=3)
    spy = Spy(create_reducer("evit"))
    res = forward_reduced(model, images(1, 4), spy, [0.999, 0.5])  # round(0.999 * 64) = 64
    assert [c["block"] for c in spy.calls] == [3]
    assert res.points[0].tokens_in == res.points[0].tokens_out == 64
    assert res.points[1].tokens_out == 33  # 32 kept + the fused token


def test_pair_reducer_needs_the_lockstep_driver():
    with pytest.raises(TypeError, match=r"'simprune' is a pair reducer; use lockstep_forward"):
        forward_reduced(tiny_model(), images(1, 0), SimPruneReducer(), 0.7)


@pytest.mark.parametrize("rate", [0, 1.5, -0.1])
def test_bad_keep_rate(rate):
    with pytest.raises(ValueError) as err:
        forward_reduced(tiny_model(), images(1, 0), create_reducer("random"), rate)
    assert repr(float(rate)) in str(err.value) and "(0, 1]" in str(err.value)


def test_rates_per_point():
    assert rates_per_point(0.7, 3) == [0.7, 0.7, 0.7]
    assert rates_per_point([1, 0.5], 2) == [1.0, 0.5]
    with pytest.raises(ValueError, match=r"got 1 keep rates \[0.5\] for 2 reduction points"):
        rates_per_point([0.5], 2)
    with pytest.raises(ValueError, match=r"got 1.5"):
        rates_per_point([0.5, 1.5], 2)


def test_image_not_divisible_by_patch():
    with pytest.raises(ValueError, match=r"30x30.*patch size 4"):
        forward_reduced(tiny_model(), torch.randn(1, 3, 30, 30), create_reducer("random"), 0.5)


@torch.no_grad()
def test_point_zero_drops_input_tokens_exactly():
    """A reducer at point 0 runs before block 1: exact counts, CLS first, unique ids."""
    model = tiny_model(seed=3, reduce_at=(0, 2))
    torch.manual_seed(0)
    res = forward_reduced(model, images(3, 4), create_reducer("random"), 0.5)
    assert [(p.block, p.tokens_in, p.tokens_out) for p in res.points] == [(0, 64, 32), (2, 32, 16)]
    assert res.state.x.shape == (3, 1 + 16, 32)
    for row in res.points[0].ids:
        assert row.unique().numel() == 32


def test_point_zero_refuses_reducers_that_read_attention():
    from simprune.config import make_config
    from simprune.frameworks.parts import build_plans

    for method in ("evit", "tome", "simprune"):
        cfg = make_config({"method": method, "reduce_at": [0, 4]})
        with pytest.raises(ValueError, match=r"cannot reduce at point 0.*reducers that can: .*random"):
            build_plans(cfg)
    student, _ = build_plans(make_config({"method": "mean_sim", "reduce_at": [0, 4]}))
    assert student.reducer is not None
