"""Sittings of ``simprune study``: dry run, skipping finished cells, refusing changed settings,
the time limit and resuming, failed cells, parallel sittings and their locks, the sitting log,
SIGTERM, and user errors through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from study_testkit import METHODS, REPO, FakeTrainer, NoTraining, read_csv, study_args, write_study

from simprune.checkpoint import load_checkpoint
from simprune.cli import main as cli_main
from simprune.study import run_study, runner
from simprune.train import loop


def test_dry_run_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "dry"
    assert run_study(study_args("--config", str(recipe), "--out", str(out), "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0: not started" in text and "FLOPs 100.0% of dense" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0: not started" in text
    assert not out.exists()


def test_dry_run_names_the_sitting_training_a_cell(tmp_path, monkeypatch, capsys):
    """A cell another live sitting holds shows its last checkpoint and who trains it now."""
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "dry"
    dense = out / "dense" / "seed0"
    dense.mkdir(parents=True)
    host = __import__("socket").gethostname()
    (dense / "study.lock").write_text(json.dumps({"pid": os.getppid(), "host": host, "started": "t0"}))
    assert run_study(study_args("--config", str(recipe), "--out", str(out), "--dry-run")) == 0
    text = capsys.readouterr().out
    assert (f"cell 1/2: Dense seed 0: not started, being trained now by pid "
            f"{os.getppid()} on host {host} since t0;") in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0: not started;" in text


def test_rerun_skips_finished_cells(finished_study, monkeypatch, capsys):
    recipe, out, _ = finished_study
    ckpt = out / "simprune-sliding_kr0.8" / "seed0" / "checkpoint.pt"
    before = (ckpt.stat().st_mtime_ns, ckpt.read_bytes())
    NoTraining.calls = 0
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    assert NoTraining.calls == 0
    assert (ckpt.stat().st_mtime_ns, ckpt.read_bytes()) == before
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0: finished, skipped" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0: finished, skipped" in text
    assert "2/2 cells finished" in text
    log = json.loads((out / "study.json").read_text())
    assert len(log["sittings"]) >= 2 and log["sittings"][-1]["cells_trained"] == 0


def test_changed_study_refuses_finished_cells(finished_study, monkeypatch):
    recipe, out, _ = finished_study
    monkeypatch.setattr(loop, "Trainer", NoTraining)
    sittings = len(json.loads((out / "study.json").read_text())["sittings"])
    stale = r"trained with other settings \(lr: cell 0.001 vs study 0.005\)"
    for extra in ([], ["--report-only"]):
        with pytest.raises(ValueError, match=stale):
            run_study(study_args("--config", str(recipe), "--out", str(out), "--set", "lr=0.005", *extra))
    assert len(json.loads((out / "study.json").read_text())["sittings"]) == sittings


def test_time_limit_then_resume(data_root, tmp_path, capsys):
    """A sitting that runs out of time leaves the first cell at a checkpoint and the second not
    started; the same command continues the first from its checkpoint to the end."""
    recipe = write_study(tmp_path, data_root)
    out = tmp_path / "runs" / "interrupted"
    argv = ["--config", str(recipe), "--out", str(out)]
    assert run_study(study_args(*argv, "--time-limit", "0.0001")) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 (new, 2 steps)" in text and "time limit of 0.0001 min reached" in text
    dense = out / "dense" / "seed0"
    assert load_checkpoint(dense / "checkpoint.pt")["step"] == 1
    assert not (dense / "results.json").exists()
    assert not (out / "simprune-sliding_kr0.8").exists()
    md = (out / "results.md").read_text()
    assert "Unfinished cells (2 of 2" in md and "Dense seed 0: stopped at step 1/2" in md
    rows = read_csv(out / "results.csv")
    assert [r["seeds_finished"] for r in rows] == ["0", "0"] and rows[0]["knn_top1_mean"] == ""

    assert run_study(study_args(*argv)) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 (resumed at step 1/2)" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0 (new, 2 steps)" in text
    res = json.loads((dense / "results.json").read_text())
    assert res["finished"] and res["step"] == 2 and res["train_steps_this_run"] == 1
    assert "knn_top1" in res and "linear_top1" in res
    assert load_checkpoint(dense / "checkpoint.pt")["step"] == 2
    rows = read_csv(out / "results.csv")
    assert [r["seeds_finished"] for r in rows] == ["1", "1"]
    assert "All 2 cells finished" in (out / "results.md").read_text()
    log = json.loads((out / "study.json").read_text())
    assert [s["cells_trained"] for s in log["sittings"]] == [1, 2]


def test_cli_reports_errors(tmp_path, capsys):
    recipe = write_study(tmp_path, extra="colour = 1")
    assert cli_main(["study", "--config", str(recipe), "--dry-run"]) == 2
    assert "unknown study keys ['colour']" in capsys.readouterr().err


def test_failed_cell_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    methods = METHODS.replace('name = "Dense"', 'name = "SimPrune first"\nmethod = "simprune"\n'
                              '[[methods]]\nname = "Dense"', 1)
    recipe = write_study(tmp_path, methods=methods)
    out = tmp_path / "runs" / "fail"
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 1
    captured = capsys.readouterr()
    text = captured.out
    assert "cell 1/3: SimPrune first kr=0.8 seed 0 failed: the loss became NaN" in text
    assert "cell 2/3: Dense seed 0 (new, 2 steps)" in text and "1/3 cells finished" in text
    assert ("simprune: error: cell 1/3: SimPrune first kr=0.8 seed 0 failed at step 1: the loss "
            "became NaN") in captured.err and "Rerunning will not help" in captured.err
    assert "cell 3/3: SimPrune sliding kr=0.8 seed 0 failed at step 1" in captured.err
    assert "2 run(s) of the study failed" in captured.err
    assert "run the same command again" not in text  # both unfinished cells fail deterministically
    assert json.loads((out / "simprune-first_kr0.8" / "seed0" / "study_error.json").read_text())["step"] == 1
    md = (out / "results.md").read_text()
    assert "SimPrune first kr=0.8 seed 0: failed (the loss became NaN" in md and "at step 1 " in md
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["seeds_finished"], r["knn_top1_mean"]) for r in rows] == [
        ("SimPrune first", "0", ""), ("Dense", "1", "30.0000"), ("SimPrune sliding", "0", "")]


def test_parallel_sittings_skip_locked_cells_and_take_over_stale_locks(tmp_path, monkeypatch, capsys):
    """A cell locked by a live process (another sitting) is skipped and left alone; a lock left by
    a process that is gone is taken over; the lock is released when the cell ends."""
    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    methods = METHODS.replace('method = "simprune"\nwindow = "sliding"', 'method = "random"')
    recipe = write_study(tmp_path, methods=methods)
    out = tmp_path / "runs" / "parallel"
    dense, pruned = out / "dense" / "seed0", out / "simprune-sliding_kr0.8" / "seed0"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = __import__("socket").gethostname()
    for folder, pid in ((dense, os.getppid()), (pruned, int(dead.stdout))):
        folder.mkdir(parents=True)
        (folder / "study.lock").write_text(json.dumps({"pid": pid, "host": host, "started": "t0"}))

    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert f"cell 1/2: Dense seed 0: being trained by another sitting (pid {os.getppid()}" in text
    assert "cell 2/2: SimPrune sliding kr=0.8 seed 0 (new, 2 steps)" in text
    assert "1 cells are being trained by another sitting" in text
    assert not (dense / "results.json").exists() and (dense / "study.lock").exists()
    assert (pruned / "results.json").exists() and not (pruned / "study.lock").exists()

    (dense / "study.lock").unlink()  # that sitting ended
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 (new, 2 steps)" in text and "2/2 cells finished" in text
    assert not list(out.rglob("study.lock"))


def test_side_by_side_sittings_both_logged(tmp_path, monkeypatch):
    """A sitting of the same study that ends while this one trains keeps its study.json entry."""
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "log"

    def other_sitting_ends(study, time_limit, counts=None, log=None, phase="all", methods=None):
        (study.out / "study.json").write_text(json.dumps({"sittings": [{"command": "other"}]}))
        counts.update(trained=0, finished=0, seconds=1.0)
        return counts

    monkeypatch.setattr(runner, "run_cells", other_sitting_ends)
    out.mkdir(parents=True)
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert [s["command"] for s in sittings][0] == "other" and len(sittings) == 2
    assert sittings[1]["command"].startswith("simprune study --config")


def test_sigterm_ends_a_sitting_cleanly(data_root, tmp_path):
    """SIGTERM (a scheduler, ``kill``) stops ``simprune study`` like Ctrl-C: exit 143, a message,
    the sitting logged in study.json, the cell's lock released, and the cell resumable."""
    recipe = write_study(tmp_path, data_root)
    out = tmp_path / "runs" / "term"
    metrics = out / "dense" / "seed0" / "metrics.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "simprune.cli", "study", "--config", str(recipe), "--out", str(out),
           "--set", "epochs=20"]  # 160 steps: long enough to be stopped mid-cell
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted; run the same command to" in err
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert len(sittings) == 1 and sittings[0]["cells_trained"] == 0
    assert not (out / "dense" / "seed0" / "study.lock").exists()
    assert load_checkpoint(out / "dense" / "seed0" / "checkpoint.pt")["step"] >= 1


