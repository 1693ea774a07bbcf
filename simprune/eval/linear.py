"""Linear probe on frozen, precomputed features.

The backbone is run once (:func:`simprune.eval.features.extract_features`); the probe then trains
one linear map (``weight [C, D]``, ``bias [C]``: what ``nn.Linear`` computes) on the stored
``[N, D]`` matrix for many cheap epochs.

Recipe (defaults chosen for speed and robustness rather than a per-dataset sweep):

- Features are standardised per dimension with the training set's mean and std (the same effect
  as MAE's affine-free BatchNorm before the head, computed once instead of per batch), so one
  learning rate fits features of any scale.
- Weights drawn from N(0, 0.01²) with the seed, bias zero (as DINO and MAE initialise the head).
- AdamW, ``lr = 1e-3``, betas (0.9, 0.999), eps 1e-8, weight decay 0 by default (as the DINO and
  MAE linear probes; any decay applies to the weight only, never the bias), lr cosine-decayed to 0
  per step over all epochs, no warm-up (the loss is convex; there is nothing to stabilise).
- Cross-entropy, mini-batches of 256 reshuffled every epoch, 100 epochs.

Speed: the gradient of softmax cross-entropy for a linear map is closed-form
(``(softmax(z) - onehot(y)) / B`` times the inputs), so each step is three small matmuls and an
in-place AdamW update written with tensor ops: no autograd graph, no optimizer object, about
0.2 ms per step on an idle CPU (twice as fast as autograd + ``torch.optim.AdamW(fused=True)``).
``tests/eval/test_linear.py`` checks it against autograd + ``torch.optim.AdamW`` step for step.
On CPU, when the per-step matmul is small (``B * (D + 1) * C < 2**22``), the loop runs with one
intra-op thread (restored afterwards): threads buy little at that size, and on a busy machine
OpenMP threads spin-waiting on each other turned a 1 s probe into 10-140 s.

The whole run is deterministic given ``seed`` and the device: private generators draw the init
(on CPU, so it is the same everywhere) and the per-epoch shuffles (on the features' device, so
CPU and CUDA shuffle differently); the global RNG is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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

__all__ = ["linear_probe", "standardize", "train_linear"]

_STD_EPS = 1e-6
_SINGLE_THREAD_MACS = 2**22  # per-step matmul size below which the CPU loop uses one thread


@contextmanager
def _cpu_threads(device: torch.device, macs: int) -> Iterator[None]:
    """Run the block with one intra-op thread when on CPU and ``macs`` is small; then restore."""
    previous = torch.get_num_threads()
    if device.type != "cpu" or macs >= _SINGLE_THREAD_MACS or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def standardize(train_feats: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Standardise features with the training set's per-dimension mean and std.

    Args:
        train_feats: ``[N, D]`` features whose statistics are used.
        others: further ``[M, D]`` matrices transformed with the same statistics.

    Returns:
        ``(train_std, *others_std)``, float32; constant dimensions (std < 1e-6) are only centred.
    """
    train_feats = train_feats.float()
    mean = train_feats.mean(dim=0)
    std = train_feats.std(dim=0, correction=0)
    std = torch.where(std < _STD_EPS, torch.ones_like(std), std)
    return tuple((x.float().to(mean.device) - mean) / std for x in (train_feats, *others))


