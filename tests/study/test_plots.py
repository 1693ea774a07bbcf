"""The trade-off figure."""

from __future__ import annotations

import math

from simprune.study.plots import point_label, write_plot
from simprune.study.report import Row


def test_plot_marks_points_with_fewer_seeds(tmp_path):
    """A point with fewer finished seeds than the best-covered one says so in its label."""
    assert point_label(0.8, 2, 2) == "0.8"
    assert point_label(0.8, 1, 2) == "0.8, 1 seed"
    assert point_label(None, 1, 3) == "1 seed"
    assert point_label(None, 2, 2) == ""
    rows = [Row("Dense", "dense", None, 2, 2, (35.5, 0.4), (40.0, 0.3), 100.0, 10.0),
            Row("EViT", "evit", 0.8, 2, 1, (35.1, math.nan), (39.0, math.nan), 77.0, 8.0),
            Row("EViT", "evit", 0.7, 2, 0, None, None, 68.0, None)]
    write_plot(rows, tmp_path / "p.png", "t")
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "p.png").ndim == 3


def test_a_classifier_study_without_probes_gets_no_empty_linear_panel(tmp_path):
    """Tri-Level's study reports test top-1 only: one panel, not an empty 'linear top-1' beside it;
    an SSL study keeps both."""
    import matplotlib.image

    rows = [Row("Dense", "dense", None, 2, 2, (52.8, 0.4), None, 100.0, 10.0, metric="test"),
            Row("Token", "attn_topk", 0.8, 2, 2, (51.9, 0.3), None, 79.3, 7.4, metric="test")]
    write_plot(rows, tmp_path / "one.png", "t")
    h, w = matplotlib.image.imread(tmp_path / "one.png").shape[:2]
    assert w / h < 1.6  # one 5.5 x 4.2 in panel
    ssl = [Row("Dense", "dense", None, 2, 2, (35.5, 0.4), (40.0, 0.3), 100.0, 10.0)]
    write_plot(ssl, tmp_path / "two.png", "t")
    h, w = matplotlib.image.imread(tmp_path / "two.png").shape[:2]
    assert w / h > 2.2  # k-NN and linear panels
