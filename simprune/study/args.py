"""The options of ``simprune study`` and the command line a set of them stands for."""

from __future__ import annotations

import argparse
import shlex

#: what a sitting runs: both phases (default), the cells' training only, or only the fine-tuning
#: of finished cells (e.g. a second sitting beside one that trains)
PHASES = ("all", "train", "finetune")
DESCRIPTION = "accuracy study: a grid of training runs (method × keep rate × seed) and its report"


def add_study_args(p: argparse.ArgumentParser) -> None:
    """Options of ``simprune study``."""
    p.add_argument("--config", required=True, help="study recipe (TOML), e.g. studies/table2_cpu.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the recipe's)")
    p.add_argument("--out", default=None, help="output folder (default: the recipe's, else "
                   "runs/study/<name>)")
    p.add_argument("--set", action="extend", nargs="+", default=None, metavar="KEY=VALUE",
                   help="config override for every cell, e.g. --set data=../shared/data epochs=0.3")
    p.add_argument("--time-limit", type=float, default=0.0, metavar="MIN",
                   help="minutes for this whole sitting; cells stop with checkpoints, rerun to continue")
    p.add_argument("--phase", choices=PHASES, default="all",
                   help="all: train each cell, then fine-tune it if the study has [finetune]; train: "
                   "training only; finetune: fine-tune finished cells only (e.g. a second sitting "
                   "beside one that trains)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="train only these methods' cells this sitting (names as in the recipe's "
                   "[[methods]]); the report still shows every finished cell")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the existing cell folders; train nothing")
    p.add_argument("--overwrite-report", action="store_true",
                   help="replace report files in an out folder that is not under runs/")


def command_line(args: argparse.Namespace) -> str:
    """The ``simprune study`` command that ``args`` stand for (report-only and dry-run left out)."""
    parts = ["simprune", "study", "--config", str(args.config)]
    if args.seeds:
        parts += ["--seeds", *map(str, args.seeds)]
    if args.out:
        parts += ["--out", str(args.out)]
    if args.set:
        parts += ["--set", *args.set]
    if args.time_limit:
        parts += ["--time-limit", f"{args.time_limit:g}"]
    if getattr(args, "phase", "all") != "all":
        parts += ["--phase", args.phase]
    if getattr(args, "methods", None):
        parts += ["--methods", *args.methods]
    return " ".join(shlex.quote(p) for p in parts)


__all__ = ["DESCRIPTION", "PHASES", "add_study_args", "command_line"]
