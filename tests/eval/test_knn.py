"""Weighted k-NN: equivalence with a loop-based re-derivation of DINO's vote, and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from simprune.eval.knn import knn_accuracy, knn_predict


def reference_knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> torch.Tensor:
    """Per test sample: cosine to every train sample, k largest, sum exp(s / T) per class."""
    train = train_feats.double().tolist()
    labels = train_labels.tolist()
    out = []
    for q in test_feats.double().tolist():
        q_norm = math.sqrt(sum(v * v for v in q))
        sims = []
        for j, t in enumerate(train):
            t_norm = math.sqrt(sum(v * v for v in t))
            dot = sum(a * b for a, b in zip(q, t, strict=True))
            sims.append((dot / (q_norm * t_norm), labels[j]))
        sims.sort(key=lambda pair: pair[0], reverse=True)
        row = [0.0] * num_classes
        for sim, label in sims[:k]:
            row[label] += math.exp(sim / temperature)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def _random_problem(seed: int, n: int = 37, m: int = 23, d: int = 8, c: int = 5):
    gen = torch.Generator().manual_seed(seed)
    train = torch.randn(n, d, generator=gen) * 3.0  # unnormalised on purpose
    test = torch.randn(m, d, generator=gen)
    labels = torch.randint(0, c, (n,), generator=gen)
    return train, labels, test, c


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (7, 0.07), (20, 0.5)])
def test_matches_loop_reference(chunk_size: int, k: int, temperature: float) -> None:
    train, labels, test, c = _random_problem(seed=k)
    expected = reference_knn_scores(train, labels, test, c, k, temperature)
    got = knn_predict(train, labels, test, c, k=k, temperature=temperature, chunk_size=chunk_size)
    assert got.shape == (test.shape[0], c)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


def test_chunking_does_not_change_scores() -> None:
    train, labels, test, c = _random_problem(seed=3, m=50)
    full = knn_predict(train, labels, test, c, k=5, chunk_size=1024)
    chunked = knn_predict(train, labels, test, c, k=5, chunk_size=7)  # 50 = 7 * 7 + 1
    # Votes reach exp(1 / 0.07) ~ 1.6e6: compare relatively (matmul blocking differs per chunk).
    torch.testing.assert_close(full, chunked, rtol=1e-5, atol=1e-6)


def test_invariant_to_feature_scale() -> None:
    train, labels, test, c = _random_problem(seed=4)
    a = knn_predict(train, labels, test, c, k=5)
    b = knn_predict(train * 10.0, labels, test * 0.1, c, k=5)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_separated_clusters_are_perfect() -> None:
    gen = torch.Generator().manual_seed(0)
    c, d = 6, 32
    centers = torch.randn(c, d, generator=gen) * 5.0
    train_y = torch.arange(c).repeat_interleave(30)
    test_y = torch.arange(c).repeat_interleave(10)
    train_x = centers[train_y] + 0.1 * torch.randn(train_y.shape[0], d, generator=gen)
    test_x = centers[test_y] + 0.1 * torch.randn(test_y.shape[0], d, generator=gen)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, c, chunk_size=7)
    assert acc == {"top1": 100.0, "top5": 100.0}
    assert all(isinstance(v, float) for v in acc.values())


def test_accuracy_counts_correct_rows() -> None:
    # Each test point sits on one train point; with k=1 the prediction is that point's label.
    train_x = torch.eye(4)
    train_y = torch.tensor([0, 1, 2, 3])
    test_x = torch.eye(4)
    test_y = torch.tensor([0, 1, 0, 0])  # two of four right
    acc = knn_accuracy(train_x, train_y, test_x, test_y, num_classes=4, k=1)
    assert acc["top1"] == pytest.approx(50.0)
    assert acc["top5"] == pytest.approx(100.0)  # fewer than 5 classes: top-C


def test_k_larger_than_train_set_is_clamped_with_warning() -> None:
    train, labels, test, c = _random_problem(seed=5, n=9)
    with pytest.warns(UserWarning, match=r"k=20 exceeds the 9 training samples; using k=9"):
        got = knn_predict(train, labels, test, c, k=20)
    torch.testing.assert_close(got, knn_predict(train, labels, test, c, k=9))
    expected = reference_knn_scores(train, labels, test, c, 9, 0.07)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_raises(k) -> None:
    train, labels, test, c = _random_problem(seed=6)
    with pytest.raises(ValueError, match=rf"k must be an int >= 1, got {k!r}"):
        knn_predict(train, labels, test, c, k=k)


@pytest.mark.parametrize("temperature", [0.0, -0.07, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature: float) -> None:
    train, labels, test, c = _random_problem(seed=7)
    with pytest.raises(ValueError, match=rf"temperature must be .* got {temperature!r}"):
        knn_predict(train, labels, test, c, temperature=temperature)


def test_bad_chunk_size_raises() -> None:
    train, labels, test, c = _random_problem(seed=8)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        knn_predict(train, labels, test, c, chunk_size=0)


def test_shape_and_label_errors() -> None:
    train, labels, test, c = _random_problem(seed=9)
    with pytest.raises(ValueError, match=r"train_feats has D=8 but test_feats has D=5"):
        knn_predict(train, labels, test[:, :5], c)
    with pytest.raises(ValueError, match=r"train_labels has 36 entries but train_feats has 37"):
        knn_predict(train, labels[:-1], test, c)
    with pytest.raises(ValueError, match=r"test_feats must be 2-D \[N, D\], got shape \(8,\)"):
        knn_predict(train, labels, test[0], c)
    with pytest.raises(TypeError, match=r"train_labels must be an integer tensor"):
        knn_predict(train, labels.float(), test, c)
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, 3\)"):
        knn_predict(train, labels, test, 3)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1, got 0"):
        knn_predict(train, labels, test, 0)
    test_y = torch.zeros(test.shape[0] + 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"test_labels has 24 entries but test_feats has 23"):
        knn_accuracy(train, labels, test, test_y, c)
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, 5\).*\[-1, -1\]"):
        knn_accuracy(train, labels, test, torch.full((23,), -1), c)
