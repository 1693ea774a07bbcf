"""Faults in an image folder, each in a tiny real run (a subprocess of ``simprune train``): an empty
class folder, a test class the training split lacks, a corrupt image. Each ends in its message and
exit code: a warning and a right evaluation, or one error line before anything is trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_testkit import PY, run_env  # noqa: E402

COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 220), "owl": (200, 200, 40)}


def image_folder(root: Path, train=("cat", "dog", "fox"), test=("cat", "dog", "fox"),
                 empty=()) -> Path:
    """``root/train/<class>`` (12 JPEGs each; ``empty`` folders with none) and ``root/test``
    (4 each): noisy 40x48 images of one colour per class, so k-NN on random features is exact."""
    rng = np.random.default_rng(0)
    for c in empty:
        (root / "train" / c).mkdir(parents=True)
    for split, classes, n in (("train", train, 12), ("test", test, 4)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(COLOURS[c])[None, None] + rng.normal(0, 20, (40, 48, 3)), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(d / f"{i:03d}.jpg", quality=90)
    return root


def train(folder: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """A tiny run on the folder: nano ViT, batch 8, 2 steps, k-NN on every image (k = 5)."""
    argv = ["train", "--dataset", "imagefolder", "--data", str(folder), "--model", "vit_nano_patch4_32",
            "--batch-size", "8", "--steps", "2", "--knn-k", "5", "--knn-train", "0", "--knn-test", "0",
            "--moco-hidden", "64", "--moco-dim", "32", "--progress-bar", "false", "--log-every", "1",
            "--out", str(out)]
    env = run_env(folder)
    env["SIMPRUNE_CACHE"] = str(tmp_path / "cache")  # the test's folders stay out of the real cache
    return subprocess.run([PY, "-m", "simprune.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=300)


def test_an_empty_class_folder_warns_and_evaluation_stays_right(tmp_path):
    folder = image_folder(tmp_path / "data", empty=("bird",))
    res = train(folder, tmp_path / "run", tmp_path)
    assert res.returncode == 0, res.stderr
    assert (f"simprune: warning: 1 of 4 class folders in '{folder / 'train'}' hold no images and are "
            "skipped: bird") in res.stderr
    assert "Traceback" not in res.stderr
    assert "k-NN top-1 100.00%" in res.stdout  # before the fix: 0.00% (every label shifted by one)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["knn_top1"] == 100.0


def test_a_test_class_the_training_split_lacks_stops_before_training(tmp_path):
    folder = image_folder(tmp_path / "data", test=("cat", "dog", "fox", "owl"))
    res = train(folder, tmp_path / "run", tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == [f"simprune: error: class folder(s) owl of '{folder / 'test'}' are not classes of "
                     f"the training split '{folder / 'train'}' (missing or empty there); valid "
                     "classes: cat, dog, fox. Every split must use the training split's classes: add "
                     "training images for them, or remove them from this split"]
    assert not (tmp_path / "run").exists()  # refused before the first step: nothing written


def test_a_corrupt_image_names_the_file_and_the_fix(tmp_path):
    folder = image_folder(tmp_path / "data")
    bad = folder / "train" / "dog" / "005.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    res = train(folder, tmp_path / "run", tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"simprune: error: cannot decode image '{bad}'")
    assert line.endswith("Replace it with a readable copy, or delete it (or move it out of the data "
                         "folder), then run the same command again")
