"""``simprune train | finetune | eval | export | viz | study | bench`` — the command line.

Errors in what the user asked for (unknown names, bad values, missing data, incompatible
checkpoints) print one clear line and exit with status 2; they are never tracebacks. Errors of the
machine (a full disk, a file-size limit, a folder that cannot be written) print one line naming the
file and exit with status 1; the last checkpoint is kept whole.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import warnings
from typing import Any

from simprune.interrupt import exit_code, sigterm_interrupts

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, TypeError)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``simprune train``'s flags (:func:`simprune.config.flags.add_train_args`)."""
    from simprune.config.flags import add_train_args as add

    add(p)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line (dotted for section keys)."""
    from simprune.config.flags import train_overrides as given

    return given(args)


def solve_budget(cfg: Any, overrides: dict[str, Any]) -> Any:
    """``cfg`` with its keep rate solved from ``reducer.flops_budget`` (``--flops-budget``), after
    refusing a keep rate given on the command line beside a budget."""
    from simprune.bench.budget import apply_flops_budget

    if cfg.reducer.flops_budget and "reducer.keep_rate" in overrides:
        flag = "--flops-budget" if "reducer.flops_budget" in overrides else "the recipe's flops_budget"
        raise ValueError(f"--keep-rate {overrides['reducer.keep_rate']} and {flag} "
                         f"{cfg.reducer.flops_budget:g} were both given: the keep rate is solved from "
                         "the flops budget; give one of them")
    return apply_flops_budget(cfg)[0]


def run_train(args: argparse.Namespace) -> int:
    from simprune.config import load_recipe, make_config
    from simprune.run import check_config
    from simprune.train.loop import train

    base = load_recipe(args.config) if args.config else {}
    overrides = train_overrides(args)
    cfg = make_config(base, overrides, where=f"{args.config}: " if args.config else "")
    check_config(cfg)  # a bad value fails before any note about the recipe's keys is printed
    cfg = solve_budget(cfg, overrides)
    for note in cfg.notes:
        print(f"simprune: note: {note}", file=sys.stderr)
    result = train(cfg)
    _print_final(result, cfg.out)
    return 0


def _print_final(result: dict[str, Any], out: str) -> None:
    if "knn_top1" in result:
        print(f"final k-NN top-1: {result['knn_top1']:.2f}% ({out}/results.json)")
    elif "top1" in result:
        print(f"final test top-1: {result['top1']:.2f}%  top-5 {result['top5']:.2f}% ({out}/results.json)")


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True,
                   help="pre-trained run folder, checkpoint.pt or timm-named .safetensors")
    p.add_argument("--branch", choices=("teacher", "student"), default=None,
                   help="backbone of the run to start from (default: the run's evaluation branch)")
    add_train_args(p)


def run_finetune(args: argparse.Namespace) -> int:
    """Supervised training from a pre-trained backbone: the run's model, image size and data set
    unless overridden; recipe and flags as for ``train``."""
    from pathlib import Path

    from simprune.config import load_recipe
    from simprune.train.finetune import finetune_config, run_config
    from simprune.train.loop import train

    src = Path(args.ckpt)
    pretrained = run_config(src)
    recipe = load_recipe(args.config) if args.config else None
    overrides = train_overrides(args)
    overrides.setdefault("out", str(Path("runs") / f"finetune_{src.resolve().name}"))
    cfg = solve_budget(finetune_config(pretrained, args.ckpt, recipe, overrides, branch=args.branch),
                       overrides)
    result = train(cfg)
    _print_final(result, cfg.out)
    return 0


#: ``simprune eval`` flags that override the run's evaluation settings: (config key, type, help)
EVAL_OVERRIDES = (
    ("knn_train", int, "k-NN bank size (0: all)"),
    ("knn_test", int, "test images (0: all)"),
    ("knn_k", int, "neighbours of the weighted k-NN"),
    ("knn_temperature", float, "temperature of the weighted k-NN"),
    ("test_split", str, "split to evaluate on (e.g. test, val)"),
    ("device", str, "auto, cpu, cuda or cuda:<index> (default: auto)"),
)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint.pt")
    p.add_argument("--data", default=None, help="data folder (default: the one the run trained on; "
                   "$SIMPRUNE_DATA if that one is gone)")
    for key, kind, text in EVAL_OVERRIDES:
        p.add_argument(_flag(key), dest=key, type=kind, default=None,
                       help=f"{text} (default: the run's)" if key != "device" else text)
    p.add_argument("--linear", action="store_true", help="also train a linear probe on frozen features")
    p.add_argument("--branch", choices=("teacher", "student"), default=None,
                   help="backbone to evaluate (default: teacher for DINO, student for MoCo v3)")
    p.add_argument("--json", action="store_true")


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from simprune.data import run_data_root
    from simprune.data.split import split_training_set
    from simprune.run import check_device, check_eval_settings, data_info, load_run, load_split
    from simprune.train.evaluate import EVAL_PROTOCOLS, check_knn_bank

    check_device(args.device or "auto")
    cfg, fw, saved = load_run(args.ckpt)
    for key, _, _ in EVAL_OVERRIDES:
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    cfg.linear_probe = bool(args.linear)
    check_eval_settings(cfg)
    root = run_data_root(args.data, cfg.data, args.ckpt)
    train_set = load_split(cfg, root, "train")
    _, bank_set = split_training_set(train_set, cfg.held_out, cfg.train_on)  # k-NN bank, probe
    check_knn_bank(cfg, len(bank_set), fw.eval_protocol)
    test_set = load_split(cfg, root, cfg.test_split)
    if args.device in (None, "auto"):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    res = EVAL_PROTOCOLS[fw.eval_protocol](fw.to(device), bank_set, test_set, cfg,
                                           data_info(cfg, train_set), device, final=True,
                                           branch=args.branch)
    res["step"] = saved["step"]
    summary = res.pop("summary", "")
    print(json.dumps(res) if args.json else f"step {res['step']}: {summary}")
    return 0


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint.pt")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--branch", choices=("teacher", "student"), default=None,
                   help="backbone to export (default: teacher for DINO, student for MoCo v3)")


def run_export(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from safetensors.torch import save

    from simprune.atomic import atomic_write
    from simprune.run import load_run

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out {args.out!r} must end in .safetensors")
    folder = Path(args.out).parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"cannot export to {args.out}: the folder {folder} {what}; create it or "
                         "pass another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot export to {args.out}: the folder {folder} is not writable; pass "
                         "another --out")
    if Path(args.out).is_dir():
        raise ValueError(f"cannot export to {args.out}: it is a folder")
    _, fw, _ = load_run(args.ckpt)
    backbone = fw.eval_backbone(args.branch)
    sd = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    data = save(sd, metadata={"format": "pt", "names": "timm-vit"})
    atomic_write(args.out, lambda f: f.write(data))
    print(f"wrote {len(sd)} tensors ({args.branch or fw.eval_branch} backbone, timm names) to {args.out}")
    return 0


#: what each subcommand does, for ``simprune --help``
COMMANDS = {
    "train": "training of any framework (resumes automatically)",
    "finetune": "supervised fine-tuning of a pre-trained backbone",
    "eval": "k-NN / linear probe (or top-1) of a checkpoint",
    "export": "backbone weights as timm-named safetensors",
    "viz": "pruning-mask and token-diversity figures",
    "study": "accuracy study: grid of runs + report",
    "data": "data preparation: shard (an image folder as tar shards)",
    "bench": "cost benchmarks: flops, cost, micro, budget, data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simprune", description="token reduction for cheaper ViT "
                                     "training: " + ", ".join(COMMANDS), allow_abbrev=False,
                                     epilog="`simprune COMMAND --help` lists a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_args(sub.add_parser("train", help=COMMANDS["train"], description=COMMANDS["train"],
                                  allow_abbrev=False))
    add_finetune_args(sub.add_parser("finetune", help=COMMANDS["finetune"],
                                     description=COMMANDS["finetune"], allow_abbrev=False))
    add_eval_args(sub.add_parser("eval", help=COMMANDS["eval"], description=COMMANDS["eval"],
                                 allow_abbrev=False))
    add_export_args(sub.add_parser("export", help=COMMANDS["export"], description=COMMANDS["export"],
                                   allow_abbrev=False))
    from simprune.viz.cli import add_viz_args

    add_viz_args(sub.add_parser("viz", help=COMMANDS["viz"], allow_abbrev=False))
    from simprune import study

    study.add_study_args(sub.add_parser("study", help=COMMANDS["study"], description=study.DESCRIPTION,
                                        allow_abbrev=False))
    from simprune.data.shards import add_shard_args

    data = sub.add_parser("data", help=COMMANDS["data"], description=COMMANDS["data"],
                          allow_abbrev=False).add_subparsers(dest="data", required=True, metavar="DATA")
    add_shard_args(data.add_parser("shard", help="an image folder as tar shards (multi-node reading)",
                                   allow_abbrev=False))
    bench = sub.add_parser("bench", help=COMMANDS["bench"], description=COMMANDS["bench"],
                           allow_abbrev=False).add_subparsers(dest="bench", required=True,
                                                              metavar="BENCH")
    from simprune.bench import cost, flops, micro

    flops.add_flops_args(bench.add_parser("flops", help="training FLOPs counted on one real step, vs "
                                          "its reference", allow_abbrev=False))
    cost.add_cost_args(bench.add_parser("cost", help="training-step time/FLOPs/memory vs the "
                                        "reference", allow_abbrev=False))
    micro.add_micro_args(bench.add_parser("micro", help="pruned vs dense fwd+bwd time ratio",
                                          allow_abbrev=False))
    from simprune.bench import budget

    budget.add_budget_args(bench.add_parser("budget", help="the keep rate that meets a training-FLOPs "
                                            "budget", allow_abbrev=False))
    from simprune.bench import data as bench_data

    bench_data.add_data_args(bench.add_parser("data", help="loader images/s vs the step's, cores per GPU",
                                              allow_abbrev=False))
    return parser


def _subparser(parser: argparse.ArgumentParser, names: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser of ``simprune NAME [NAME]`` (``train``; ``bench cost``)."""
    for name in names:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or name not in actions[0].choices:
            break
        parser = actions[0].choices[name]
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; an unknown flag is reported by the subcommand that was given (its
    usage, not the top level's), with the closest flag it has."""
    import difflib

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    nested = getattr(args, args.command, None) if args.command in ("bench", "data") else None
    sub = _subparser(parser, [args.command, *([nested] if nested else [])])
    flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    unknown = next((e for e in extra if e.startswith("-")), extra[0])
    close = difflib.get_close_matches(unknown.split("=")[0].replace("_", "-"), flags, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    sub.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    raise AssertionError("unreachable")  # pragma: no cover


def describe_os_error(err: OSError) -> str:
    """One line for an error of the machine: what failed, on which file, and what to do."""
    name = f" {err.filename}" if err.filename else ""
    what = err.strerror or str(err)
    if err.errno == errno.EFBIG:
        return (f"cannot write{name}: {what}: a file-size limit (`ulimit -f`) stopped the write; "
                "raise it, then run the same command to resume from the last checkpoint, which is "
                "intact")
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (f"cannot write{name}: {what}: the disk (or quota) is full; free some space, then run "
                "the same command to resume from the last checkpoint, which is intact")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}:{name}; check its permissions, or choose another folder"
    return f"{what}:{name}" if name else what


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings (an empty class folder, k larger than the bank, ...) as ``simprune: warning: ...``."""
    print(f"simprune: warning: {message}", file=sys.stderr if file is None else file, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from simprune.train.loop import TrainingError

    if hasattr(signal, "SIGXFSZ"):
        # Over a file-size limit (`ulimit -f`) a write fails with EFBIG, which we report, instead
        # of the signal ending the process with a core dump and no word.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with sigterm_interrupts(), warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line each, restored on the way out
            return _dispatch(args)
    except (*USER_ERRORS, TrainingError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"simprune: error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a file-size limit, an unwritable folder
        print(f"simprune: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM
        print("simprune: interrupted; run the same command to resume", file=sys.stderr)
        return exit_code(err)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; user errors and interrupts propagate to :func:`main`."""
    if args.command == "study":
        from simprune import study

        return int(study.run_study(args) or 0)
    if args.command == "bench":
        from simprune.bench import budget, cost, flops, micro
        from simprune.bench import data as bench_data

        fn = {"flops": flops.run_flops, "micro": micro.run_micro, "cost": cost.run_cost,
              "budget": budget.run_budget, "data": bench_data.run_data}[args.bench]
        return int(fn(args) or 0)
    if args.command == "data":
        from simprune.data.shards import run_shard

        return run_shard(args)
    from simprune.viz.cli import run_viz

    handlers = {"train": run_train, "finetune": run_finetune, "eval": run_eval, "export": run_export,
                "viz": run_viz}
    return int(handlers[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
