"""The held-out part of a training split (simprune.data.split): two disjoint parts that cover the
split, a draw that depends only on the split's size and N, and views that read the right rows."""

from __future__ import annotations

import pytest
import torch

from simprune.data.base import ArrayDataset
from simprune.data.split import HELD_OUT_SEED, IndexedView, check_split, held_out_rows, split_training_set


def numbered(n: int) -> ArrayDataset:
    """Image i is filled with i % 256 and labelled i % 10: every row is recognisable."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ArrayDataset(images, torch.arange(n) % 10, [str(k) for k in range(10)])


def test_the_parts_are_disjoint_cover_the_split_and_have_the_asked_sizes():
    held, rest = held_out_rows(1000, 300)
    assert held.numel() == 300 and rest.numel() == 700
    assert torch.equal(torch.cat([held, rest]).sort().values, torch.arange(1000))
    assert held.unique().numel() == 300 and bool((held[1:] > held[:-1]).all())
    # a uniform random draw (the split may be sorted by class), not the first or last rows
    assert 0 < int(held.min()) < 20 and 980 < int(held.max()) < 1000


def test_the_draw_is_fixed_and_independent_of_the_run_seed():
    """Every run of a study and every fine-tuning run from one must see the same parts."""
    torch.manual_seed(123)
    a = held_out_rows(500, 50)[0]
    torch.manual_seed(456)
    assert torch.equal(a, held_out_rows(500, 50)[0])
    # a uniform draw: the first 50 of a permutation seeded by HELD_OUT_SEED, sorted
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(HELD_OUT_SEED))
    assert torch.equal(a, perm[:50].sort().values)
    before = torch.get_rng_state()
    held_out_rows(500, 50)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is untouched


def test_views_read_the_rows_of_their_part():
    ds = numbered(200)
    train, bank = split_training_set(ds, 40, "rest")
    held, rest = held_out_rows(200, 40)
    assert isinstance(train, IndexedView) and len(train) == 160 and len(bank) == 40
    images, labels = train.get_batch(torch.tensor([0, 5, 159]))
    want = rest[[0, 5, 159]]
    assert torch.equal(images[:, 0, 0, 0].long(), want % 256) and torch.equal(labels, want % 10)
    image, label = bank[3]
    assert int(image[0, 0, 0]) == int(held[3]) % 256 and label == int(held[3]) % 10
    assert torch.equal(bank.labels, held % 10) and bank.classes == ds.classes
    trained_on_held, bank2 = split_training_set(ds, 40, "held_out")
    assert trained_on_held is bank2 and torch.equal(trained_on_held.rows, held)


def test_nothing_held_out_is_the_data_set_itself():
    ds = numbered(10)
    assert split_training_set(ds, 0, "rest") == (ds, ds)


@pytest.mark.parametrize("held_out, train_on, n, message", [
    (-1, "rest", None, "held_out must be a whole number of images >= 0 (0: none held out), got -1"),
    (2.5, "rest", None, "held_out must be a whole number of images >= 0"),
    (10, "test", None, "train_on 'test'; valid: rest, held_out"),
    (0, "held_out", None, "train_on 'held_out' needs held_out > 0"),
    (100, "rest", 100, "held_out 100 leaves no training images of the 100 in the split; valid: 0 to 99"),
])
def test_bad_settings_are_refused_with_one_line(held_out, train_on, n, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_split(held_out, train_on, n)
