"""The training stack reproduces the golden trace: bitwise-equal per-step losses and kept token ids
of short deterministic DINO (local views) and MoCo v3 runs, dense and with SimPrune, EViT and ToMe."""

from __future__ import annotations

import json

import pytest
from golden_kit import FIXTURE, FRAMEWORKS, METHODS, run_one


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_golden_trace(data_root, tmp_path, framework, method):
    expected = json.loads(FIXTURE.read_text())[f"{framework}/{method}"]
    got = run_one(framework, method, tmp_path / "run")
    assert got["losses"] == expected["losses"], (
        f"per-step losses changed: {[float.fromhex(x) for x in got['losses']]} vs "
        f"{[float.fromhex(x) for x in expected['losses']]}")
    assert len(got["points"]) == len(expected["points"]) == 3
    for g, e in zip(got["points"], expected["points"]):
        assert g == e, f"kept ids changed at block {e['block']}"
