"""Linear probe: the hand-written training step equals autograd + torch.optim.AdamW; accuracy on
separable data; determinism; argument errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from simprune.eval.linear import linear_probe, standardize, train_linear


def _blobs(seed: int, n_per_class: int, c: int = 4, d: int = 16, spread: float = 4.0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=gen) * spread
    y = torch.arange(c).repeat_interleave(n_per_class)
    x = centers[y] + torch.randn(y.shape[0], d, generator=gen)
    perm = torch.randperm(y.shape[0], generator=gen)
    return x[perm] * 7.0 + 3.0, y[perm]  # off-scale features: the probe must standardise


def reference_train_linear(x, y, c, epochs, lr, weight_decay, batch_size, seed):
    """Same recipe with autograd, nn-free params and torch.optim.AdamW (cosine set per step)."""
    n, d = x.shape
    init_gen = torch.Generator().manual_seed(seed)
    shuffle_gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(c, d, generator=init_gen) * 0.01).requires_grad_()
    bias = torch.zeros(c, requires_grad=True)
    opt = torch.optim.AdamW(
        [{"params": [weight], "weight_decay": weight_decay}, {"params": [bias], "weight_decay": 0}],
        lr=lr,
    )
    total = epochs * math.ceil(n / batch_size)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=shuffle_gen)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(F.linear(x[idx], weight, bias), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return weight.detach(), bias.detach()


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_train_linear_matches_autograd_adamw(weight_decay: float) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=gen)
    y = torch.randint(0, 3, (50,), generator=gen)
    kwargs = dict(epochs=4, lr=0.05, weight_decay=weight_decay, batch_size=16, seed=5)  # ragged
    w, b = train_linear(x, y, 3, **kwargs)
    w_ref, b_ref = reference_train_linear(x, y, 3, **kwargs)
    assert w.shape == (3, 6) and b.shape == (3,)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6)
    assert b.abs().sum() > 0  # the bias column was trained


def test_separable_blobs_reach_high_accuracy() -> None:
    x, y = _blobs(seed=0, n_per_class=150)
    train_x, train_y, test_x, test_y = x[:400], y[:400], x[400:], y[400:]
    res = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=20)
    assert set(res) == {"top1", "top5", "train_top1", "train_loss"}
    assert all(isinstance(v, float) for v in res.values())
    assert res["top1"] > 95.0
    assert res["train_top1"] > 95.0
    assert res["top5"] == 100.0  # fewer than 5 classes
    assert 0.0 <= res["train_loss"] < math.log(4)  # below chance-level cross-entropy


def test_deterministic_under_seed() -> None:
    gen = torch.Generator().manual_seed(2)
    x, xt = torch.randn(120, 10, generator=gen), torch.randn(40, 10, generator=gen)
    y, yt = torch.randint(0, 5, (120,), generator=gen), torch.randint(0, 5, (40,), generator=gen)
    torch.manual_seed(123)
    first = linear_probe(x, y, xt, yt, 5, epochs=5, batch_size=32, seed=7)
    torch.manual_seed(456)  # the global RNG plays no part
    second = linear_probe(x, y, xt, yt, 5, epochs=5, batch_size=32, seed=7)
    assert first == second
    w7, _ = train_linear(x, y, 5, epochs=5, batch_size=32, seed=7)
    w8, _ = train_linear(x, y, 5, epochs=5, batch_size=32, seed=8)
    assert not torch.equal(w7, w8)


def test_standardize_uses_train_statistics() -> None:
    gen = torch.Generator().manual_seed(3)
    train = torch.randn(200, 4, generator=gen) * torch.tensor([1.0, 5.0, 0.1, 1.0]) + 2.0
    train[:, 3] = 7.0  # constant dimension: centred, not divided by ~0
    test = train[:10] * 1.0
    train_s, test_s = standardize(train, test)
    torch.testing.assert_close(train_s.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(train_s[:, :3].std(0, correction=0), torch.ones(3))
    assert torch.all(train_s[:, 3] == 0)
    torch.testing.assert_close(test_s, train_s[:10])


def test_argument_errors() -> None:
    gen = torch.Generator().manual_seed(4)
    x, xt = torch.randn(30, 6, generator=gen), torch.randn(10, 6, generator=gen)
    y, yt = torch.randint(0, 3, (30,), generator=gen), torch.randint(0, 3, (10,), generator=gen)
    with pytest.raises(ValueError, match=r"train_labels has 29 entries but train_feats has 30"):
        linear_probe(x, y[:-1], xt, yt, 3)
    with pytest.raises(ValueError, match=r"train_feats has D=6 but test_feats has D=5"):
        linear_probe(x, y, xt[:, :5], yt, 3)
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, 3\).*\[0, 3\]"):
        linear_probe(x, y, xt, torch.cat([yt[:-1], torch.tensor([3])]), 3)
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, 2\)"):
        linear_probe(x, y, xt, yt, 2)
    with pytest.raises(TypeError, match=r"test_labels must be an integer tensor, got dtype"):
        linear_probe(x, y, xt, yt.float(), 3)
    with pytest.raises(TypeError, match=r"train_feats must be floating point"):
        linear_probe(x.long(), y, xt, yt, 3)
    with pytest.raises(ValueError, match=r"train_labels must be 1-D \[N\], got shape \(30, 1\)"):
        linear_probe(x, y[:, None], xt, yt, 3)
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got 0"):
        linear_probe(x, y, xt, yt, 3, epochs=0)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got -1"):
        linear_probe(x, y, xt, yt, 3, batch_size=-1)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got 0.0"):
        linear_probe(x, y, xt, yt, 3, lr=0.0)
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0, got -0.1"):
        linear_probe(x, y, xt, yt, 3, weight_decay=-0.1)


def test_thread_count_is_restored() -> None:
    before = torch.get_num_threads()
    x, y = _blobs(seed=5, n_per_class=20)
    linear_probe(x, y, x, y, num_classes=4, epochs=2)
    assert torch.get_num_threads() == before
