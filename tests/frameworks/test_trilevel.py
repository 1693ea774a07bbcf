"""Tri-Level E-ViT (``framework = "trilevel"``): the attention-level mask, the sparse form against the
masked one, the token level against ``attn_topk``'s contract, the R_A warm-up, the CLS-attention
variance, the dense configuration against ``supervised``, and a run resumed right after a round."""

from __future__ import annotations

import math

import pytest
import torch
from reducer_testkit import images, tiny_model
from train_testkit import TINY, with_heads

from simprune.config import make_config
from simprune.drive import forward_reduced
from simprune.drive.plan import ReductionPlan
from simprune.frameworks import Batch, Progress
from simprune.frameworks.trilevel import Trilevel, attn_keep_at, trilevel_forward
from simprune.reducers import KeepRateSchedule, create_reducer
from simprune.reducers.attn_topk import AttnTopKReducer
from simprune.tokens import num_keep
from simprune.train.loop import Trainer, build_augment, build_framework, check_config


class Recording(AttnTopKReducer):
    """``attn_topk`` that keeps what it returned at every point (through the warm-up's copies)."""

    def __init__(self, attn_keep: float = 1.0, attn_form: str = "masked", outs=None) -> None:  # noqa: ANN001
        super().__init__(attn_keep, attn_form)
        self.outs = [] if outs is None else outs

    def with_attn_keep(self, attn_keep: float) -> Recording:
        return Recording(attn_keep, self.attn_form, self.outs)

    def __call__(self, point, k):  # noqa: ANN001, ANN204
        out = super().__call__(point, k)
        self.outs.append((point.state.num_patches, k, out))
        return out


def plan(keep: float, attn_keep: float, form: str = "masked", warmup=(0.0, 0.0)) -> ReductionPlan:  # noqa: ANN001
    return ReductionPlan(Recording(attn_keep, form), KeepRateSchedule(keep, *warmup))


@pytest.mark.parametrize("keep, attn_keep", [(0.7, 0.3), (1.0, 0.3), (0.5, 0.05), (0.9, 0.9)])
@torch.no_grad()
def test_every_kept_patch_row_keeps_ceil_ra_keys_and_cls_is_dense(keep, attn_keep):
    model = tiny_model(seed=1)
    p = plan(keep, attn_keep)
    out, _ = trilevel_forward(model, images(3, 4), p, 1.0, model.reduce_at)
    assert len(p.reducer.outs) == 2  # both points choose connections, even at keep 1 (K = N)
    for n, k, state in p.reducer.outs:
        assert k == num_keep(n, keep) and state.num_patches == k
        mask = state.attn_mask
        assert mask.shape == (3, 1 + k, 1 + k)
        assert mask[:, 1:].sum(-1).eq(math.ceil(round(attn_keep * (1 + k), 9))).all()
        assert mask[:, 0].all() and mask[:, :, 0].all()  # CLS row and column dense
    assert torch.equal(out.state.attn_mask, p.reducer.outs[-1][2].attn_mask)


