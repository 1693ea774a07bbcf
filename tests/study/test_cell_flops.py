"""A study cell's training FLOPs: counted on the cell's own config, averaged over a warm-up."""

from __future__ import annotations

import pytest
from study_testkit import TINY

from simprune.bench.flops import step_report
from simprune.config import make_config
from simprune.study.flops import flops_percent, flops_ratio


def test_flops_ratio_is_the_counted_step_of_the_cell_config():
    cfg = make_config({**TINY, "framework": "mocov3", "method": "simprune", "keep_rate": 0.7})
    assert flops_ratio(cfg) == pytest.approx(step_report(cfg)["flops_ratio"], rel=1e-9)
    assert 0.5 < flops_ratio(cfg) < 0.9
    dense = {k: v for k, v in TINY.items()}
    assert flops_percent(make_config({**dense, "method": "dense"})) == 100.0


def test_warmup_is_averaged_over_training():
    # a keep-rate warm-up (rate 1 for the first half, then a step to 0.5): the cost is the mean
    warm = make_config({**TINY, "method": "evit", "keep_rate": 0.5, "keep_warmup": [0.5, 0.5]})
    full = flops_ratio(make_config({**TINY, "method": "evit", "keep_rate": 1.0}))
    half = flops_ratio(make_config({**TINY, "method": "evit", "keep_rate": 0.5}))
    assert full == pytest.approx(1.0, abs=1e-3) and half < 0.8
    assert flops_ratio(warm) == pytest.approx((full + half) / 2, rel=1e-6)
