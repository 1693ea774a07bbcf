"""Evaluation protocols: weighted k-NN and a linear probe on frozen features (CLS or patch mean),
or a classifier's top-1/top-5."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from simprune.data.augment import EvalTransform
from simprune.data.stats import dataset_stats
from simprune.eval.features import batches, extract_features, random_subset
from simprune.eval.knn import knn_accuracy
from simprune.eval.linear import linear_probe
from simprune.models.vit import VisionTransformer


def with_progress(items: Iterable[tuple[torch.Tensor, torch.Tensor]], n_images: int, desc: str,
                  enabled: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``items`` (``(images, labels)`` batches), counted on a tqdm bar of ``n_images`` images
    when ``enabled``."""
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(total=n_images, desc=desc, unit="img", dynamic_ncols=True, mininterval=1.0,
              leave=False) as bar:
        for images, labels in items:
            yield images, labels
            bar.update(len(labels))


def pooled(state: Any, pool: str = "cls") -> torch.Tensor:
    """``[B, D]`` features of a final state: the CLS token (``cls``) or the mean of the patch tokens
    (``mean``: MAE and PCAE, whose losses never train the CLS token to summarise the image)."""
    if pool == "cls":
        return state.x[:, 0]
    if pool == "mean":
        return state.patches.mean(dim=1)
    raise ValueError(f"unknown feature pooling {pool!r}; valid: cls, mean")


def cls_features(backbone: VisionTransformer, dataset: Any, indices: torch.Tensor, size: int,
                 stats: tuple, device: torch.device, batch_size: int = 256,
                 pool: str = "cls",
                 features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 progress: str | None = None) -> tuple:
    """``[n, D]`` final-norm features (``pool``: CLS or patch mean) of ``dataset[indices]``
    (unreduced forward, or ``features(images)`` when given); a progress bar named ``progress``
    when given."""
    was_training = backbone.training
    backbone.eval()
    transform = EvalTransform(size, *stats).to(device)
    items = with_progress(batches(dataset, batch_size, indices), len(indices), progress or "",
                          progress is not None)
    fn = features or (lambda x: pooled(backbone.forward_features(x), pool))
    feats = extract_features(fn, items, device, transform)
    backbone.train(was_training)
    return feats


def evaluate(backbone: VisionTransformer, train_set: Any, test_set: Any, dataset_name: str,
             num_classes: int, device: torch.device, n_train: int = 10000, n_test: int = 2000,
             k: int = 20, temperature: float = 0.07, linear: bool = False, seed: int = 0,
             size: int | None = None, pool: str = "cls",
             features: Callable[[torch.Tensor], torch.Tensor] | None = None,
             progress: bool = False) -> dict[str, float]:
    """k-NN top-1/top-5 (and optionally a linear probe) on random train/test subsets.

    Subsets are drawn at random (datasets such as the CIFAR archive are sorted by class).
    ``progress``: tqdm bars for the feature extraction and the linear probe.
    """
    size = size or backbone.cfg.img_size
    stats = dataset_stats(dataset_name)
    tr_idx = random_subset(len(train_set), n_train or None, seed)
    te_idx = random_subset(len(test_set), n_test or None, seed + 1)
    tr_f, tr_y = cls_features(backbone, train_set, tr_idx, size, stats, device,
                              progress="features (k-NN bank)" if progress else None, pool=pool,
                              features=features)
    te_f, te_y = cls_features(backbone, test_set, te_idx, size, stats, device,
                              progress="features (test)" if progress else None, pool=pool,
                              features=features)
    acc = knn_accuracy(tr_f, tr_y, te_f, te_y, num_classes, k=k, temperature=temperature)
    out = {"knn_top1": acc["top1"], "knn_top5": acc["top5"], "knn_train": len(tr_idx),
           "knn_test": len(te_idx), "knn_k": min(k, len(tr_idx))}  # the k that voted
    if linear:
        lin = linear_probe(tr_f, tr_y, te_f, te_y, num_classes, seed=seed, progress=progress)
        out["linear_top1"] = lin["top1"]
    return out


