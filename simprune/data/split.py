"""A held-out part of a training split, kept out of training for evaluation.

``held_out = N`` divides a training split into two disjoint parts: *held out*, a fixed random draw
of ``N`` images, and *rest*, the others. The draw depends only on the split's size and ``N`` (seed
:data:`HELD_OUT_SEED`), never on the run's seed, so every run of a study, and every fine-tuning
run from one, sees the same two parts. A run trains on one part (``train_on``); evaluation that
needs labelled training images (the k-NN bank, the linear probe) draws them from the held-out
part. A self-supervised or distillation run that trains on the rest is then evaluated, and
fine-tuned with ``train_on = "held_out"``, on labelled images it never saw.

Example::

    train, bank = split_training_set(cifar_train, held_out=10_000, train_on="rest")
    len(train), len(bank)  # 40000, 10000; disjoint
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from simprune.subset import random_subset

__all__ = ["HELD_OUT_SEED", "TRAIN_PARTS", "IndexedView", "held_out_rows", "split_training_set",
           "check_split"]

#: seed of the held-out draw: fixed, so the parts do not depend on the run's seed
HELD_OUT_SEED = 7919
#: the parts a run may train on when ``held_out > 0``
TRAIN_PARTS = ("rest", "held_out")


class IndexedView(Dataset):
    """The items ``rows`` of ``dataset`` (no copy): ``view[i] == dataset[rows[i]]``.

    Args:
        dataset: has ``__getitem__``, ``get_batch(idx)`` and ``classes`` (every simprune data set).
        rows: int64 ``[M]`` indices into ``dataset``.

    Attributes:
        labels: int64 ``[M]``, the rows' labels (when ``dataset`` has ``labels``).
        classes: ``dataset``'s class names.
    """

    def __init__(self, dataset: Any, rows: Tensor) -> None:
        self.dataset = dataset
        self.rows = torch.as_tensor(rows, dtype=torch.int64, device="cpu")
        self.classes = list(getattr(dataset, "classes", []) or [])
        labels = getattr(dataset, "labels", None)
        self.labels = labels.index_select(0, self.rows) if isinstance(labels, Tensor) else None

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset[int(self.rows[index])]

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``idx`` int64 ``[B]`` (positions in the view) -> ``(uint8 [B, C, H, W], int64 [B])``."""
        idx = torch.as_tensor(idx, dtype=torch.int64, device="cpu")
        return self.dataset.get_batch(self.rows.index_select(0, idx))

    def __repr__(self) -> str:
        return f"IndexedView({len(self)} of {self.dataset!r})"


def check_split(held_out: int, train_on: str, n_total: int | None = None) -> None:
    """Raise ``ValueError`` naming the value and what is valid, for a bad ``held_out`` /
    ``train_on`` pair (``n_total``: the split's size, when known)."""
    if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 0:
        raise ValueError(f"held_out must be a whole number of images >= 0 (0: none held out), "
                         f"got {held_out!r}")
    if train_on not in TRAIN_PARTS:
        raise ValueError(f"train_on {train_on!r}; valid: {', '.join(TRAIN_PARTS)}")
    if held_out == 0 and train_on != "rest":
        raise ValueError(f"train_on {train_on!r} needs held_out > 0 (the number of images to hold "
                         "out); with held_out = 0 every image is trained on")
    if n_total is not None and held_out >= n_total > 0:
        raise ValueError(f"held_out {held_out} leaves no training images of the {n_total} in the "
                         f"split; valid: 0 to {n_total - 1}")


def held_out_rows(n_total: int, held_out: int) -> tuple[Tensor, Tensor]:
    """The two parts of a split of ``n_total`` items: ``(held, rest)``, int64, ascending,
    disjoint, together ``range(n_total)``; ``held`` has ``held_out`` rows."""
    check_split(held_out, "rest", n_total)
    held = random_subset(n_total, held_out, HELD_OUT_SEED) if held_out else torch.zeros(0, dtype=torch.int64)
    keep = torch.ones(n_total, dtype=torch.bool)
    keep[held] = False
    return held, keep.nonzero().flatten()


def split_training_set(dataset: Any, held_out: int, train_on: str = "rest") -> tuple[Any, Any]:
    """``(train, bank)``: the images a run trains on, and the labelled images its evaluation draws
    from (k-NN bank, linear probe). With ``held_out = 0`` both are ``dataset`` itself."""
    check_split(held_out, train_on, len(dataset))
    if held_out == 0:
        return dataset, dataset
    held, rest = held_out_rows(len(dataset), held_out)
    bank = IndexedView(dataset, held)
    return (IndexedView(dataset, rest) if train_on == "rest" else bank), bank
