"""The evaluation functions run unchanged on CUDA and agree with CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from simprune.eval import batches, extract_features, knn_predict, linear_probe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _BatchDataset:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]


def test_extract_features_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(0)
    ds = _BatchDataset(
        torch.randint(0, 256, (9, 3, 4, 4), generator=gen, dtype=torch.uint8),
        torch.randint(0, 5, (9,), generator=gen),
    )

    def encode(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 - 0.5

    cpu = extract_features(encode, batches(ds, 4), "cpu", transform)
    gpu = extract_features(encode, batches(ds, 4), "cuda", transform)
    assert gpu[0].device.type == "cpu" and gpu[1].device.type == "cpu"
    torch.testing.assert_close(gpu[0], cpu[0])
    assert torch.equal(gpu[1], cpu[1])


def test_knn_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(1)
    train, test = torch.randn(40, 8, generator=gen), torch.randn(15, 8, generator=gen)
    labels = torch.randint(0, 4, (40,), generator=gen)
    cpu = knn_predict(train, labels, test, 4, k=5, chunk_size=4)
    gpu = knn_predict(train.cuda(), labels.cuda(), test.cuda(), 4, k=5, chunk_size=4)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_linear_probe_cuda_learns_blobs() -> None:
    gen = torch.Generator().manual_seed(2)
    centers = torch.randn(3, 12, generator=gen) * 4.0
    y = torch.arange(3).repeat_interleave(100)
    x = centers[y] + torch.randn(300, 12, generator=gen)
    x, y = x.cuda(), y.cuda()
    res = linear_probe(x[::2], y[::2], x[1::2], y[1::2], 3, epochs=20)
    assert res["top1"] > 95.0
    assert res == linear_probe(x[::2], y[::2], x[1::2], y[1::2], 3, epochs=20)