def test_sparse_form_computes_the_masked_form():
    model = tiny_model(seed=2)
    x = images(2, 7)
    results = []
    for form in ("masked", "sparse"):
        model.zero_grad()
        p = plan(0.7, 0.3, form)
        out, _ = trilevel_forward(model, x, p, 1.0, model.reduce_at)
        assert (out.state.attn_keys is not None) == (form == "sparse")
        (out.state.x ** 2).mean().backward()
        grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
        results.append((out.state.x.detach(), grads, [o[2].ids for o in p.reducer.outs]))
    (xm, gm, im), (xs, gs, is_) = results
    assert all(torch.equal(a, b) for a, b in zip(im, is_))
    torch.testing.assert_close(xs, xm, atol=1e-5, rtol=1e-5)
    assert gm.keys() == gs.keys()
    for name in gm:
        torch.testing.assert_close(gs[name], gm[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
@torch.no_grad()
def test_token_level_is_attn_topk(t):
    """Without the attention level, the token level is exactly ``attn_topk`` at the plan's keep rate
    (and, during the warm-up, at the warmed-up rate) through the one-branch driver."""
    model = tiny_model(seed=3)
    x = images(2, 9)
    p = ReductionPlan(create_reducer("attn_topk"), KeepRateSchedule(0.6, 0.1, 0.5))
    ours, _ = trilevel_forward(model, x, p, t, model.reduce_at)
    ref = forward_reduced(model, x, create_reducer("attn_topk"), p.keep_rate(t))
    assert torch.equal(ours.state.x, ref.state.x)
    assert [(r.tokens_in, r.tokens_out) for r in ours.points] == [
        (r.tokens_in, r.tokens_out) for r in ref.points]
    for a, b in zip(ours.points, ref.points):
        assert torch.equal(a.ids, b.ids)
    assert ours.state.attn_mask is None and ours.state.attn_keys is None


def test_attention_keep_follows_the_token_warm_up():
    p = plan(0.8, 0.3, warmup=(0.1, 0.5))
    ref = KeepRateSchedule(0.3, 0.1, 0.5)
    for t in (0.0, 0.09, 0.1, 0.2, 0.35, 0.5, 0.9):
        assert attn_keep_at(p, t) == pytest.approx(ref(t))
    assert attn_keep_at(p, 0.05) == 1.0 and attn_keep_at(p, 0.7) == 0.3
    model = tiny_model(seed=4)
    with torch.no_grad():
        trilevel_forward(model, images(2, 1), p, 0.3, model.reduce_at)
    ra = ref(0.3)
    for _, k, state in p.reducer.outs:
        assert state.attn_mask[:, 1:].sum(-1).eq(math.ceil(round(ra * (1 + k), 9))).all()
    assert attn_keep_at(ReductionPlan(create_reducer("attn_topk"), KeepRateSchedule(0.8)), 0.5) == 1.0


def _config(**over):  # noqa: ANN003
    base = {"framework": "trilevel", "model": "vit_nano_patch4_32", "dataset": "cifar10",
            "batch_size": 4, "drop_path": 0.0}
    return make_config(base, over)


def _batch(cfg, fw, seed=0):  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    torch.manual_seed(seed)
    return Batch(build_augment(cfg, fw)(imgs), torch.tensor([0, 1, 2, 3]), torch.arange(4))


def test_all_levels_off_is_the_supervised_step():
    torch.manual_seed(0)
    cfg = _config()
    tri = build_framework(cfg)
    sup_cfg = make_config({"framework": "supervised", "model": "vit_nano_patch4_32",
                           "dataset": "cifar10", "batch_size": 4, "drop_path": 0.0})
    sup = build_framework(sup_cfg)
    sup.load_state_dict(tri.state_dict())
    prog = Progress(3, 10, 5)
    a, b = tri(_batch(cfg, tri), prog), sup(_batch(sup_cfg, sup), prog)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.extras["correct"], b.extras["correct"])
    assert "cls_attn_var" not in a.extras and tri.sample_filter(torch.arange(10)) is None
    a.loss.backward()
    b.loss.backward()
    for (n, p), q in zip(tri.named_parameters(), sup.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_cls_attention_variance_while_statistics_are_gathered():
    torch.manual_seed(1)
    cfg = _config(**{"trilevel.example": "forgetting"})
    fw = build_framework(cfg).eval()
    backbone = fw.student["backbone"]
    assert backbone.reduce_at[-1] == backbone.depth and fw.points == (4, 7, 10)
    batch = _batch(cfg, fw, seed=2)
    out = fw(batch, Progress(4, 100, 10))  # rounds at epochs 1..5: statistics until step 50
    with torch.no_grad():
        state = backbone.embed(batch.views.globals[0])
        for blk in backbone.blocks[:-1]:
            state = blk(state)
        _, extras = backbone.blocks[-1].attend(state, frozenset({"cls_attn"}))
        want = extras.cls_attn[:, 1:].var(dim=1)
    torch.testing.assert_close(out.extras["cls_attn_var"], want)
    assert "cls_attn_var" not in fw(batch, Progress(50, 100, 10)).extras  # after the last round
    flt = fw.sample_filter(torch.arange(100, 150))
    assert flt is not None and len(flt.active) == 40 and flt.needs_variance


def test_trilevel_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="attn_topk"):
        check_config(_config(**{"reducer.method": "evit"}))
    with pytest.raises(ValueError, match="example"):
        check_config(_config(**{"trilevel.example": "hardest"}))
    with pytest.raises(ValueError, match="example_keep"):
        check_config(_config(**{"trilevel.example": "forgetting", "trilevel.example_keep": 1.0}))
    with pytest.raises(ValueError, match="remove_frac"):
        check_config(_config(**{"trilevel.example": "random", "trilevel.remove_frac": 0.5}))
    with pytest.raises(ValueError, match="attn_form"):
        check_config(_config(**{"reducer.method": "attn_topk",
                                "reducer.options": {"attn_keep": 0.3, "attn_form": "csr"}}))
    assert Trilevel.epoch_share(_config(**{"trilevel.example": "forgetting", "train_subset": 1280,
                                           "batch_size": 128})) == 0.8
    assert Trilevel.epoch_share(_config()) == 1.0


def test_run_resumed_right_after_a_round_matches_one_run(data_root, tmp_path):
    """Killed right after round 1 (or between the rounds), the run resumes with the same subset,
    pool and statistics, and ends with the same weights and example level as a run in one go."""
    torch.set_num_threads(1)
    over = {**with_heads({**TINY, "framework": "trilevel"}), "data": str(data_root), "epochs": 3.0,
            "deterministic": True, "eval_at_end": False, "ckpt_every": 1, "log_every": 13,
            "method": "attn_topk", "keep_rate": 0.7, "reducer.options": {"attn_keep": 0.5},
            "trilevel": {"example": "forgetting", "example_keep": 0.75, "remove_frac": 0.0625,
                         "rounds_at": [1 / 3, 2 / 3]}}
    one = Trainer(make_config(over, {"out": str(tmp_path / "one"), "max_steps": 26}))
    assert one.steps_per_epoch == 12 and one.total_steps == 36  # 192 of 256 examples, batch 16
    one.run()
    assert one.filter.rounds_done == 2 and [h["removed"] for h in one.filter.history] == [16, 16]
    for cut in (13, 18):  # right after round 1 (applied at step 12), and between the rounds
        out = tmp_path / f"cut{cut}"
        first = Trainer(make_config(over, {"out": str(out), "max_steps": cut}))
        first.run()
        resumed = Trainer(make_config(over, {"out": str(out), "max_steps": 26}))
        a, b = first.filter.state_dict(), resumed.filter.state_dict()
        assert torch.equal(a["active"], b["active"]) and torch.equal(a["pool"], b["pool"])
        assert a["history"] == b["history"] and a["rounds_done"] == b["rounds_done"] == 1
        for key in a["stats"]:
            assert torch.equal(a["stats"][key], b["stats"][key]), key
        resumed.run()
        end, ref = resumed.filter.state_dict(), one.filter.state_dict()
        assert torch.equal(end["active"], ref["active"]) and end["history"] == ref["history"]
        for key in ref["stats"]:
            assert torch.equal(end["stats"][key], ref["stats"][key]), key
        for k, v in one.framework.state_dict().items():
            assert torch.equal(v, resumed.framework.state_dict()[k]), k


@pytest.mark.parametrize("form", ["masked", "sparse"])
def test_a_step_reads_nothing_back_to_the_host(monkeypatch, form):
    """All three levels on, in the warm-up: forward and backward with every tensor-to-host read
    disabled (the example level's statistics are device work too: tests/data/filters)."""
    torch.manual_seed(0)
    cfg = _config(**{"reducer.method": "attn_topk", "reducer.keep_rate": 0.8,
                     "reducer.keep_warmup": [0.1, 0.5], "trilevel.example": "forgetting",
                     "reducer.options": {"attn_keep": 0.3, "attn_form": form}})
    fw = build_framework(cfg)
    batch = _batch(cfg, fw)

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("a host read in the step")

    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    out = fw(batch, Progress(30, 100, 10))
    out.loss.backward()
    monkeypatch.undo()
    assert set(out.extras) == {"correct", "cls_attn_var"} and out.logs["attn_keep"] < 1.0
