"""Command-line forms of config keys: ``--set KEY=VALUE`` items (``bench``, ``viz``, ``study``)."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence
from typing import Any


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


__all__ = ["parse_option", "parse_sets"]