def _adamw_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr: float,
    decay: Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One in-place AdamW update, the same arithmetic as ``torch.optim.AdamW``.

    Args:
        param, grad, exp_avg, exp_avg_sq: ``[C, D + 1]`` tensors (moments updated in place).
        step: 1-based step count for the bias corrections.
        lr: learning rate of this step.
        decay: ``[D + 1]`` per-column weight decay (0 for the bias column).
    """
    beta1, beta2 = betas
    param.mul_(1.0 - lr * decay)
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def train_linear(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Fit ``logits = feats @ weight.T + bias`` by mini-batch AdamW on softmax cross-entropy.

    No argument checks and no standardisation: :func:`linear_probe` does both. The recipe is the
    module docstring's. Runs on ``feats``' device without host syncs.

    Args:
        feats: ``[N, D]`` float32 features (already standardised).
        labels: ``[N]`` int64 labels in ``[0, num_classes)`` on the same device.
        num_classes: ``C``.
        epochs, lr, weight_decay, batch_size, seed, progress: as for :func:`linear_probe`.

    Returns:
        ``weight`` ``[C, D]`` and ``bias`` ``[C]`` (float32, on ``feats``' device).
    """
    n, dim = feats.shape
    device = feats.device
    init_gen = torch.Generator().manual_seed(seed)
    # Shuffles are drawn on the device itself: copying a CPU permutation over would sync the host.
    shuffle_gen = torch.Generator(device=device).manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=init_gen) * 0.01
    # The bias rides along as the last column of theta against a constant-1 input column.
    theta = torch.cat([weight, torch.zeros(num_classes, 1)], dim=1).to(device)  # [C, D + 1]
    exp_avg = torch.zeros_like(theta)
    exp_avg_sq = torch.zeros_like(theta)
    decay = torch.full((dim + 1,), float(weight_decay), device=device)
    decay[-1] = 0.0
    x_aug = torch.cat([feats.float(), feats.new_ones(n, 1, dtype=torch.float32)], dim=1)
    onehot = F.one_hot(labels.to(device=device, dtype=torch.int64), num_classes).float()  # [N, C]

    total_steps = epochs * math.ceil(n / batch_size)
    step = 0
    epoch_iter: Iterable[int] = range(epochs)
    if progress:
        from tqdm import tqdm

        epoch_iter = tqdm(epoch_iter, desc="linear probe", unit="epoch", dynamic_ncols=True,
                          mininterval=1.0, leave=False)
    with _cpu_threads(device, min(batch_size, n) * (dim + 1) * num_classes):
        for _ in epoch_iter:
            perm = torch.randperm(n, generator=shuffle_gen, device=device)
            xs, ys = x_aug[perm], onehot[perm]  # one gather per epoch, then views
            for start in range(0, n, batch_size):
                xb = xs[start:start + batch_size]  # [B, D + 1]
                # d(mean CE)/d(logits) = (softmax - onehot) / B
                dlogits = (xb @ theta.t()).softmax(dim=1).sub_(ys[start:start + batch_size])
                grad = dlogits.t() @ xb / xb.shape[0]  # [C, D + 1]
                cur_lr = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
                step += 1
                _adamw_(theta, grad, exp_avg, exp_avg_sq, step, cur_lr, decay)
    return theta[:, :dim].contiguous(), theta[:, dim].contiguous()


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Train a linear classifier on frozen features and report its accuracy.

    Standardises both feature sets with the training statistics, fits with :func:`train_linear`,
    and evaluates. Runs on the device of ``train_feats`` (everything else is moved there).

    Args:
        train_feats: ``[N, D]`` float training features.
        train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
        test_feats: ``[M, D]`` float test features.
        test_labels: ``[M]`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes ``C``.
        epochs: passes over the training set, ``>= 1``.
        lr: peak AdamW learning rate (cosine-decayed to 0 per step), ``> 0``.
        weight_decay: decoupled AdamW weight decay on the weight matrix (not the bias), ``>= 0``.
        batch_size: training mini-batch size, ``>= 1`` (the last batch of an epoch may be smaller).
        seed: seeds the weight init and the per-epoch shuffles.
        progress: show a tqdm bar over the epochs.

    Returns:
        ``{"top1", "top5", "train_top1": percent, "train_loss": mean cross-entropy of the final
        classifier over the training set}`` as python floats (host syncs only at the end). With
        fewer than 5 classes "top5" counts the top ``num_classes``.
    """
    check_features(train_feats, "train_feats")
    check_features(test_feats, "test_feats")
    check_same_dim(train_feats, test_feats, "train_feats", "test_feats")
    check_labels(train_labels, train_feats.shape[0], "train_labels", "train_feats")
    check_labels(test_labels, test_feats.shape[0], "test_labels", "test_feats")
    check_num_classes(num_classes)
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
            or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    check_label_range(train_labels, num_classes, "train_labels")
    check_label_range(test_labels, num_classes, "test_labels")

    device = train_feats.device
    x_train, x_test = standardize(train_feats, test_feats)  # [N, D], [M, D]
    y_train = train_labels.to(device=device, dtype=torch.int64)
    y_test = test_labels.to(device=device, dtype=torch.int64)
    with torch.no_grad():
        weight, bias = train_linear(
            x_train, y_train, num_classes,
            epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
            progress=progress,
        )
        train_logits = F.linear(x_train, weight, bias)  # [N, C]
        train_loss = F.cross_entropy(train_logits, y_train)
        train_acc = topk_accuracy(train_logits, y_train, ks=(1,))
        test_acc = topk_accuracy(F.linear(x_test, weight, bias), y_test, ks=(1, 5))
    return {
        "top1": test_acc["top1"],
        "top5": test_acc["top5"],
        "train_top1": train_acc["top1"],
        "train_loss": float(train_loss),
    }
