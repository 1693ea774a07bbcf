"""Weighted k-nearest-neighbour classifier on frozen features (DINO's k-NN evaluation).

Every feature is L2-normalised, so the similarity is the cosine. Each test sample takes its ``k``
most similar training samples; each neighbour votes for its own class with weight
``exp(sim / T)``, and a class's score is the sum of its votes. METHOD.md fixes ``k = 20`` and
``T = 0.07``.

``k`` larger than the training set: it is clamped to ``N`` (every training sample votes) and a
``UserWarning`` says so. That keeps smoke runs on tiny subsets usable without hiding the change.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.eval._checks import (
    check_features,
    check_label_range,
    check_labels,
    check_num_classes,
    check_positive_int,
    check_same_dim,
)
from simprune.eval.metrics import topk_accuracy

__all__ = ["knn_predict", "knn_accuracy"]


def _check_knn_args(k: int, temperature: float, chunk_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    check_positive_int(chunk_size, "chunk_size")


def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores of the weighted k-NN vote for every test sample.

    Args:
        train_feats: ``[N, D]`` float features of the reference (training) set.
        train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
        test_feats: ``[M, D]`` float features to classify (moved to ``train_feats``' device).
        num_classes: number of classes ``C``.
        k: neighbours per test sample, ``>= 1``; clamped to ``N`` with a warning if larger.
        temperature: ``T > 0`` of the vote weight ``exp(sim / T)``. Similarities are at most 1,
            so float32 votes stay finite for ``T`` above about ``1 / 88``.
        chunk_size: test rows handled at once; peak extra memory is about
            ``chunk_size * N`` floats for the similarity block.

    Returns:
        ``[M, C]`` float32 scores on the features' device: the sum of ``exp(sim / T)`` over the
        neighbours of each class (0 for classes with no neighbour). ``argmax`` is the prediction.

    Runs without host syncs except one to check the label range.
    """
    check_features(train_feats, "train_feats")
    check_features(test_feats, "test_feats")
    check_same_dim(train_feats, test_feats, "train_feats", "test_feats")
    check_labels(train_labels, train_feats.shape[0], "train_labels", "train_feats")
    check_num_classes(num_classes)
    _check_knn_args(k, temperature, chunk_size)
    check_label_range(train_labels, num_classes, "train_labels")

    n_train = train_feats.shape[0]
    if k > n_train:
        warnings.warn(
            f"k={k} exceeds the {n_train} training samples; using k={n_train} (all of them vote)",
            UserWarning,
            stacklevel=2,
        )
        k = n_train

    device = train_feats.device
    train_t = F.normalize(train_feats.float(), dim=1).t()  # [D, N]
    train_labels = train_labels.to(device=device, dtype=torch.int64)
    test_feats = test_feats.to(device)

    scores = torch.zeros(test_feats.shape[0], num_classes, device=device, dtype=torch.float32)
    for start in range(0, test_feats.shape[0], chunk_size):
        query = F.normalize(test_feats[start:start + chunk_size].float(), dim=1)  # [m, D]
        sims = query @ train_t  # [m, N]
        top_sims, top_idx = sims.topk(k, dim=1)  # [m, k]
        votes = (top_sims / temperature).exp()  # [m, k]
        scores[start:start + chunk_size].scatter_add_(1, train_labels[top_idx], votes)
    return scores


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of the weighted k-NN classifier.

    Args are as for :func:`knn_predict`, plus ``test_labels``: ``[M]`` integer labels in
    ``[0, num_classes)``. With fewer than 5 classes, "top5" counts the top ``num_classes``
    (so it is 100).

    Returns:
        ``{"top1": float, "top5": float}`` in percent (python floats: one host sync at the end).
    """
    check_features(test_feats, "test_feats")
    check_labels(test_labels, test_feats.shape[0], "test_labels", "test_feats")
    check_num_classes(num_classes)
    check_label_range(test_labels, num_classes, "test_labels")

    scores = knn_predict(
        train_feats, train_labels, test_feats, num_classes,
        k=k, temperature=temperature, chunk_size=chunk_size,
    )
    return topk_accuracy(scores, test_labels, ks=(1, 5))

