"""``simprune viz diversity`` (PCAE Fig. 3a): the diversity measure, the curves and the command."""

from __future__ import annotations

import argparse
import json
import math

import torch

from simprune.viz.cli import add_viz_args, run_viz
from simprune.viz.diversity import nuclear_diversity, ordering


def test_diversity_of_orthogonal_and_of_identical_tokens():
    eye = torch.eye(8).unsqueeze(0) * 3.0  # 8 orthogonal tokens of different lengths
    assert float(nuclear_diversity(eye)) == 1.0
    same = torch.ones(1, 16, 5)
    assert math.isclose(float(nuclear_diversity(same)), 1 / math.sqrt(16), rel_tol=1e-9)
    x = torch.randn(3, 10, 4)
    ref = torch.stack([torch.linalg.matrix_norm(torch.nn.functional.normalize(x[b].double(), dim=-1),
                                                ord="nuc") / 10 for b in range(3)])
    torch.testing.assert_close(nuclear_diversity(x), ref)


def test_ordering_ranks_the_mean_from_a_layer_on():
    curves = {"a": {"diversity": [9.0, 1.0, 1.0]}, "b": {"diversity": [0.0, 2.0, 2.0]}}
    assert [d for d, _ in ordering(curves, 1)] == ["b", "a"]


def test_command_on_fresh_weights(data_root, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_viz_args(parser)
    args = parser.parse_args(["diversity", "--set", "model=vit_nano_patch4_32", "framework=mae",
                              "decoder_depth=1", "decoder_dim=16", "decoder_heads=2",
                              "--n-images", "8", "--out", str(tmp_path)])
    assert args.figure == "diversity"
    assert run_viz(args) == 0
    out = capsys.readouterr().out
    assert "random init (vit_nano_patch4_32)" in out
    res = json.loads((tmp_path / "diversity.json").read_text())
    curves = res["panels"][0]["curves"]
    assert curves["none"]["tokens"] == [64] * 13
    assert curves["mean_sim"]["tokens"] == [64, 32, 32, 32, 32, 16, 16, 16, 16, 8, 8, 8, 8]
    assert all(0 < v <= 1 for c in curves.values() for v in c["diversity"])
    assert (tmp_path / "diversity.png").stat().st_size > 0
    assert run_viz(args) == 0 and (tmp_path / "diversity-1.png").exists()  # never overwrites
    assert parser.parse_args([]).figure == "masks"
