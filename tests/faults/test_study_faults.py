"""A study with a failing cell, in a real sitting (a subprocess of ``simprune study`` on a tiny
one-cell grid): the sitting exits non-zero, names the cell and its error, and says when running
the same command again cannot help (a NaN loss recurs from the last good checkpoint; a setting
that cannot work fails before any step)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))
from study_testkit import write_study  # noqa: E402
from train_testkit import PY, REPO, run_env  # noqa: E402

DENSE = '[[methods]]\nname = "Dense"\nmethod = "dense"\n'


def study(recipe: Path, out: Path, data_root: Path, *sets: str) -> subprocess.CompletedProcess:
    argv = ["study", "--config", str(recipe), "--out", str(out), "--set", "epochs=1", *sets]
    return subprocess.run([PY, "-m", "simprune.cli", *argv], env=run_env(data_root), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_a_nan_cell_fails_the_sitting_and_rerunning_is_said_not_to_help(data_root, tmp_path):
    recipe = write_study(tmp_path, data_root, methods=DENSE)
    out = tmp_path / "runs" / "nan"
    for sitting in (1, 2):  # the second sitting resumes the cell and fails the same way
        res = study(recipe, out, data_root, "lr=1e6")
        assert res.returncode == 1, f"sitting {sitting}: {res.stderr}"
        assert "Traceback" not in res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("simprune: error:")]
        assert len(errors) == 2, res.stderr
        assert errors[0].startswith("simprune: error: cell 1/1: Dense seed 0 failed at step ")
        assert "the loss became NaN or inf" in errors[0] and "Rerunning will not help" in errors[0]
        assert "1 run(s) of the study failed" in errors[1] and "exit status 1" in errors[1]
        assert "run the same command again" not in res.stdout
    rec = json.loads((out / "dense" / "seed0" / "study_error.json").read_text())
    assert rec["deterministic"] is True and rec["cell"] == "cell 1/1: Dense seed 0"
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert [s.get("cells_failed") for s in sittings] == [1, 1]


def test_a_setting_that_cannot_work_names_the_cell_before_any_step(data_root, tmp_path):
    recipe = write_study(tmp_path, data_root, methods=DENSE)
    res = study(recipe, tmp_path / "runs" / "bad", data_root, "train_subset=100000")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("simprune: error:")]
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith("simprune: error: cell 1/1: Dense seed 0: train_subset 100000 is larger")
    assert "fails the same way until this is fixed" in errors[0]
    assert "step 1/" not in res.stdout
