"""Group maps and statuses on real reducer outputs (tiny random framework, both branches)."""

from __future__ import annotations

import pytest
import torch
from viz_testkit import TINY, random_image

from simprune.reducers import REDUCERS
from simprune.viz.masks import FUSED, KEPT, MERGED, kept_from_ids, merge_groups, num_groups, patch_status
from simprune.viz.overlay import group_rgba, point_rgba
from simprune.viz.runs import fresh_framework
from simprune.viz.trace import display_augment, trace_pruning


def trace_of(method: str):
    cfg, fw = fresh_framework(TINY, method)
    return trace_pruning(fw, display_augment(cfg, fw), random_image(5), progress=0.3, seed=2)


@pytest.mark.parametrize("method", REDUCERS.names())
def test_every_reducer_maps_consistently(method):
    trace = trace_of(method)
    for branch in ("student", "teacher"):
        for p in trace.points:
            rec = getattr(p, branch)
            groups = merge_groups(rec.source, trace.grid)
            status = patch_status(rec.ids, rec.source, trace.grid)
            # one group per token, every token holds at least one original patch (padded slots,
            # ids -1 after a variable-count reducer's real tokens, hold none)
            if REDUCERS.get(method).exact_count:
                assert num_groups(groups).tolist() == [rec.tokens_out] * 2
            else:
                assert num_groups(groups).tolist() == (rec.ids >= 0).sum(1).tolist()
            assert torch.equal(status == KEPT, kept_from_ids(rec.ids, rec.source.shape[1], trace.grid))
            if method not in ("tome", "mctf", "expedite"):  # the merging (clustering) reducers
                assert not (status == MERGED).any()
            if not REDUCERS.get(method).adds_tokens:  # EViT's fused token, PCAE's dropped mean
                assert not (status == FUSED).any()


def test_tome_groups():
    trace = trace_of("tome")
    for p in trace.points:
        rec = p.student
        groups = merge_groups(rec.source, trace.grid)
        assert groups.shape == (2, 8, 8)
        assert num_groups(groups).tolist() == [rec.tokens_out] * 2
        assert (groups >= 0).all()  # ToMe drops nothing
        # patches sharing a source value share the token whose id is one of them
        for v in range(2):
            for pos in range(rec.tokens_out):
                members = (rec.source[v] == pos).nonzero().flatten()
                assert int(rec.ids[v, pos]) in members.tolist()
        rgba = point_rgba(rec.ids, rec.source, trace.grid)
        # merged groups are coloured, singletons are clear
        sizes = torch.stack([torch.bincount(g.flatten(), minlength=rec.tokens_out) for g in groups])
        multi = sizes.gather(1, groups.flatten(1)).reshape(groups.shape) > 1
        assert (rgba[..., 3][multi.numpy()] > 0.5).all() and (rgba[..., 3][~multi.numpy()] == 0).all()


def test_evit_fused_group_is_the_synthetic_token():
    trace = trace_of("evit")
    rec = trace.points[0].student
    status = patch_status(rec.ids, rec.source, trace.grid).flatten(1)
    fused_pos = rec.tokens_out - 1  # the fused token is appended last
    assert torch.equal(status == FUSED, rec.source == fused_pos)
    assert (rec.ids[:, fused_pos] == -1).all()
    assert int((status == FUSED).sum(1)[0]) == rec.tokens_in - (rec.tokens_out - 1)


def test_group_colours_differ_between_neighbours():
    groups = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3]]])
    status = torch.full_like(groups, MERGED)
    rgba = group_rgba(groups, status)
    colours = {tuple(rgba[0, r, c, :3].round(3)) for r, c in ((0, 0), (0, 2), (1, 0), (1, 2))}
    assert len(colours) == 4
