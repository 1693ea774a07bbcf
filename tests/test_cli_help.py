"""What a newcomer reads: ``simprune --help`` names every command; ``simprune train --help`` is
grouped by section, gives every flag one line of help and lists the values of ``--framework``,
``--method`` and ``--window`` from the registries; a misspelt flag or section gets the closest
match from the command that was given, before anything else is printed."""

from __future__ import annotations

import argparse

import pytest

from simprune import cli
from simprune.config import FRAMEWORKS
from simprune.reducers import REDUCERS
from simprune.reducers.schedule import WINDOWS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return int(code or 0), out.out, out.err


def train_parser() -> argparse.ArgumentParser:
    return cli._subparser(cli.build_parser(), ["train"])


def test_top_level_help_names_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    commands = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0]
    assert set(commands.choices) == set(cli.COMMANDS) == {
        "train", "finetune", "eval", "export", "viz", "study", "data", "bench"}
    for name, text in cli.COMMANDS.items():
        assert name in out and text in out


def test_every_train_flag_has_one_line_of_help_and_a_section_group():
    parser = train_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 100
    assert all(a.help and a.help.strip() for a in flags), [a.option_strings for a in flags if not a.help]
    titles = {g.title for g in parser._action_groups}
    assert {"[reducer] section", "[teacher] section", "shared flags"} <= titles
    assert {f"[{n}] section (framework {n})" for n in FRAMEWORKS.names()} <= titles
    group_of = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert group_of["reducer.keep_rate"] == "[reducer] section" and group_of["lr"] == "optimisation"
    assert group_of["mocov3.init"] == "[mocov3] section (framework mocov3)"


def test_choices_come_from_the_registries():
    helps = {o: a.help for a in train_parser()._actions for o in a.option_strings}
    assert all(n in helps["--framework"] for n in FRAMEWORKS.names())
    assert all(n in helps["--method"] for n in ["dense", *REDUCERS.names()])
    assert all(n in helps["--window"] for n in WINDOWS.names())


@pytest.mark.parametrize("flag,sections", [("--mask-ratio", ("mae.mask_ratio", "pcae.mask_ratio")),
                                           ("--pool", ("supervised.pool", "trilevel.pool")),
                                           ("--init-from", ("supervised.init_from", "trilevel.init_from"))])
def test_shared_short_flags_say_which_sections_they_set(flag, sections):
    helps = {o: a.help for a in train_parser()._actions for o in a.option_strings}
    assert "section of the framework in use" in helps[flag]
    assert all(s in helps[flag] for s in sections)


def test_help_renders(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "[reducer] section:" in out and "--keep-rate" in out


@pytest.mark.parametrize("argv,usage,hint", [
    (["train", "--keep_rate", "0.7"], "usage: simprune train", "did you mean --keep-rate?"),
    (["train", "--reducr.keep_rate", "0.7"], "usage: simprune train", "did you mean --reducer.keep_rate?"),
    (["bench", "cost", "--methds", "evit"], "usage: simprune bench cost", "did you mean --methods?"),
])
def test_a_misspelt_flag_gets_the_commands_usage_and_the_close_match(capsys, argv, usage, hint):
    code, _, err = run(capsys, *argv)
    assert code == 2 and usage in err and hint in err and "unrecognized arguments" in err


def test_a_misspelt_section_suggests_the_section(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('framework = "dino"\n[reducr]\nkeep_rate = 0.7\n')
    code, _, err = run(capsys, "train", "--config", str(recipe))
    assert code == 2 and "unknown section [reducr]. Did you mean [reducer]?" in err


def test_a_bad_method_errors_before_any_note(capsys):
    from repo_paths import REPO

    code, _, err = run(capsys, "train", "--config", str(REPO / "configs" / "cifar10_mocov3_simprune.toml"),
                       "--method", "simprun")
    assert code == 2
    assert err.splitlines()[0].startswith("simprune: error: unknown reduction method 'simprun'")
    assert "note:" not in err and "Did you mean 'simprune'?" in err


def test_bench_micro_help_points_to_nothing_a_user_cannot_look_up(capsys):
    code, out, _ = run(capsys, "bench", "micro", "--help")
    assert code == 0 and "keep_heap" not in out and "--trim-heap" in out and "--pair-reducer" in out
