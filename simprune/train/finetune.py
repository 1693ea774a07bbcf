"""The config of a fine-tuning run: supervised training whose backbone starts from a pre-trained
run (``simprune finetune``, and the fine-tuning phase of a study).

A fine-tuning run inherits from the pre-trained run what its weights need (model, patch grid,
position embedding) and where its data lie (data set, folder, test split); a fine-tuning recipe and
overrides set the rest. The framework is always ``supervised``, started from the run's backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simprune.config import TrainConfig, make_config

#: keys a fine-tuning run takes from the pre-trained run's config
INHERITED = ("model", "patch_size", "embed_dim", "depth", "num_heads", "global_size", "load_size",
             "dataset", "pos_embed", "data", "test_split")


def run_config(src: str | Path) -> dict[str, Any]:
    """The config saved with a pre-trained run (a folder or ``checkpoint.pt``); ``{}`` for a
    ``.safetensors`` file, which carries weights only. Raises ``FileNotFoundError`` with what to
    pass when there is nothing at ``src``."""
    src = Path(src)
    ckpt = src / "checkpoint.pt" if src.is_dir() else src
    if ckpt.suffix == ".pt":
        from simprune.checkpoint import load_checkpoint

        if not ckpt.is_file():
            raise FileNotFoundError(f"no checkpoint at {str(ckpt)!r}; pass a run folder, "
                                    "checkpoint.pt or .safetensors file")
        return dict(load_checkpoint(ckpt).get("config", {}))
    if not ckpt.is_file():
        raise FileNotFoundError(f"no weights at {str(ckpt)!r}")
    return {}


def finetune_config(pretrained: Mapping[str, Any], init_from: str | Path,
                    recipe: Mapping[str, Any] | None = None,
                    overrides: Mapping[str, Any] | None = None, branch: str | None = None,
                    where: str = "") -> TrainConfig:
    """The fine-tuning run's config: the :data:`INHERITED` keys of ``pretrained`` (a run's saved
    config, nested as :meth:`TrainConfig.to_dict` writes it), then ``recipe`` (a fine-tuning
    recipe, flat or nested), then ``overrides`` (dotted keys); framework ``supervised`` whose
    backbone starts from ``init_from`` (its ``branch``, default the run's evaluation branch)."""
    base = {k: pretrained[k] for k in INHERITED if k in pretrained}
    base.update(recipe or {})
    over = dict(overrides or {})
    if base.get("data") and not over.get("data") and not Path(base["data"]).expanduser().exists():
        # the folder the run trained on has moved: $SIMPRUNE_DATA (said), or one line saying so
        from simprune.data import run_data_root

        base["data"] = str(run_data_root(None, base["data"], init_from))
    over["framework"] = "supervised"
    over["supervised.init_from"] = str(init_from)
    if branch:
        over["supervised.init_branch"] = branch
    return make_config(base, over, where=where)


__all__ = ["INHERITED", "finetune_config", "run_config"]
