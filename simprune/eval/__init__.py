"""Evaluation of frozen features: extraction, weighted k-NN (DINO's) and a linear probe.

Typical use::

    idx = random_subset(len(train_set), 10_000, seed=0)
    train_x, train_y = extract_features(encode, batches(train_set, 256, idx), device, transform)
    test_x, test_y = extract_features(encode, batches(test_set, 256), device, transform)
    knn_accuracy(train_x, train_y, test_x, test_y, num_classes=10)     # {"top1", "top5"}
    linear_probe(train_x, train_y, test_x, test_y, num_classes=10)     # {"top1", ...}
"""

from simprune.eval.features import batches, extract_features, random_subset
from simprune.eval.knn import knn_accuracy, knn_predict
from simprune.eval.linear import linear_probe, standardize, train_linear
from simprune.eval.metrics import topk_accuracy

__all__ = [
    "batches",
    "extract_features",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "random_subset",
    "standardize",
    "topk_accuracy",
    "train_linear",
]
