"""Frozen-feature extraction for evaluation: batching a dataset, random subsets, encoding.

Features are computed once (under ``torch.inference_mode``) and then reused by the k-NN and
linear-probe evaluations, which run on the stored ``[N, D]`` matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from simprune.eval._checks import check_positive_int
from simprune.subset import random_subset  # re-exported: the draw every evaluation uses

__all__ = ["batches", "extract_features", "random_subset"]


def batches(
    dataset: Any, batch_size: int, indices: Tensor | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches of ``dataset`` in the order of ``indices``.

    Args:
        dataset: either has ``get_batch(idx: LongTensor [B]) -> (uint8 [B, C, H, W], int64 [B])``
            (used when present: one vectorised gather per batch), or supports ``len()`` and
            ``dataset[i] -> (image uint8 [C, H, W], label int)``.
        batch_size: samples per batch, ``>= 1``; the last batch may be smaller.
        indices: ``[n]`` integer indices into the dataset (e.g. from :func:`random_subset`);
            ``None`` means every sample in order.

    Yields:
        ``images`` ``[B, C, H, W]`` (the dataset's dtype, normally uint8) and ``labels`` int64
        ``[B]``.
    """
    check_positive_int(batch_size, "batch_size")
    if indices is None:
        indices = torch.arange(len(dataset), dtype=torch.int64)
    elif not isinstance(indices, Tensor) or indices.ndim != 1 or indices.is_floating_point():
        shape = tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__
        raise ValueError(f"indices must be a 1-D integer tensor or None, got {shape}")
    indices = indices.to(torch.int64)
    get_batch = getattr(dataset, "get_batch", None)
    if get_batch is None and not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset of type {type(dataset).__name__} has neither get_batch(idx) nor __getitem__"
        )
    for start in range(0, indices.shape[0], batch_size):
        idx = indices[start:start + batch_size]
        if get_batch is not None:
            images, labels = get_batch(idx)
            labels = torch.as_tensor(labels, dtype=torch.int64)
        else:
            items = [dataset[i] for i in idx.tolist()]
            images = torch.stack([torch.as_tensor(img) for img, _ in items])
            labels = torch.tensor([int(lab) for _, lab in items], dtype=torch.int64)
        yield images, labels


def extract_features(
    encode: Callable[[Tensor], Tensor],
    images_iter: Iterable[tuple[Tensor, Tensor]],
    device: torch.device | str,
    transform: Callable[[Tensor], Tensor] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Encode every batch of ``images_iter`` and gather the features and labels.

    Per batch: move the images to ``device``, apply ``transform`` (uint8 -> normalised float,
    on device), run ``encode`` under ``torch.inference_mode()`` (and ``torch.autocast`` with
    ``amp_dtype`` when given). Features stay on ``device`` until the end, so the loop has no
    host syncs; one copy to CPU at the end.

    Args:
        encode: maps a normalised float batch ``[B, C, H, W]`` to features ``[B, D]``
            (e.g. a frozen teacher returning its CLS token). Put the model in eval mode first.
        images_iter: yields ``(images [B, C, H, W], labels [B])``, e.g. :func:`batches`.
        device: where ``transform`` and ``encode`` run.
        transform: uint8 -> normalised float on device. ``None``: uint8 images are scaled to
            float32 in ``[0, 1]``; float images are passed unchanged.
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``), or ``None`` for none.

    Returns:
        ``features`` float32 ``[N, D]`` and ``labels`` int64 ``[N]``, both on CPU.
    """
    device = torch.device(device)
    feats: list[Tensor] = []
    labels_out: list[Tensor] = []
    with torch.inference_mode():
        for step, (images, labels) in enumerate(images_iter):
            if images.ndim != 4:
                raise ValueError(
                    f"batch {step}: images must be [B, C, H, W], got shape {tuple(images.shape)}"
                )
            if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
                raise ValueError(
                    f"batch {step}: labels must be [B] = [{images.shape[0]}], "
                    f"got shape {tuple(labels.shape)}"
                )
            x = images.to(device, non_blocking=True)
            if transform is not None:
                x = transform(x)
            elif x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = encode(x)
            if out.ndim != 2 or out.shape[0] != images.shape[0]:
                raise ValueError(
                    f"batch {step}: encode must return [B, D] = [{images.shape[0]}, D], "
                    f"got shape {tuple(out.shape)}"
                )
            feats.append(out.float())
            labels_out.append(labels.to(torch.int64))
    if not feats:
        raise ValueError("images_iter yielded no batches; nothing to encode")
    return torch.cat(feats).cpu(), torch.cat(labels_out).cpu()
