"""Bad input exits non-zero with a clear message and overwrites nothing."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
import torch
from train_testkit import PY, TINY, cli_args, run_env, with_heads

from simprune.config import make_config
from simprune.train.loop import Trainer, TrainingError


def train(args, env):
    return subprocess.run([PY, "-m", "simprune.cli", "train", *args], env=env, capture_output=True,
                          text=True)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A run folder holding a checkpoint and results, to check nothing overwrites them."""
    out = tmp_path_factory.mktemp("done") / "run"
    cfg = dict(TINY, framework="mocov3", method="simprune", max_steps=2, epochs=0.25, out=out,
               eval_at_end=False)
    res = train(cli_args(**cfg), run_env(data_root))
    assert res.returncode == 0, res.stderr
    return out, cfg


def assert_untouched(run_dir, before):
    assert {p.name: digest(p) for p in run_dir.iterdir() if p.is_file()} == before


def snapshot(run_dir):
    return {p.name: digest(p) for p in run_dir.iterdir() if p.is_file()}


def test_missing_data_path(finished_run, data_root, tmp_path):
    run, cfg = finished_run
    before = snapshot(run)
    env = run_env(data_root)
    env.pop("SIMPRUNE_DATA")
    res = train(cli_args(**cfg), env)
    assert res.returncode == 2 and "SIMPRUNE_DATA" in res.stderr and "--data" in res.stderr
    res = train(cli_args(**dict(cfg, data=tmp_path / "nowhere")), env)
    assert res.returncode == 2 and "nowhere" in res.stderr
    assert_untouched(run, before)


def test_wrong_archive(finished_run, data_root, tmp_path):
    run, cfg = finished_run
    before = snapshot(run)
    fake = tmp_path / "data"
    fake.mkdir()
    (fake / "cifar10-jpg.tar.gz").write_bytes(b"not the archive" * 100)
    res = train(cli_args(**dict(cfg, data=fake)), run_env(data_root))
    assert res.returncode == 2 and "sha256" in res.stderr and "cifar10-jpg.tar.gz" in res.stderr
    assert_untouched(run, before)


def test_unknown_config_key(finished_run, data_root, tmp_path):
    run, cfg = finished_run
    before = snapshot(run)
    recipe = tmp_path / "bad.toml"
    recipe.write_text('framework = "dino"\nkeep_rat = 0.7\n')
    res = train(["--config", str(recipe), *cli_args(**cfg)], run_env(data_root))
    assert res.returncode == 2 and "keep_rat" in res.stderr and "keep_rate" in res.stderr
    res = train([*cli_args(**cfg), "--keep-rat", "0.7"], run_env(data_root))
    assert res.returncode == 2 and "keep-rat" in res.stderr
    with pytest.raises(ValueError, match="unknown config key 'keep_rat'.*Did you mean 'keep_rate'"):
        make_config({"keep_rat": 0.7})
    with pytest.raises(ValueError, match=r"unknown key 'keep_rat' in \[reducer\]; valid: method"):
        make_config({"reducer": {"method": "evit", "keep_rat": 0.7}})
    assert_untouched(run, before)


@pytest.mark.parametrize("rate", ["1.5", "0", "-0.2"])
def test_invalid_keep_rate(finished_run, data_root, rate):
    run, cfg = finished_run
    before = snapshot(run)
    res = train(cli_args(**dict(cfg, keep_rate=rate)), run_env(data_root))
    assert res.returncode == 2 and "keep_rate" in res.stderr and "(0, 1]" in res.stderr
    assert_untouched(run, before)


def test_incompatible_checkpoint_is_refused(finished_run, data_root):
    run, cfg = finished_run
    before = snapshot(run)
    res = train(cli_args(**dict(cfg, method="evit")), run_env(data_root))
    assert res.returncode == 2
    assert "different config" in res.stderr and "method" in res.stderr and "evit" in res.stderr
    assert_untouched(run, before)


def test_checkpoint_from_before_a_new_key_resumes_under_its_default():
    """A key added to simprune after a checkpoint was made counts as its default: the old run
    resumes unchanged, and setting the new key to anything else is refused."""
    from simprune.config import incompatible, make_config

    saved = make_config().to_dict()
    del saved["teacher"]["momentum_end"]
    assert incompatible(saved, make_config()) == {}
    assert incompatible(saved, make_config({"momentum_end": 0.99})) == {
        "teacher.momentum_end": (1.0, 0.99)}


def test_checkpoint_config_from_before_sections_is_read_through_the_aliases():
    """A checkpoint made before the sectioned config (flat keys, every framework's keys) resumes:
    its keys are read through the flat aliases, the other framework's keys are dropped."""
    from simprune.config import incompatible, make_config

    flat = {"framework": "mocov3", "method": "simprune", "keep_rate": 0.8, "window": "sliding",
            "moco_hidden": 64, "moco_dim": 32, "out_dim": 4096, "student_temp": 0.1,
            "momentum": 0.99, "model": "vit_nano_patch4_32"}
    now = make_config({"framework": "mocov3", "model": "vit_nano_patch4_32", "momentum": 0.99,
                       "reducer": {"method": "simprune"}, "mocov3": {"hidden": 64, "dim": 32}})
    assert incompatible(flat, now) == {}
    assert incompatible(dict(flat, moco_hidden=128), now) == {"mocov3.hidden": (128, 64)}


@pytest.mark.parametrize("key", ["momentum", "momentum_end"])
def test_invalid_momentum(finished_run, data_root, key):
    run, cfg = finished_run
    before = snapshot(run)
    res = train(cli_args(**dict(cfg, **{key: "1.5"})), run_env(data_root))
    assert res.returncode == 2 and "momentum" in res.stderr and "[0, 1]" in res.stderr
    assert_untouched(run, before)


def test_unknown_method_lists_known(finished_run, data_root):
    run, cfg = finished_run
    res = train(cli_args(**dict(cfg, method="evitt", out=run.parent / "other")), run_env(data_root))
    assert res.returncode == 2 and "evit" in res.stderr and "tome" in res.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = make_config(with_heads(dict(TINY, framework="mocov3")), {
        "method": "simprune", "data": str(data_root),
                             "out": str(tmp_path / "run"), "ckpt_every": 2, "log_every": 1,
                             "eval_at_end": False})
    trainer = Trainer(cfg)
    real = trainer.train_step

    def poisoned(step):
        loss, logs = real(step)
        return (loss * float("nan") if step == 3 else loss), logs

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(TrainingError, match=r"NaN or inf.*step 4.*last good checkpoint \(step 2\)"):
        trainer.run()
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 2
