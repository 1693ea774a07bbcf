"""``simprune train --flops-budget``: the keep rate is solved before step 1 and the plan line and
the saved config show it."""

from __future__ import annotations

import json
import subprocess

from train_testkit import PY, TINY, cli_args, run_env


def test_a_run_with_a_flops_budget_prints_the_solved_keep_rate(data_root, tmp_path):
    cfg = {k: v for k, v in TINY.items() if k != "epochs"}
    args = cli_args(**{**cfg, "framework": "supervised", "method": "evit", "flops_budget": 0.7,
                       "train_subset": 32, "steps": 1, "eval_at_end": False, "out": tmp_path / "run"})
    res = subprocess.run([PY, "-m", "simprune.cli", "train", *args], env=run_env(data_root),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["reducer"]
    rate = saved["keep_rate"]
    assert saved["flops_budget"] == 0.7 and 0.5 < rate < 0.9 and rate != 0.8
    assert f"; keep rate {rate:g} solved from flops budget 0.7" in res.stdout
    assert f"simprune: note: flops budget 0.7: keep rate {rate:g} reaches 0.6" in res.stderr \
        or f"simprune: note: flops budget 0.7: keep rate {rate:g} reaches 0.7" in res.stderr
