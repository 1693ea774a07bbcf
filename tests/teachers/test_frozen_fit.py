"""A frozen teacher that cannot serve the loss is refused with both shapes in the message."""

from __future__ import annotations

import pytest

from simprune.models import create_model
from simprune.teachers.frozen import check_fits


def test_grid_and_width_fit():
    micro4 = create_model("vit_micro_patch4_32", reduce_at=())
    nano4 = create_model("vit_nano_patch4_32", reduce_at=())
    micro8 = create_model("vit_micro_patch4_32", reduce_at=(), patch_size=8)
    check_fits(micro4, nano4, 32, tokens=True, projected=True)  # same grid, projected widths
    check_fits(micro8, nano4, 32, tokens=False, projected=True)  # CLS only: any grid
    with pytest.raises(ValueError, match=r"teacher's patch grid is 4x4 \(patch 8 on 32 px\) and the "
                                         r"student's 8x8 \(patch 4 on 32 px\)"):
        check_fits(micro8, nano4, 32, tokens=True, projected=True)
    with pytest.raises(ValueError, match=f"teacher's width is {micro4.embed_dim} and the student's "
                                         f"{nano4.embed_dim}"):
        check_fits(micro4, nano4, 32, tokens=False, projected=False)
    check_fits(micro4, micro4, 32, tokens=True, projected=False)