def test_a_sitting_is_logged_when_it_starts_and_completed_when_it_ends(tmp_path, monkeypatch):
    """study.json holds the sitting while it trains (``state: running``), so one killed outright
    (SIGKILL, a power cut) is still in the log; its end completes the same entry."""
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "log"
    seen = []

    def trains(study, time_limit, counts=None, log=None, phase="all", methods=None):
        seen.extend(json.loads((study.out / "study.json").read_text())["sittings"])
        counts.update(trained=1, finished=0, seconds=2.0)
        return counts

    monkeypatch.setattr(runner, "run_cells", trains)
    out.mkdir(parents=True)
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    assert len(seen) == 1 and seen[0]["state"] == "running"
    assert seen[0]["command"].startswith("simprune study")
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert len(sittings) == 1 and sittings[0]["id"] == seen[0]["id"]
    assert sittings[0]["state"] == "ended" and sittings[0]["cells_trained"] == 1
    assert sittings[0]["wall_seconds"] == 2.0


def test_two_sittings_of_one_process_in_one_second_log_two_entries(tmp_path, monkeypatch):
    """The CI failure of stop 32: a study run twice from one Python process within the same
    second gave both sittings one id, so the second overwrote the first in ``study.json``."""
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "twice"
    out.mkdir(parents=True)

    class FrozenClock(runner.datetime):
        @classmethod
        def now(cls, tz=None):
            return runner.datetime(2026, 12, 7, 23, 0, 0, tzinfo=tz)

    def trains(study, time_limit, counts=None, log=None, phase="all", methods=None):
        counts.update(trained=1, finished=0, seconds=1.0)
        return counts

    monkeypatch.setattr(runner, "datetime", FrozenClock)
    monkeypatch.setattr(runner, "run_cells", trains)
    for _ in range(2):
        assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert len(sittings) == 2 and sittings[0]["id"] != sittings[1]["id"]
    assert [s["started"] for s in sittings] == ["2026-12-07T23:00:00+00:00"] * 2


