"""A study cell's training FLOPs: the config -> analytic FLOPs mapping, warm-up averaging."""

from __future__ import annotations

import pytest
from study_testkit import TINY

from simprune.bench.flops import StepConfig, step_report
from simprune.study.flops import flops_percent, flops_ratio, step_config
from simprune.train.config import make_config


def test_flops_mapping():
    cfg = make_config({**TINY, "framework": "mocov3", "method": "simprune", "keep_rate": 0.7})
    sc = step_config(cfg)
    assert sc == StepConfig(model="vit_nano_patch4_32", method="simprune", keep_rate=0.7,
                            framework="mocov3", batch_size=16, global_size=32, num_local=0,
                            local_size=16, reduce_at=(4, 7, 10), proj_hidden=64, proj_dim=32,
                            pred_hidden=64, head_hidden=2048, head_bottleneck=256, out_dim=4096)
    assert flops_ratio(cfg) == pytest.approx(step_report(sc)["flops_ratio"])
    assert flops_percent(make_config({**TINY, "method": "dense"})) == 100.0
    # a keep-rate warm-up (rate 1 for the first half): the cost is averaged over training
    warm = make_config({**TINY, "method": "evit", "keep_rate": 0.5, "keep_warmup": [0.5, 0.5]})
    full = flops_ratio(make_config({**TINY, "method": "evit", "keep_rate": 1.0}))
    half = flops_ratio(make_config({**TINY, "method": "evit", "keep_rate": 0.5}))
    assert flops_ratio(warm) == pytest.approx((full + half) / 2)
