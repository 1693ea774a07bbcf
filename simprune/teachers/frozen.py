"""A frozen teacher: any ViT loaded strictly from a simprune run or a timm-named weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simprune.finite import describe_nonfinite, nonfinite_names, state_tensors
from simprune.models import create_model
from simprune.models.vit import VisionTransformer
from simprune.models.weights import load_weights

CKPT_NAME = "checkpoint.pt"


def _read_run(path: Path) -> tuple[dict[str, Any], Path]:
    ckpt = path / CKPT_NAME if path.is_dir() else path
    if not ckpt.is_file():
        raise FileNotFoundError(f"teacher {str(path)!r}: no {CKPT_NAME} there; pass a simprune run "
                                "folder, its checkpoint.pt or a .safetensors file")
    return torch.load(ckpt, map_location="cpu", weights_only=False), ckpt


def load_frozen_teacher(path: str | Path, model: str = "", branch: str = "",
                        img_size: int | None = None) -> VisionTransformer:
    """A ViT in eval mode with ``requires_grad=False`` everywhere.

    Args:
        path: a simprune run folder or ``checkpoint.pt`` (its config names the architecture; the
            backbone of ``branch``, default the run's evaluation branch, is loaded), or a
            ``.safetensors``/``.pth`` file with timm names (``model`` names the architecture).
        model: a registered model name; required for a weights file, optional for a run.
        img_size: the teacher's input size (default: the run's, or the model's).
    Raises:
        FileNotFoundError, ValueError: a missing file, an unnamed architecture, or weights that
        do not fit the architecture (missing, unexpected or differently shaped tensors).
    """
    p = Path(path)
    overrides: dict[str, Any] = {"reduce_at": ()}
    if p.suffix in (".safetensors", ".pth", ".bin") and p.is_file():
        if not model:
            raise ValueError(f"teacher {str(p)!r} is a weights file: name its architecture with "
                             "teacher.model (e.g. vit_micro_patch4_32)")
        if img_size:
            overrides["img_size"] = img_size
        net = create_model(model, **overrides)
        load_weights(net, p, strict=True)
    else:
        saved, ckpt = _read_run(p)
        cfg = saved.get("config", {})
        branch = branch or saved.get("eval_branch", "")
        if not branch:
            raise ValueError(f"{ckpt} predates recorded evaluation branches: set the teacher branch")
        arch = model or cfg.get("model", "")
        overrides["img_size"] = img_size or cfg.get("global_size")
        section = cfg.get(cfg.get("framework", ""), None)
        for key in ("init", "pos_embed"):  # init: [mocov3]'s since it left the base keys
            value = cfg.get(key, section.get(key) if isinstance(section, dict) else None)
            if value is not None:
                overrides[key] = value
        for key in ("patch_size", "embed_dim", "depth", "num_heads"):  # the run's size overrides
            if cfg.get(key):
                overrides[key] = cfg[key]
        net = create_model(arch, **overrides)
        prefix = f"{branch}.backbone."
        sd = {k[len(prefix):]: v for k, v in saved["framework"].items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{ckpt} has no {branch!r} backbone")
        load_weights(net, sd, strict=True)
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return net


def backbone_state(path: str | Path, branch: str = "",
                   into: VisionTransformer | None = None) -> dict[str, torch.Tensor]:
    """The backbone weights of a simprune run (``branch``, default its evaluation branch) or of a
    timm-named weights file, checked strictly against ``into`` when given (an error lists what is
    missing, unexpected or differently shaped)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".pth", ".bin") and p.is_file():
        from simprune.models.weights import read_state_dict

        sd = read_state_dict(p)
    else:
        saved, ckpt = _read_run(p)
        branch = branch or saved.get("eval_branch", "")
        if not branch:
            raise ValueError(f"{ckpt} predates recorded evaluation branches: set init_branch")
        prefix = f"{branch}.backbone."
        sd = {k[len(prefix):]: v for k, v in saved["framework"].items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{ckpt} has no {branch!r} backbone")
    bad = nonfinite_names(state_tensors(sd, None))
    if bad:
        raise ValueError(f"{p} holds NaN or inf weights (in {describe_nonfinite(bad)}): a backbone "
                         "cannot start from it")
    if into is not None:
        load_weights(into, sd, strict=True)  # raises with the differences
        return into.state_dict()
    return sd


def check_fits(teacher: VisionTransformer, student: VisionTransformer, image_size: int, *,
               tokens: bool, projected: bool) -> None:
    """Refuse a frozen teacher that cannot serve a loss, naming both shapes.

    Args:
        image_size: the side of the images both branches see.
        tokens: the loss compares patch tokens position by position, so both patch grids on
            ``image_size`` must be equal (a CLS-only loss needs no grid).
        projected: a projection maps the student's width to the teacher's; without one both
            widths must be equal.
    Raises:
        ValueError: naming the teacher's and the student's grid or width.
    """
    def grid(net: VisionTransformer) -> str:
        p = net.cfg.patch_size
        return f"{image_size // p}x{image_size // p} (patch {p} on {image_size} px)"

    if tokens and teacher.cfg.patch_size != student.cfg.patch_size:
        raise ValueError(f"a token-level loss compares patch tokens position by position, but the teacher's "
                         f"patch grid is {grid(teacher)} and the student's {grid(student)}; use a teacher "
                         "with the student's patch size, or a CLS-only loss")
    if not projected and teacher.embed_dim != student.embed_dim:
        raise ValueError(f"the teacher's width is {teacher.embed_dim} and the student's {student.embed_dim}: "
                         "without a projection head the loss needs equal widths")