def test_a_sitting_killed_outright_is_marked_killed_by_the_next(tmp_path, monkeypatch):
    """An entry left ``running`` by a process of this machine that is gone becomes ``killed``; one
    whose process lives (a sitting side by side) or of another machine stays ``running``."""
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "killed"
    out.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = __import__("socket").gethostname()
    old = [{"command": "a", "state": "running", "id": f"t0/{host}/{int(dead.stdout)}"},
           {"command": "b", "state": "running", "id": f"t1/{host}/{os.getppid()}"},
           {"command": "c", "state": "running", "id": f"t2/elsewhere/{int(dead.stdout)}"}]
    (out / "study.json").write_text(json.dumps({"sittings": old}))

    def trains(study, time_limit, counts=None, log=None, phase="all", methods=None):
        counts.update(trained=0, finished=0, seconds=1.0)
        return counts

    monkeypatch.setattr(runner, "run_cells", trains)
    assert run_study(study_args("--config", str(recipe), "--out", str(out))) == 0
    states = [s["state"] for s in json.loads((out / "study.json").read_text())["sittings"]]
    assert states == ["killed", "running", "running", "ended"]


def test_methods_limits_the_sitting_and_an_unknown_name_lists_the_methods(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    recipe = write_study(tmp_path)
    out = tmp_path / "runs" / "only"
    assert run_study(study_args("--config", str(recipe), "--out", str(out), "--methods", "Dense")) == 0
    text = capsys.readouterr().out
    assert "cell 1/2: Dense seed 0 (new, 2 steps)" in text and "cell 2/2" not in text.split("\n\n")[0]
    assert "1/2 cells finished" in text
    assert not (out / "simprune-sliding_kr0.8").exists()
    log = json.loads((out / "study.json").read_text())
    assert log["sittings"][-1]["command"].endswith("--methods Dense")
    with pytest.raises(ValueError, match=r"--methods 'Sparse': not a method of study .*'Dense', "
                                         r"'SimPrune sliding'"):
        run_study(study_args("--config", str(recipe), "--out", str(out), "--methods", "Sparse"))
