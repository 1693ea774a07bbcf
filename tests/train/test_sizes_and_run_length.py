"""The model's sizes from a recipe or the command line (named models as presets), the note on a
size mismatch, run lengths in epochs, steps or images seen, the planned steps printed at the
start, a training subset larger than the split, and progress bars during evaluation."""

from __future__ import annotations

import subprocess

import pytest
import torch
from train_testkit import PY, TINY, cli_args, run_env, with_heads

from simprune.cli import build_parser, train_overrides
from simprune.config import incompatible, make_config, planned_steps
from simprune.data import ArrayDataset
from simprune.models import create_model
from simprune.run import size_note
from simprune.train.evaluate import evaluate
from simprune.train.loop import Trainer, TrainingError, build_framework, check_config

#: a 64-px, patch-8 (64 tokens), 4-block, 32-wide, 2-head ViT made from the nano preset
SIZES = {"global_size": 64, "patch_size": 8, "depth": 4, "embed_dim": 32, "num_heads": 2}


def train(args, env):
    return subprocess.run([PY, "-m", "simprune.cli", "train", *args], env=env, capture_output=True,
                          text=True)


# ------------------------------------------------------------------ model sizes


def test_model_sizes_from_a_recipe_and_from_flags():
    cfg = make_config(with_heads({**TINY, **SIZES, "method": "evit", "reduce_at": [2, 3]}))
    check_config(cfg)
    backbone = build_framework(cfg).student["backbone"]
    assert backbone.grid_size == (8, 8) and backbone.pos_embed.shape == (1, 65, 32)
    assert backbone.depth == 4 and backbone.blocks[0].attn.num_heads == 2
    assert backbone.patch_embed.proj.kernel_size == (8, 8) and backbone.reduce_at == (2, 3)
    args = build_parser().parse_args(["train", "--model", "vit_nano_patch4_32", "--global-size", "64",
                                      "--patch-size", "8", "--depth", "4", "--embed-dim", "32",
                                      "--num-heads", "2"])
    flags = make_config({}, train_overrides(args))
    assert {k: getattr(flags, k) for k in SIZES} == SIZES


def test_a_named_model_alone_is_unchanged():
    cfg = make_config(with_heads(TINY))
    built = build_framework(cfg).student["backbone"].state_dict()
    preset = create_model("vit_nano_patch4_32", img_size=32).state_dict()
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in preset.items()}
    assert all(cfg.to_dict()[k] == 0 for k in ("patch_size", "embed_dim", "depth", "num_heads"))


@pytest.mark.parametrize("over, match", [
    ({"global_size": 30}, r"global_size 30 is not a multiple of patch_size 4 \(model "
                          r"vit_nano_patch4_32's\); valid: multiples of 4, e.g. 28, 32"),
    ({"global_size": 64, "patch_size": 6}, "global_size 64 is not a multiple of patch_size 6"),
    ({"embed_dim": 50}, "embed_dim 50 is not divisible by num_heads 3; valid num_heads: 1, 2, 5, 10, 25"),
    ({"depth": 6, "method": "evit"}, r"reducer.reduce_at \[4, 7, 10\] does not fit depth 6"),
    ({"patch_size": -1}, r"patch_size must be >= 1, or 0 for the model's \(4\), got -1"),
    ({"framework": "dino", "patch_size": 8, "local_views": 2, "local_size": 12},
     "dino.local_size 12 is not a multiple of patch_size 8"),
    ({"load_size": -3}, "load_size must be >= 1"),
])
def test_sizes_that_cannot_work_are_refused_naming_them(over, match):
    with pytest.raises(ValueError, match=match):
        check_config(make_config(with_heads({**TINY, **over})))


def test_a_dense_model_shallower_than_the_default_reduction_points_builds():
    cfg = make_config(with_heads({**TINY, "depth": 6}))
    check_config(cfg)
    assert build_framework(cfg).student["backbone"].depth == 6


def test_a_size_mismatch_is_named():
    note = size_note(make_config({"model": "vit_micro_patch4_32", "global_size": 64}))
    assert note == ("model vit_micro_patch4_32 is made for 32-px images (8x8 = 64 tokens); at "
                    "global_size 64 it sees 16x16 = 256 patch tokens of 4 px; for 64 tokens set "
                    "patch_size 8 (--patch-size 8)")
    assert size_note(make_config({"model": "vit_micro_patch4_32", "global_size": 32})) is None
    assert size_note(make_config({"model": "vit_micro_patch4_32", **SIZES})) is None  # chosen


# ------------------------------------------------------------------ run length


