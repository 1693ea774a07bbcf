"""Feature extraction: both dataset protocols, transforms, autocast, random subsets."""

from __future__ import annotations

import pytest
import torch

from simprune.eval.features import batches, extract_features, random_subset


class BatchDataset:
    """Exposes get_batch (vectorised gather), like the project's in-memory datasets."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.calls = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return self.images[idx], self.labels[idx]


class ItemDataset:
    """Only __len__ and __getitem__ returning (uint8 [C, H, W], int)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def _data(n: int = 11):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 4, 5), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 7, (n,), generator=gen)
    return images, labels


def mean_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))  # [B, C, H, W] -> [B, C]


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.5) / 0.25


@pytest.mark.parametrize("dataset_cls", [BatchDataset, ItemDataset])
def test_extract_features_matches_direct_computation(dataset_cls) -> None:
    images, labels = _data()
    ds = dataset_cls(images, labels)
    feats, labs = extract_features(mean_pool, batches(ds, 4), "cpu", transform=normalize)
    assert feats.shape == (11, 3) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert labs.dtype == torch.int64 and torch.equal(labs, labels)
    torch.testing.assert_close(feats, mean_pool(normalize(images)))
    assert not feats.is_inference()  # usable for training a probe afterwards


def test_get_batch_is_used_once_per_batch() -> None:
    ds = BatchDataset(*_data())
    list(batches(ds, 4))
    assert ds.calls == 3  # 4 + 4 + 3


@pytest.mark.parametrize("dataset_cls", [BatchDataset, ItemDataset])
def test_batches_follow_indices(dataset_cls) -> None:
    images, labels = _data()
    idx = torch.tensor([9, 2, 5, 0, 10])
    out = list(batches(dataset_cls(images, labels), 2, idx))
    assert [b[0].shape[0] for b in out] == [2, 2, 1]
    assert torch.equal(torch.cat([b[0] for b in out]), images[idx])
    assert torch.equal(torch.cat([b[1] for b in out]), labels[idx])
    assert all(b[0].dtype == torch.uint8 and b[1].dtype == torch.int64 for b in out)


def test_no_transform_scales_uint8_to_unit_range() -> None:
    images, labels = _data()
    feats, _ = extract_features(mean_pool, batches(ItemDataset(images, labels), 5), "cpu")
    torch.testing.assert_close(feats, mean_pool(images.float() / 255.0))


def test_autocast_returns_float32() -> None:
    images, labels = _data()
    ds = BatchDataset(images, labels)

    def linear_encode(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.flatten(1), torch.ones(2, 60))  # bf16 under autocast

    feats, _ = extract_features(
        linear_encode, batches(ds, 4), "cpu", transform=normalize, amp_dtype=torch.bfloat16
    )
    assert feats.dtype == torch.float32
    expected = linear_encode(normalize(images))
    torch.testing.assert_close(feats, expected, rtol=2e-2, atol=0.5)


def test_extract_features_errors() -> None:
    images, labels = _data()
    ds = BatchDataset(images, labels)
    with pytest.raises(ValueError, match=r"batch 0: encode must return \[B, D\] = \[4, D\]"):
        extract_features(lambda x: x, batches(ds, 4), "cpu", transform=normalize)
    with pytest.raises(ValueError, match="images_iter yielded no batches"):
        extract_features(mean_pool, iter([]), "cpu")
    with pytest.raises(ValueError, match=r"batch 0: images must be \[B, C, H, W\]"):
        extract_features(mean_pool, [(images[0], labels[:1])], "cpu")
    with pytest.raises(ValueError, match=r"batch 0: labels must be \[B\] = \[11\]"):
        extract_features(mean_pool, [(images, labels[:3])], "cpu")


def test_batches_errors() -> None:
    ds = BatchDataset(*_data())
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        next(batches(ds, 0))
    with pytest.raises(ValueError, match=r"indices must be a 1-D integer tensor or None"):
        next(batches(ds, 2, torch.tensor([0.0, 1.0])))
    with pytest.raises(TypeError, match="has neither get_batch"):
        next(batches(object(), 2, torch.tensor([0])))


def test_random_subset_is_random_sorted_and_seeded() -> None:
    idx = random_subset(1000, 50, seed=0)
    assert idx.dtype == torch.int64 and idx.shape == (50,)
    assert torch.all(idx[1:] > idx[:-1])  # strictly ascending: sorted and unique
    assert 0 <= int(idx.min()) and int(idx.max()) < 1000
    assert not torch.equal(idx, torch.arange(50))  # not the first n
    assert int(idx.max()) > 500  # reaches the far end of a class-sorted dataset
    assert torch.equal(idx, random_subset(1000, 50, seed=0))
    assert not torch.equal(idx, random_subset(1000, 50, seed=1))
    torch.manual_seed(0)
    a = random_subset(1000, 50, seed=3)
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(a, random_subset(1000, 50, seed=3))


def test_random_subset_covers_classes_of_sorted_dataset() -> None:
    labels = torch.arange(10).repeat_interleave(100)  # sorted by class
    idx = random_subset(labels.shape[0], 100, seed=0)
    assert labels[idx].unique().numel() == 10


@pytest.mark.parametrize("n", [None, 20, 25])
def test_random_subset_all(n) -> None:
    assert torch.equal(random_subset(20, n, seed=0), torch.arange(20))


@pytest.mark.parametrize(("n_total", "n"), [(-1, None), (10, 0), (10, -2), (10, 2.5)])
def test_random_subset_errors(n_total, n) -> None:
    with pytest.raises(ValueError, match=r"must be .* got"):
        random_subset(n_total, n, seed=0)
