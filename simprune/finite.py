"""NaN and inf in a run's state: the weights (and buffers) and the optimizer's moments.

A checkpoint is written only from a finite state (checked on the device right before each save,
:func:`any_nonfinite`), and one read to resume from is checked again (:func:`nonfinite_names`):
a file written by an older version, or changed on disk, is never resumed silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch


def state_tensors(framework: Mapping[str, Any],
                  optimizer: Mapping[str, Any] | None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every floating tensor of a framework's ``state_dict`` and of an
    optimizer's ``state_dict`` (named ``optimizer.<param index>.<key>``, e.g. ``exp_avg``)."""
    for name, t in framework.items():
        if torch.is_tensor(t) and t.is_floating_point():
            yield name, t
    for index, slots in ((optimizer or {}).get("state") or {}).items():
        for key, t in (slots or {}).items():
            if torch.is_tensor(t) and t.is_floating_point():
                yield f"optimizer.{index}.{key}", t


def any_nonfinite(tensors: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d bool on ``device``: whether any of ``tensors`` holds a NaN or inf. No host sync."""
    flags = [(~torch.isfinite(t)).any().to(device) for t in tensors]
    return torch.stack(flags).any() if flags else torch.zeros((), dtype=torch.bool, device=device)


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the tensors holding a NaN or inf (host side: for a checkpoint read from disk)."""
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def describe_nonfinite(names: list[str], shown: int = 2) -> str:
    """``'student.pos_embed', 'optimizer.3.exp_avg' and 5 more``."""
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


__all__ = ["any_nonfinite", "describe_nonfinite", "nonfinite_names", "state_tensors"]
