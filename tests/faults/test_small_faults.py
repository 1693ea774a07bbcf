"""Smaller faults, each ending in one clear line: an invalid optimiser value names its key and
range, a cache that cannot be written is warned about once (with the ``simprune:`` prefix), and an
unreadable data folder is named itself (not a file inside it)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from faultkit import REPO, command, train_argv
from test_faults import one_line
from train_testkit import run_env

from simprune.cli import main


@pytest.mark.parametrize("key, value, message", [
    ("lr", "-1", "lr must be a finite number >= 0, got -1.0"),
    ("weight_decay", "nan", "weight_decay must be a finite number >= 0, got nan"),
    ("warmup_frac", "1", "warmup_frac must be in [0, 1)"),
])
def test_an_invalid_optimiser_value_names_its_key(key, value, message, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(out)
    argv[argv.index("--drop-path"):argv.index("--drop-path")] = [f"--{key.replace('_', '-')}", value]
    assert main(argv) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_a_cache_that_cannot_be_written_is_warned_about_once(data_root, tmp_path):
    """The cache folder lies below a file: the train and test splits both fail to write it; one
    ``simprune: warning:`` line says so, and the archive is decoded once, not once per split."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**run_env(data_root), "SIMPRUNE_CACHE": str(blocker / "cache")}
    res = subprocess.run(command(train_argv(tmp_path / "run", eval_at_end=True, max_steps=1)),
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "could not write the cache" in ln]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"simprune: warning: could not write the cache {blocker / 'cache'}/")
    assert "Not a directory" in lines[0] and "SIMPRUNE_CACHE" in lines[0]


def _unprivileged() -> list[str] | None:
    """A command prefix under which file permissions apply (root ignores them): none for a user,
    ``setpriv`` without the override capabilities for root; ``None`` when neither is possible."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_an_unreadable_data_folder_is_named_itself(data_root, tmp_path):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cifar10-jpg.tar.gz").symlink_to(data_root / "cifar10-jpg.tar.gz")
    folder.chmod(0)
    try:
        res = subprocess.run([*prefix, *command(train_argv(tmp_path / "run", data=folder))],
                             env=run_env(data_root), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    finally:
        folder.chmod(0o755)
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f"the data folder (from --data) cannot be read (Permission denied): {folder}" in line, line
    assert "data_batch_1" not in line and "check its permissions" in line