def knn_protocol(framework: Any, train_set: Any, test_set: Any, cfg: Any, data: Any,
                 device: torch.device, final: bool = True, branch: str | None = None) -> dict[str, Any]:
    """SSL evaluation: weighted k-NN (and a linear probe at the end when asked) on the frozen
    features of the framework's evaluation backbone (CLS or patch mean: ``framework.eval_pool``;
    or the framework's own ``eval_features``)."""
    branch = branch or framework.eval_branch
    features = framework.eval_features(branch)  # None: the backbone, pooled by eval_pool
    res = evaluate(framework.eval_backbone(branch), train_set, test_set, cfg.dataset, data.num_classes,
                   device, cfg.knn_train, cfg.knn_test, cfg.knn_k, cfg.knn_temperature,
                   linear=cfg.linear_probe and final, seed=cfg.seed, size=cfg.global_size,
                   progress=bool(cfg.progress_bar), pool=framework.eval_pool,
                   features=features)
    res = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    what = "patch mean" if framework.eval_pool == "mean" else "CLS"
    res["summary"] = (f"k-NN top-1 {res['knn_top1']:.2f}%  top-5 {res['knn_top5']:.2f}%  ({branch} {what}, "
                      f"k={res['knn_k']}, bank {res['knn_train']}, test {res['knn_test']})"
                      + (f"  linear top-1 {res['linear_top1']:.2f}%" if "linear_top1" in res else ""))
    return res


@torch.no_grad()
def classify_protocol(framework: Any, train_set: Any, test_set: Any, cfg: Any, data: Any,
                      device: torch.device, final: bool = True, branch: str | None = None) -> dict[str, Any]:
    """Supervised evaluation: top-1/top-5 of the framework's own classifier (``predict``) on the
    test split (``knn_test`` images, 0: all; a seeded random subset otherwise)."""
    model = framework.student
    was_training = model.training
    model.eval()
    transform = EvalTransform(cfg.global_size, data.mean, data.std).to(device)
    idx = random_subset(len(test_set), cfg.knn_test or None, cfg.seed + 1)
    top1 = top5 = 0
    items = with_progress(batches(test_set, 256, idx), len(idx), "evaluating (test)",
                          bool(cfg.progress_bar))
    for images, labels in items:
        logits = framework.predict(transform(images.to(device)))
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices.cpu()
        hit = top == labels.view(-1, 1)
        top1 += int(hit[:, 0].sum())
        top5 += int(hit.any(dim=1).sum())
    model.train(was_training)
    n = len(idx)
    res: dict[str, Any] = {"top1": round(100.0 * top1 / n, 4), "top5": round(100.0 * top5 / n, 4),
                           "test": n}
    res["summary"] = f"test top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  ({n} images)"
    return res


def knn_bank_size(n_images: int, knn_train: int) -> int:
    """Images in the k-NN bank: ``knn_train`` of the ``n_images`` labelled ones (0: all)."""
    return min(knn_train, n_images) if knn_train > 0 else n_images


def check_knn_bank(cfg: Any, n_images: int, protocol: str) -> None:
    """Refuse a ``knn_k`` the bank cannot serve, before the first step (or before ``simprune
    eval`` extracts a feature): one line naming ``knn_k``, the bank's size and the valid range."""
    if protocol != "knn":
        return
    bank = knn_bank_size(n_images, cfg.knn_train)
    if cfg.knn_k > bank:
        drawn = (f"knn_train {cfg.knn_train} of {n_images} labelled images" if 0 < cfg.knn_train < n_images
                 else f"all {n_images} labelled images")
        raise ValueError(f"knn_k {cfg.knn_k} is larger than the k-NN bank of {bank} images ({drawn}); "
                         f"valid: 1 to {bank}" + (", or raise knn_train" if bank < n_images else ""))


#: evaluation protocol name -> function(framework, train_set, test_set, cfg, data, device, final)
EVAL_PROTOCOLS = {"knn": knn_protocol, "classify": classify_protocol}
