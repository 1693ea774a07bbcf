"""Loading timm-named weights from state dicts, .pth and .safetensors files, with a full report."""

from __future__ import annotations

import pytest
import torch
from model_testkit import tiny_config, tiny_model
from safetensors.torch import save_file

from simprune.models import LoadReport, VisionTransformer, WeightLoadError, load_weights


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_through_file(tmp_path, images, suffix):
    src = tiny_model(seed=1, num_classes=3)
    dst = tiny_model(seed=2, num_classes=3)
    with torch.no_grad():
        assert not torch.allclose(src(images), dst(images))
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    report = load_weights(dst, path)
    assert isinstance(report, LoadReport)
    assert sorted(report.loaded) == sorted(sd)
    assert report.missing == [] and report.unexpected == [] and report.resized == []
    with torch.no_grad():
        torch.testing.assert_close(dst(images), src(images), rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "teacher"])
def test_wrapped_checkpoints_are_unwrapped(tmp_path, images, wrapper):
    src, dst = tiny_model(seed=1), tiny_model(seed=2)
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: src.state_dict(), "epoch": 3}, path)
    load_weights(dst, path)
    with torch.no_grad():
        torch.testing.assert_close(dst(images), src(images), rtol=0, atol=0)


def test_prefix_is_stripped(images):
    src, dst = tiny_model(seed=1), tiny_model(seed=2)
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    sd["head_proj.weight"] = torch.zeros(1)  # outside the prefix: ignored by design
    report = load_weights(dst, sd, prefix="backbone.")
    assert report.unexpected == []
    with torch.no_grad():
        torch.testing.assert_close(dst(images), src(images), rtol=0, atol=0)


def test_missing_and_unexpected_keys_strict_raises_naming_them():
    src = tiny_model(seed=1)
    sd = src.state_dict()
    sd.pop("blocks.1.mlp.fc2.bias")
    sd.pop("norm.weight")
    sd["dist_token"] = torch.zeros(1, 1, 32)
    dst = tiny_model(seed=2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(WeightLoadError) as err:
        load_weights(dst, sd)
    msg = str(err.value)
    for key in ("blocks.1.mlp.fc2.bias", "norm.weight", "dist_token", "strict=False"):
        assert key in msg
    # nothing was loaded by the failed strict call
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_missing_and_unexpected_keys_non_strict_reports_them():
    src = tiny_model(seed=1)
    sd = src.state_dict()
    sd.pop("blocks.1.mlp.fc2.bias")
    sd["dist_token"] = torch.zeros(1, 1, 32)
    dst = tiny_model(seed=2)
    old_bias = dst.blocks[1].mlp.fc2.bias.detach().clone()
    report = load_weights(dst, sd, strict=False)
    assert report.missing == ["blocks.1.mlp.fc2.bias"]
    assert report.unexpected == ["dist_token"]
    assert "blocks.1.mlp.fc2.bias" not in report.loaded and "pos_embed" in report.loaded
    assert torch.equal(dst.blocks[1].mlp.fc2.bias, old_bias)  # left at init
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    text = str(report)
    assert "blocks.1.mlp.fc2.bias" in text and "dist_token" in text


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    sd = VisionTransformer(tiny_config(embed_dim=48, num_heads=3)).state_dict()
    sd.pop("pos_embed")  # its own error is tested below
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(WeightLoadError) as err:
        load_weights(tiny_model(), path, strict=False)
    msg = str(err.value)
    assert "blocks.0.attn.qkv.weight" in msg
    assert "(144, 48)" in msg and "(96, 32)" in msg
    # every misfit is listed, not only the first
    assert "blocks.3.mlp.fc2.weight" in msg and "cls_token" in msg


def test_single_bad_shape_is_named():
    sd = tiny_model(seed=1).state_dict()
    sd["blocks.2.mlp.fc1.weight"] = torch.zeros(100, 32)
    with pytest.raises(WeightLoadError, match=r"blocks\.2\.mlp\.fc1\.weight.*\(100, 32\).*\(128, 32\)"):
        load_weights(tiny_model(), sd)


def test_pos_embed_from_other_grid_is_resampled(images):
    big = VisionTransformer(tiny_config(img_size=64))  # 16x16 grid
    with torch.no_grad():
        big.pos_embed.copy_(torch.randn_like(big.pos_embed))
    dst = tiny_model(seed=3)
    report = load_weights(dst, big.state_dict())
    assert report.resized == ["pos_embed"]
    assert "pos_embed" in report.loaded and report.missing == []
    assert dst.pos_embed.shape == (1, 65, 32)
    assert torch.equal(dst.pos_embed[0, 0], big.pos_embed[0, 0])  # CLS position copied as is
    assert not torch.equal(dst.pos_embed, tiny_model(seed=3).pos_embed)
    # resampling 16x16 -> 8x8 roughly averages 2x2 blocks: each value within the source block range
    src_grid = big.pos_embed[0, 1:].reshape(16, 16, 32)
    got = dst.pos_embed[0, 1:].reshape(8, 8, 32)
    lo = src_grid.min().item()
    hi = src_grid.max().item()
    assert got.min() >= lo - 1.0 and got.max() <= hi + 1.0
    assert "pos_embed" in str(report)


def test_pos_embed_of_other_width_is_an_error():
    sd = tiny_model().state_dict()
    sd["pos_embed"] = torch.zeros(1, 17, 48)
    with pytest.raises(WeightLoadError, match=r"pos_embed.*\(1, 17, 48\).*\(1, 65, 32\)"):
        load_weights(tiny_model(), sd)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(tiny_model(), tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightLoadError, match="list"):
        load_weights(tiny_model(), path)
