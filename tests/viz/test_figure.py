"""Figures: PNGs written, of the expected size, never overwriting; the CLI functions end to end."""

from __future__ import annotations

import argparse

import pytest
import torch
from PIL import Image
from viz_testkit import TINY, random_image, save_run

from simprune.viz import cli as viz_cli
from simprune.viz.figure import plot_methods, plot_training
from simprune.viz.runs import fresh_framework, load_runs
from simprune.viz.trace import BRANCHES, display_augment, trace_pruning

METHODS = ("simprune", "evit", "tome")


@pytest.fixture(scope="module")
def traces():
    out = []
    for m in METHODS:
        cfg, fw = fresh_framework(TINY, m)
        out.append(trace_pruning(fw, display_augment(cfg, fw), random_image(0), progress=0.25, seed=1))
    return out


def test_same_views_for_every_method(traces):
    for t in traces[1:]:
        assert torch.equal(t.boxes, traces[0].boxes) and torch.equal(t.views, traces[0].views)
    simprune = traces[0]
    assert simprune.position == 0.25 and simprune.keep_rate == 0.8  # sliding window: p = t


def test_methods_figure_png(traces, tmp_path):
    path = tmp_path / "fig.png"
    written = plot_methods(traces, path)
    assert written == path and path.stat().st_size > 10_000
    with Image.open(path) as im:
        w, h = im.size
        assert im.format == "PNG"
    # 3 rows; 2 views x (view + 3 points + original) = 10 columns, wider than tall
    assert w > 2 * h and h > 300
    before = path.read_bytes()
    again = plot_methods(traces, path, branch="pair", show_original=False)
    assert again == tmp_path / "fig-1.png" and again.exists()
    assert path.read_bytes() == before  # the first file is untouched
    assert plot_methods(traces, path) == tmp_path / "fig-2.png"


def test_training_figure_sorted_by_step(traces, tmp_path):
    a, b = trace_pruning_with_step(traces[0], 50), trace_pruning_with_step(traces[0], 10)
    path = plot_training([a, b], tmp_path / "train.png")
    with Image.open(path) as im:
        assert im.size[1] > 200


def trace_pruning_with_step(trace, step):
    from dataclasses import replace

    return replace(trace, step=step, total_steps=100)


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    viz_cli.add_viz_args(p)
    return p.parse_args(list(argv))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "noise.png"
    Image.fromarray(random_image(7, 64).permute(1, 2, 0).numpy()).save(path)
    return path


def test_cli_branches_match_trace():
    assert viz_cli.BRANCHES == BRANCHES


def test_cli_one_checkpoint_several_methods(tmp_path, image_file, capsys):
    run = tmp_path / "run"
    save_run(run, step=30, total=120, method="simprune")
    args = parse("--ckpt", str(run), "--methods", *METHODS, "--image", str(image_file))
    assert viz_cli.run_viz(args) == 0
    files = sorted((run / "viz").glob("*.png"))
    assert [f.name for f in files] == ["viz_simprune-evit-tome_step30_img-noise_seed0_student.png"]
    assert "wrote" in capsys.readouterr().out
    assert viz_cli.run_viz(args) == 0  # again: a new file, the first kept
    out = capsys.readouterr().out
    assert "exists and was kept" in out
    assert len(list((run / "viz").glob("*.png"))) == 2


def test_cli_across_training(tmp_path, image_file):
    run = tmp_path / "run"
    for step, seed in ((90, 1), (10, 2), (50, 3)):
        save_run(run, step=step, total=100, name=f"checkpoint_{step:06d}.pt", seed=seed, method="simprune")
    runs = load_runs([run])
    assert [r.step for r in runs] == [10, 50, 90]
    assert [round(r.progress, 2) for r in runs] == [0.1, 0.5, 0.9]
    out = tmp_path / "figs"
    args = parse("--ckpt", str(run), "--image", str(image_file), "--out", str(out), "--branch", "pair")
    assert viz_cli.run_viz(args) == 0
    assert [f.name for f in out.glob("*.png")] == ["viz_training_simprune_img-noise_seed0_pair.png"]


def test_cli_fresh_weights(tmp_path, image_file):
    sets = [f"{k}={v}" for k, v in TINY.items()]
    args = parse("--methods", "simprune", "evit", "--image", str(image_file), "--out", str(tmp_path),
                 "--set", *sets, "--progress", "0.5")
    assert viz_cli.run_viz(args) == 0
    assert len(list(tmp_path.glob("viz_fresh_simprune-evit_*.png"))) == 1


def test_cli_errors(tmp_path, image_file):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        viz_cli.run_viz(parse("--ckpt", str(tmp_path / "nowhere"), "--image", str(image_file)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint\*\.pt"):
        viz_cli.run_viz(parse("--ckpt", str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="--progress"):
        viz_cli.run_viz(parse("--progress", "1.5"))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        viz_cli.run_viz(parse("--set", "model", "--image", str(image_file)))
