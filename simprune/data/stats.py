"""Per-channel normalisation statistics of the supported data sets."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DATASET_STATS", "dataset_stats"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: name -> (mean, std) per channel, for images scaled to ``[0, 1]``.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # From shared/data/README.md (same as the original release).
    "cifar10": ((0.491, 0.482, 0.447), (0.245, 0.243, 0.261)),
    # Commonly quoted values of the CIFAR-100 training set.
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
    "fashion_mnist": ((0.286,), (0.353,)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    # Arbitrary image folders: ImageNet's statistics are the usual default.
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel of data set ``name`` (pixels in ``[0, 1]``).

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASET_STATS:
        raise KeyError(f"no statistics for data set {name!r}; known: {', '.join(sorted(DATASET_STATS))}")
    return DATASET_STATS[key]
