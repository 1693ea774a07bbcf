"""Command-line forms of config keys: ``simprune train``'s flags (one per key, grouped by section,
each with one line of help) and ``--set KEY=VALUE`` items (``bench``, ``viz``, ``study``)."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from simprune.config.base import (
    FRAMEWORKS,
    KEY_HELP,
    SECTION_CLASSES,
    TrainConfig,
    aliases,
    framework_sections,
)


@dataclass(frozen=True)
class Flag:
    """One config key on the command line: its dotted key (the argparse ``dest``), its flags, its
    default, the ``--help`` group it is listed in, and one line of help."""

    key: str
    flags: tuple[str, ...]
    default: Any
    group: str
    help: str


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_help(cls: type) -> dict[str, str]:
    """One line per field of a config dataclass, from its docstring's ``Attributes:`` entries
    (``name, other: text``) or the comment after the field in the source (``x: int = 0  # text``)."""
    out: dict[str, str] = {}
    for base in reversed([c for c in cls.__mro__ if c is not object]):  # a subclass's text wins
        out.update(_own_field_help(base))
    return out


def _own_field_help(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover - classes made at run time
        source = ""
    for line in source.splitlines():
        m = re.match(r"\s+(\w+): [^=#]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    doc = cls.__doc__ or ""
    doc = inspect.cleandoc(doc)
    if "Attributes:" in doc:
        current: list[str] = []
        for line in doc.split("Attributes:", 1)[1].splitlines():
            m = re.match(r"\s{4}(\w+(?:, \w+)*): (.+)$", line)
            if m:
                current = m.group(1).split(", ")
                for name in current:
                    out[name] = m.group(2).strip()
            elif line.startswith("        ") and current:
                for name in current:
                    out[name] += " " + line.strip()
            elif line.strip():
                current = []
    return out


def _base_groups() -> dict[str, str]:
    """Base key -> its group, read from the ``# what to train`` / ``# data`` / ... comments that
    head the groups of :class:`TrainConfig`'s fields."""
    out, group, previous = {}, "base", ""
    for line in inspect.getsource(TrainConfig).splitlines():
        head = re.match(r"    # (\w[^;(]*)", line)
        if head:
            if not previous.lstrip().startswith("#"):  # a header's first line names the group
                group = head.group(1).strip().rstrip(",")
            previous = line
            continue
        previous = line
        m = re.match(r"    (\w+): ", line)
        if m:
            out[m.group(1)] = group
    return out


def _choices() -> dict[str, str]:
    """The values a key takes, from the registries (listed in its help)."""
    from simprune.reducers import REDUCERS
    from simprune.reducers.schedule import WINDOWS

    return {"framework": ", ".join(FRAMEWORKS.names()),
            "reducer.method": ", ".join(["dense", *REDUCERS.names()]),
            "reducer.window": ", ".join(WINDOWS.names())}


def _plain(text: str) -> str:
    """Docstring text as one plain line: no reST quotes, no final full stop."""
    return text.replace("``", "").strip().rstrip(".")


def config_flags() -> list[Flag]:
    """Every config key as flags: base keys by name; section keys as ``--section.key`` plus their
    flat alias (``--keep-rate``, ``--moco-hidden``). A key that several framework sections have
    (``--mask-ratio`` of MAE and PCAE, ``--pool``) is one flag of its own whose key stays flat, so
    that it sets the key of the framework the run uses; its help says which sections it sets."""
    out: list[Flag] = []
    taken: set[str] = set()
    base, groups, choices = TrainConfig(), _base_groups(), _choices()
    base_help = field_help(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in SECTION_CLASSES or f.name in ("fw", "notes"):
            continue
        text = _plain(KEY_HELP.get(f.name) or base_help.get(f.name) or f.name.replace("_", " "))
        if f.name in choices:
            text += f"; one of: {choices[f.name]}"
        out.append(Flag(f.name, (_flag(f.name),), getattr(base, f.name), groups.get(f.name, "base"), text))
        taken.add(_flag(f.name))
    back: dict[str, list[str]] = {}
    for flat, dotted in aliases().items():
        back.setdefault(dotted, []).append(flat)
    sections = {**SECTION_CLASSES, **framework_sections()}
    owners: dict[str, list[str]] = {}
    for section, cls in sections.items():
        for f in fields(cls):
            owners.setdefault(f.name, []).append(section)
    shared: list[Flag] = []
    for section, cls in sections.items():
        inst, docs = cls(), field_help(cls)
        group = (f"[{section}] section" if section in SECTION_CLASSES
                 else f"[{section}] section (framework {section})")
        for f in fields(cls):
            dotted = f"{section}.{f.name}"
            flags = ["--" + dotted]
            for flat in back.get(dotted, []):
                flag = _flag(flat)
                if flag not in flags and flag not in taken:
                    flags.append(flag)
            taken.update(flags)
            text = _plain(docs.get(f.name) or f"{f.name.replace('_', ' ')} of {section}")
            if dotted in choices:
                text += f"; one of: {choices[dotted]}"
            out.append(Flag(dotted, tuple(flags), getattr(inst, f.name), group, text))
            flat = back.get(f"*.{f.name}", [])
            if flat and _flag(flat[0]) not in taken:
                taken.add(_flag(flat[0]))
                where = ", ".join(f"{s}.{f.name}" for s in owners[f.name] if s not in SECTION_CLASSES)
                shared.append(Flag(flat[0], (_flag(flat[0]),), getattr(inst, f.name), "shared flags",
                                   f"sets {f.name} in the section of the framework in use ({where}); "
                                   f"{text}"))
    return out + shared


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``simprune train``'s flags, one argparse group per section, one line of help each."""
    p.add_argument("--config", help="TOML recipe (see configs/); the flags below override its keys")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in config_flags():
        if flag.group not in groups:
            groups[flag.group] = p.add_argument_group(flag.group)
        kind = type(flag.default).__name__
        groups[flag.group].add_argument(
            *flag.flags, dest=flag.key, default=None, metavar=kind.upper(),
            nargs="+" if isinstance(flag.default, list) else None,
            help=f"{flag.help} (default {flag.default!r})".replace("%", "%%"))


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line (dotted for section keys)."""
    overrides: dict[str, Any] = {}
    for flag in config_flags():
        v = getattr(args, flag.key, None)
        if v is not None:
            overrides[flag.key] = " ".join(v) if isinstance(v, list) else v
    return overrides


def parse_sets(items: Sequence[str] | None, flag: str = "--set") -> dict[str, str]:
    """``KEY=VALUE`` strings -> ``{key: value}`` (``-`` in a key read as ``_``); the values stay
    strings, which :func:`~simprune.config.make_config` reads by each key's type."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value
    return out


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)`` for argparse's ``type=``; the value is a Python literal
    when it parses as one (reducer options have no declared type to read a string by)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


__all__ = ["Flag", "add_train_args", "config_flags", "field_help", "parse_option", "parse_sets",
           "train_overrides"]
