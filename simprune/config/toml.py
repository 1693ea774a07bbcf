"""Reading a TOML file (a training recipe or a study) with one clear error for each way it fails."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """The tables of the TOML file at ``path``; ``FileNotFoundError`` names ``what`` was not found,
    ``ValueError`` says where the TOML is broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} not found")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err


__all__ = ["read_toml"]
