"""Named model configurations and the errors for bad model input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testkit import tiny_config

from simprune.models import MODELS, VisionTransformer, ViTConfig, create_model, model_config


def test_registered_configs():
    assert {"deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
            "vit_nano_patch4_32"} <= set(MODELS.names())
    small = model_config("deit_small_patch16_224")
    assert (small.embed_dim, small.depth, small.num_heads, small.patch_size) == (384, 12, 6, 16)
    nano = model_config("vit_nano_patch4_32")
    assert nano.img_size // nano.patch_size == 8 and nano.reduce_at == (4, 7, 10)


def test_overrides_apply_and_reduce_at_becomes_tuple():
    cfg = model_config("vit_nano_patch4_32", reduce_at=[2, 5], depth=6)
    assert cfg.reduce_at == (2, 5) and cfg.depth == 6
    assert model_config("vit_nano_patch4_32").depth == 12  # the registered config is untouched


def test_nano_forward_shape():
    model = create_model("vit_nano_patch4_32", num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 4)
    assert model.grid_size == (8, 8) and model.num_patches_for(32, 32) == 64


def test_unknown_model_lists_known():
    with pytest.raises(KeyError) as err:
        create_model("vit_nanoo_patch4_32")
    msg = str(err.value)
    assert "vit_nanoo_patch4_32" in msg
    for name in MODELS.names():
        assert name in msg


def test_unknown_override_lists_fields():
    with pytest.raises(TypeError, match=r"\['embed_dims'\].*embed_dim"):
        model_config("vit_nano_patch4_32", embed_dims=64)


@pytest.mark.parametrize(
    "reduce_at, match",
    [
        ((2, 5), r"\[5\].*outside 0\.\.4"),
        ((-1,), r"\[-1\].*outside 0\.\.4"),
        ((0, 0), r"sorted and unique.*\[0, 0\]"),
        ((3, 2), r"sorted and unique.*\[3, 2\].*\[2, 3\]"),
        ((2, 2), r"sorted and unique.*\[2, 2\]"),
    ],
)
def test_bad_reduce_at(reduce_at, match):
    with pytest.raises(ValueError, match=match):
        VisionTransformer(tiny_config(reduce_at=reduce_at))


@pytest.mark.parametrize("block", [np.int64(3), 3.0])
def test_non_python_int_block_is_not_called_out_of_range(block):
    try:
        assert VisionTransformer(tiny_config(reduce_at=(2, block))).reduce_at == (2, 3)
    except ValueError as err:
        assert "outside" not in str(err) and "integer" in str(err)


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match=r"30.*patch_size 4"):
        VisionTransformer(ViTConfig(img_size=30, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                                    reduce_at=(1,)))
    model = VisionTransformer(tiny_config())
    with pytest.raises(ValueError, match=r"18x18.*patch size 4"):
        model(torch.randn(1, 3, 18, 18))


def test_wrong_channels_and_heads():
    model = VisionTransformer(tiny_config())
    with pytest.raises(ValueError, match=r"1 channels.*expects 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"dim 32.*num_heads 3"):
        VisionTransformer(tiny_config(num_heads=3))
