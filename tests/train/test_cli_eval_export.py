"""`simprune eval`, `simprune export`, zero-epoch runs, the Python example and `bench flops`."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from train_testkit import PY, REPO, TINY, cli_args, run_env

from simprune.checkpoint import load_checkpoint
from simprune.models import create_model, load_weights


def cli(args, env):
    return subprocess.run([PY, "-m", "simprune.cli", *args], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    cfg = dict(TINY, framework="dino", method="simprune", epochs=0.25, out=out)
    res = cli(["train", *cli_args(**cfg)], run_env(data_root))
    assert res.returncode == 0, res.stderr
    assert "k-NN top-1" in res.stdout and "final k-NN top-1" in res.stdout
    return out


def test_results_and_eval_agree(trained, data_root):
    results = json.loads((trained / "results.json").read_text())
    assert results["finished"] and 0 <= results["knn_top1"] <= 100 and results["train_seconds"] > 0
    res = cli(["eval", "--ckpt", str(trained), "--json"], run_env(data_root))
    assert res.returncode == 0, res.stderr
    ev = json.loads(res.stdout.strip().splitlines()[-1])
    assert ev["knn_top1"] == pytest.approx(results["knn_top1"])  # same subsets, same weights


def test_export_loads_into_a_timm_named_model(trained, data_root, tmp_path):
    path = tmp_path / "backbone.safetensors"
    res = cli(["export", "--ckpt", str(trained), "--out", str(path)], run_env(data_root))
    assert res.returncode == 0, res.stderr
    model = create_model("vit_nano_patch4_32")
    report = load_weights(model, path)  # strict: no missing or unexpected key
    assert not report.missing and not report.unexpected
    saved = load_checkpoint(trained / "checkpoint.pt")["framework"]
    teacher = {k[len("teacher.backbone."):]: v for k, v in saved.items()
               if k.startswith("teacher.backbone.")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    bad = cli(["export", "--ckpt", str(trained), "--out", str(tmp_path / "x.bin")], run_env(data_root))
    assert bad.returncode == 2 and ".safetensors" in bad.stderr


def test_zero_epochs_evaluates_random_weights(data_root, tmp_path):
    cfg = dict(TINY, epochs=0, out=tmp_path / "rand")
    res = cli(["train", *cli_args(**cfg)], run_env(data_root))
    assert res.returncode == 0, res.stderr
    results = json.loads((tmp_path / "rand" / "results.json").read_text())
    assert results["step"] == 0 and "knn_top1" in results
    # its checkpoint holds the seeded initial weights, for `simprune eval` and `simprune finetune`
    saved = load_checkpoint(tmp_path / "rand" / "checkpoint.pt")
    assert saved["step"] == 0
    again = cli(["train", *cli_args(**dict(cfg, out=tmp_path / "rand2"))], run_env(data_root))
    assert again.returncode == 0, again.stderr
    twin = load_checkpoint(tmp_path / "rand2" / "checkpoint.pt")["framework"]
    assert saved["framework"].keys() == twin.keys()
    assert all(torch.equal(v, twin[k]) for k, v in saved["framework"].items())
    ev = cli(["eval", "--ckpt", str(tmp_path / "rand"), "--json"], run_env(data_root))
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["knn_top1"] == pytest.approx(results["knn_top1"])


def test_python_example_runs():
    res = subprocess.run([PY, str(REPO / "examples" / "prune_pair.py")], capture_output=True, text=True,
                         env=run_env(REPO))
    assert res.returncode == 0, res.stderr
    assert "block 4: student 64->51 tokens, teacher 64->51" in res.stdout


def test_bench_flops_json():
    res = cli(["bench", "flops", "--model", "deit_small_patch16_224", "--method", "simprune",
               "--keep-rate", "0.8", "--json"], run_env(REPO))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert 0.72 <= report["flops_ratio"] <= 0.78
    res = cli(["bench", "flops", "--model", "deit_small_patch16_224", "--method", "nope"], run_env(REPO))
    assert res.returncode == 2 and "simprune" in res.stderr