def test_one_run_length_epochs_steps_or_images_seen():
    steps = make_config(with_heads({**{k: v for k, v in TINY.items() if k != "epochs"}, "steps": 7}))
    assert planned_steps(steps, 16) == 7
    saved = steps.to_dict()
    assert saved["steps"] == 7 and "epochs" not in saved and "images_seen" not in saved
    assert make_config(saved).steps == 7 and not incompatible(saved, steps)  # reloads as it was
    seen = make_config({"images_seen": 100, "batch_size": 16})
    assert planned_steps(seen, 16) == 7 and "epochs" not in seen.to_dict()
    assert planned_steps(make_config({"epochs": 0.75, "batch_size": 16}), 782) == 587
    old = make_config({"epochs": 2.0}).to_dict()  # a run in epochs records only epochs
    assert old["epochs"] == 2.0 and "steps" not in old and "images_seen" not in old
    with pytest.raises(ValueError, match="r.toml: give one run length, got epochs = 1.0 and steps = 5; "
                                         "valid: epochs .*steps .*images_seen"):
        make_config({"epochs": 1.0, "steps": 5}, where="r.toml: ")
    with pytest.raises(ValueError, match="give one run length, got steps = 5 and images_seen = 9"):
        make_config({}, {"steps": "5", "images_seen": "9"})
    over = make_config({"epochs": 3.0}, {"steps": "5"})  # the command line replaces the recipe's
    assert (over.steps, over.epochs) == (5, 1.0)
    assert over.notes == ["steps overridden: ignoring the recipe's epochs = 3.0"]
    assert make_config({"steps": 5}, {"epochs": "2"}).steps == 0
    assert make_config({"epochs": 3.0, "steps": 0}).epochs == 3.0  # 0 steps: not given
    with pytest.raises(ValueError, match="steps must be >= 1, or 0"):
        check_config(make_config({"steps": -2}))


def test_a_subset_larger_than_the_training_split_is_refused(data_root, tmp_path):
    cfg = make_config(with_heads({**TINY, "train_subset": 100000, "data": str(data_root),
                                  "out": str(tmp_path / "run")}))
    with pytest.raises(TrainingError, match="train_subset 100000 is larger than the 50000 images of "
                                            "cifar10's training split; valid: 1 to 50000, or 0 for all"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_a_run_in_steps_prints_its_plan_and_the_size_note(data_root, tmp_path):
    """One tiny real run: 64-px images on the 32-px nano preset, 3 planned steps, 2 this sitting."""
    cfg = {k: v for k, v in TINY.items() if k != "epochs"}
    args = cli_args(**{**cfg, "train_subset": 32, "global_size": 64, "steps": 3, "max_steps": 2,
                       "eval_at_end": False, "out": tmp_path / "run"})
    res = train(args, run_env(data_root))
    assert res.returncode == 0, res.stderr
    assert ("planned 3 steps (steps 3): 1.5 epochs of 2 steps, batch 16, 32 training images, 48 "
            "images seen; this sitting stops at max_steps 2") in res.stdout
    assert ("simprune: note: model vit_nano_patch4_32 is made for 32-px images (8x8 = 64 tokens); at "
            "global_size 64 it sees 16x16 = 256 patch tokens of 4 px") in res.stderr
    assert '"steps": 3' in (tmp_path / "run" / "config.json").read_text()


def test_a_run_with_its_own_sizes_evaluates_and_serves_as_a_frozen_teacher(data_root, tmp_path):
    from simprune.teachers.frozen import load_frozen_teacher

    cfg = {k: v for k, v in TINY.items() if k != "epochs"}
    out = tmp_path / "run"
    res = train(cli_args(**{**cfg, **SIZES, "steps": 1, "eval_at_end": False, "out": out}),
                run_env(data_root))
    assert res.returncode == 0, res.stderr
    assert "note" not in res.stderr  # the sizes were chosen: nothing to say
    teacher = load_frozen_teacher(out)
    assert teacher.grid_size == (8, 8) and teacher.depth == 4 and teacher.embed_dim == 32
    ev = subprocess.run([PY, "-m", "simprune.cli", "eval", "--ckpt", str(out), "--knn-train", "64",
                         "--knn-test", "32"], env=run_env(data_root), capture_output=True, text=True)
    assert ev.returncode == 0 and "k-NN top-1" in ev.stdout, ev.stderr


# ------------------------------------------------------------------ progress


def _tiny_sets():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 2
    return ArrayDataset(images[:30], labels[:30], ["a", "b"]), ArrayDataset(images[30:], labels[30:],
                                                                            ["a", "b"])


def test_evaluation_shows_progress_when_asked(capsys):
    backbone = create_model("vit_nano_patch4_32", img_size=32)
    train_set, test_set = _tiny_sets()
    kw = dict(n_train=0, n_test=0, k=3, linear=True, size=32)
    quiet = evaluate(backbone, train_set, test_set, "cifar10", 2, torch.device("cpu"), **kw)
    assert capsys.readouterr().err == ""
    shown = evaluate(backbone, train_set, test_set, "cifar10", 2, torch.device("cpu"), **kw,
                     progress=True)
    err = capsys.readouterr().err
    assert "features (k-NN bank)" in err and "features (test)" in err and "linear probe" in err
    assert shown == quiet


def test_an_epochs_0_run_shows_evaluation_progress(data_root, tmp_path):
    args = cli_args(**{**TINY, "epochs": 0, "progress_bar": True, "out": tmp_path / "run"})
    res = train(args, run_env(data_root))
    assert res.returncode == 0, res.stderr
    assert "planned 0 steps (epochs 0)" in res.stdout
    assert "features (k-NN bank)" in res.stderr and "features (test)" in res.stderr
