"""``simprune bench data`` and ``scripts/gpu_check.sh`` on a tiny model (CPU).

Timings are noisy on shared machines: only checked to be positive, and consistent with each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simprune.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "configs" / "imagenet_dino_deit_small_dense.toml")
TINY_SETS = ["--set", "model=vit_nano_patch4_32", "--set", "global_size=32", "--set", "local_size=16",
             "--set", "local_views=2", "--set", "out_dim=64", "--set", "head_hidden=64",
             "--set", "bottleneck=16"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fake") / "imagenet"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_fake_imagenet.py"), "--out", str(out),
                    "--classes", "2", "--train", "8", "--val", "1", "--size", "80", "60"], check=True,
                   capture_output=True)
    return out


def test_bench_data_reports_loader_step_and_cores(fake, capsys):
    rc = main(["bench", "data", "--config", RECIPE, "--data", str(fake), *TINY_SETS, "--batch-size", "4",
               "--num-workers", "1", "--batches", "2", "--repeats", "1", "--warmup", "0",
               "--step-time", "0.5", "--device", "cpu", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["num_workers"] == 1 and res["loader_batches"] == 2 and res["views"] == [
        [32, [0.4, 1.0], 2], [16, [0.05, 0.4], 2]]
    assert res["decode_cpu_ms_per_image"] > 0 and res["loader_images_per_s"] > 0
    assert res["step_images_per_s"] == pytest.approx(4 / res["step_median_s"])
    assert res["gpu_step_source"] == "--step-time (given)" and res["gpu_images_per_s"] == 4 / 0.5
    assert res["cores_per_gpu"] == pytest.approx(res["decode_cpu_ms_per_image"] / 1e3 * 8)


def test_bench_data_refuses_a_cached_data_set(capsys):
    rc = main(["bench", "data", "--config", str(REPO / "configs" / "cifar10_dino_dense.toml"), "--no-step"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simprune: error: bench data measures the loader of image folders")
    assert "\n" not in err


def _gpu_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_gpu_check_refuses_in_one_line_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    res = _gpu_check()
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "gpu_check: --device cuda, but torch sees no CUDA GPU on this machine; run it on a GPU machine, "
        "or pass --device cpu --tiny for the CPU smoke test"]


@pytest.mark.slow
def test_gpu_check_cpu_fallback_prints_one_table(tmp_path):
    res = _gpu_check("--device", "cpu", "--tiny", "--out", str(tmp_path / "check"))
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("GPU check: DINO vit_nano_patch4_32, batch 8, bf16, cpu")
    assert [ln.split()[0] for ln in lines[2:5]] == ["dense", "simprune", "evit"]
    assert lines[-1].startswith("loader: ") and "cores per GPU" in lines[-1]
    assert (tmp_path / "check" / "cost.json").is_file() and (tmp_path / "check" / "data.json").is_file()
