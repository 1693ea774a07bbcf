"""Evaluate a backbone's frozen CLS features: weighted k-NN and a linear probe."""

from __future__ import annotations

from typing import Any

import torch

from simprune.data.augment import EvalTransform
from simprune.data.stats import dataset_stats
from simprune.eval.features import batches, extract_features, random_subset
from simprune.eval.knn import knn_accuracy
from simprune.eval.linear import linear_probe
from simprune.models.vit import VisionTransformer


def cls_features(backbone: VisionTransformer, dataset: Any, indices: torch.Tensor, size: int,
                 stats: tuple, device: torch.device, batch_size: int = 256) -> tuple:
    """``[n, D]`` final-norm CLS features of ``dataset[indices]`` (unreduced forward)."""
    was_training = backbone.training
    backbone.eval()
    transform = EvalTransform(size, *stats).to(device)
    feats = extract_features(lambda x: backbone.forward_features(x).x[:, 0],
                             batches(dataset, batch_size, indices), device, transform)
    backbone.train(was_training)
    return feats


def evaluate(backbone: VisionTransformer, train_set: Any, test_set: Any, dataset_name: str,
             num_classes: int, device: torch.device, n_train: int = 10000, n_test: int = 2000,
             k: int = 20, temperature: float = 0.07, linear: bool = False, seed: int = 0,
             size: int | None = None) -> dict[str, float]:
    """k-NN top-1/top-5 (and optionally a linear probe) on random train/test subsets.

    Subsets are drawn at random (datasets such as the CIFAR archive are sorted by class).
    """
    size = size or backbone.cfg.img_size
    stats = dataset_stats(dataset_name)
    tr_idx = random_subset(len(train_set), n_train or None, seed)
    te_idx = random_subset(len(test_set), n_test or None, seed + 1)
    tr_f, tr_y = cls_features(backbone, train_set, tr_idx, size, stats, device)
    te_f, te_y = cls_features(backbone, test_set, te_idx, size, stats, device)
    acc = knn_accuracy(tr_f, tr_y, te_f, te_y, num_classes, k=k, temperature=temperature)
    out = {"knn_top1": acc["top1"], "knn_top5": acc["top5"], "knn_train": len(tr_idx),
           "knn_test": len(te_idx)}
    if linear:
        lin = linear_probe(tr_f, tr_y, te_f, te_y, num_classes, seed=seed)
        out["linear_top1"] = lin["top1"]
    return out
