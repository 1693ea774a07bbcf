"""Shared argument checks for the evaluation functions (shapes, dtypes, label ranges)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_features(feats: Tensor, name: str) -> None:
    """Raise unless ``feats`` is a floating-point matrix ``[N, D]`` with ``N >= 1``."""
    if not isinstance(feats, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, D], got {type(feats).__name__}")
    if feats.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(feats.shape)}")
    if not feats.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {feats.dtype}")
    if feats.shape[0] < 1 or feats.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and column, got {tuple(feats.shape)}")


def check_labels(labels: Tensor, n: int, name: str, feats_name: str) -> None:
    """Raise unless ``labels`` is an integer vector ``[n]`` matching ``feats_name``'s rows."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N], got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(
            f"{name} has {labels.shape[0]} entries but {feats_name} has {n} rows; they must match"
        )


def check_label_range(labels: Tensor, num_classes: int, name: str) -> None:
    """Raise unless every label lies in ``[0, num_classes)``. One host sync (min and max)."""
    lo, hi = (int(v) for v in labels.aminmax())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got values in [{lo}, {hi}]"
        )


def check_num_classes(num_classes: int) -> None:
    """Raise unless ``num_classes`` is an int >= 1."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")


def check_same_dim(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    """Raise unless the two feature matrices share the feature dimension ``D``."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{a_name} has D={a.shape[1]} but {b_name} has D={b.shape[1]}; feature dims must match"
        )


def check_positive_int(value: int, name: str) -> None:
    """Raise unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")

