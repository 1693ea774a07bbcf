"""``simprune viz logs``: logged series of runs against training progress."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from simprune.viz.logs import (
    mean_over_seeds,
    part_of,
    plot_logs,
    read_run,
    run_logs,
    segment_table,
    series_keys,
)


def write_run(folder, seed_shift=0.0, steps=(10, 20, 30, 40), spe=20, epochs=2.0, evals=(20, 40)):
    """A run folder as ``simprune train`` writes it: metrics.jsonl and config.json."""
    folder.mkdir(parents=True)
    lines = []
    for s in steps:
        rec = {"step": s, "epoch": s / spe, "loss": 5.0 - s / 10, "window": s / (spe * epochs)}
        for p in (1, 2, 3):
            rec[f"m2o/p{p}"] = 0.5 - s / 100 + seed_shift
            rec[f"fill/p{p}"] = rec[f"dup/p{p}"] = 0.4 - p / 10
            rec[f"sim_kept/p{p}"] = 0.9 - p / 10
        lines.append(json.dumps(rec))
        if s in evals:
            lines.append(json.dumps({"step": s, "eval": {"knn_top1": 30.0 + s / 10 + seed_shift}}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "config.json").write_text(json.dumps({"epochs": epochs, "batch_size": 8, "steps": 0,
                                                    "images_seen": 0}))
    return folder


def test_read_run_collects_training_and_evaluation_series(tmp_path):
    run = read_run(write_run(tmp_path / "a"))
    assert run.total_steps == 40 and run.steps_per_epoch == pytest.approx(20)
    assert run.series["knn_top1"] == [(20, 32.0), (40, 34.0)]
    assert run.series["m2o/p2"][0] == (10, pytest.approx(0.4))
    assert [k for k, _ in series_keys(run, "fill")] == ["fill/p1", "fill/p2", "fill/p3"]
    assert series_keys(run, "loss") == [("loss", None)]
    assert run.x(20, "progress") == 0.5 and run.x(20, "epoch") == 1.0 and run.x(20, "step") == 20


def test_mean_over_seeds_averages_at_common_steps(tmp_path):
    a = read_run(write_run(tmp_path / "sliding" / "seed0"))
    b = read_run(write_run(tmp_path / "sliding" / "seed1", seed_shift=0.1, steps=(10, 20, 30)))
    c = read_run(write_run(tmp_path / "dense" / "seed0"))
    merged = mean_over_seeds([a, b, c])
    assert len(merged) == 2
    sliding = merged[0]
    assert "2 seeds" in sliding.label
    assert [s for s, _ in sliding.series["m2o/p1"]] == [10, 20, 30]
    assert sliding.series["m2o/p1"][0][1] == pytest.approx(0.5 - 0.1 + 0.05)
    assert sliding.series["knn_top1"] == [(20, pytest.approx(32.05))]


def test_plot_writes_a_png_and_never_overwrites(tmp_path):
    runs = [read_run(write_run(tmp_path / "a")), read_run(write_run(tmp_path / "b"))]
    out = tmp_path / "fig.png"
    p1 = plot_logs(runs, ["fill", "m2o", "knn_top1"], out)
    p2 = plot_logs(runs, ["loss"], out, x="epoch")
    assert p1 == out and p2 == tmp_path / "fig-1.png"
    assert Image.open(p1).size[0] > 500


def test_unknown_metric_lists_what_was_logged(tmp_path):
    runs = [read_run(write_run(tmp_path / "a"))]
    with pytest.raises(ValueError, match=r"no run logged 'dupp'; logged: .*fill.*knn_top1.*m2o"):
        plot_logs(runs, ["dupp"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="--x 'time'"):
        plot_logs(runs, ["fill"], tmp_path / "x.png", x="time")


def test_run_logs_names_the_file_and_checks_paths(tmp_path, capsys):
    write_run(tmp_path / "a")
    written = run_logs([str(tmp_path / "a")], None, "progress", str(tmp_path / "out"))
    assert written.name == "logs_fill-m2o-dup-sim_kept_progress.png" and written.exists()
    assert f"wrote {written}" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        run_logs([str(tmp_path / "missing")], None, "progress", None)
    with pytest.raises(ValueError, match="--runs"):
        run_logs([], None, "progress", None)


def test_cli_logs_figure(tmp_path):
    from simprune.cli import main

    write_run(tmp_path / "a")
    assert main(["viz", "logs", "--runs", str(tmp_path / "a"), "--metrics", "m2o", "window",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").exists()


def test_part_of_gives_each_part_its_closing_evaluation():
    assert [part_of(p, 4) for p in (0.0, 0.001, 0.25, 586 / 2343, 0.26, 0.5, 0.999, 1.0)] == \
        [0, 0, 0, 0, 1, 1, 3, 3]
    assert part_of(0.7, 1) == 0


def test_segment_table_averages_each_part(tmp_path):
    runs = [read_run(write_run(tmp_path / "a"))]
    runs[0].label = "a"
    text = segment_table(runs, ["m2o", "knn_top1"], 2, x="epoch")
    rows = [line.split(" | ") for line in text.splitlines()]
    assert rows[0] == ["| run", "series", "0–1", "1–2 |"]
    assert rows[2] == ["| a", "m2o/p1", "0.35", "0.15 |"]  # steps 10, 20 | 30, 40: 0.5 - s/100
    assert rows[5] == ["| a", "knn_top1", "32", "34 |"]  # evaluated at steps 20 and 40
    assert len(rows) == 6
    lone = segment_table(runs, ["knn_top1"], 4)
    assert lone.splitlines()[2] == "| a | knn_top1 |  | 32 |  | 34 |"
    with pytest.raises(ValueError, match="--table 0; give the number of parts"):
        segment_table(runs, ["m2o"], 0)


def test_cli_logs_table_prints_and_writes_markdown(tmp_path, capsys):
    from simprune.cli import main

    write_run(tmp_path / "a")
    assert main(["viz", "logs", "--runs", str(tmp_path / "a"), "--metrics", "knn_top1",
                 "--table", "2", "--out", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "| a | knn_top1 | 32 | 34 |" in out and f"wrote {tmp_path / 'f.md'}" in out
    assert (tmp_path / "f.md").read_text().splitlines()[2] == "| a | knn_top1 | 32 | 34 |"
    assert main(["viz", "logs", "--runs", str(tmp_path / "a"), "--table", "0"]) != 0
    assert "--table 0" in capsys.readouterr().err
