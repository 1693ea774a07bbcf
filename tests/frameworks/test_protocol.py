"""The framework protocol: a framework registered in a test file trains, checkpoints, resumes and
evaluates through the unchanged trainer; sampler filters keep their state in the checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn
from train_testkit import TINY

from simprune.config import make_config
from simprune.data.augment import OneCropAugment, OneCropConfig
from simprune.frameworks import FRAMEWORKS, Framework, StepOutput
from simprune.frameworks.parts import build_backbone
from simprune.train.loop import Trainer


@dataclass
class ToyConfig:
    """``[toy]``: the projection width."""

    width: int = 8


class Toy(Framework):
    """Regress a random projection of the mean image colour from the CLS token (no labels)."""

    Config: ClassVar[type] = ToyConfig

    def __init__(self, backbone, width: int) -> None:  # noqa: ANN001
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "head": nn.Linear(backbone.embed_dim, width)})
        self.register_buffer("proj", torch.randn(3, width))

    @classmethod
    def build(cls, cfg, data):  # noqa: ANN001, ANN206
        return cls(build_backbone(cfg, data), cfg.fw.width)

    def build_augment(self, cfg, data):  # noqa: ANN001, ANN201
        return OneCropAugment(OneCropConfig(size=cfg.global_size, scale=(0.5, 1.0), mean=data.mean,
                                            std=data.std))

    def forward(self, batch, progress):  # noqa: ANN001, ANN201
        x = batch.views.globals[0]
        pred = self.student["head"](self.student["backbone"].forward_features(x).x[:, 0])
        target = x.mean(dim=(2, 3)) @ self.proj
        per = ((pred - target) ** 2).mean(-1)
        return StepOutput(per.mean(), per.detach(), {"seen": batch.index.float().mean()})


class EvenRows:
    """A sample filter: even dataset rows only; counts what it observed (checkpointed state)."""

    def __init__(self) -> None:
        self.seen = 0

    def select(self, indices, epoch):  # noqa: ANN001, ANN201
        return indices[indices % 2 == 0]

    def observe(self, batch, out, progress):  # noqa: ANN001
        assert bool((batch.index % 2 == 0).all())
        assert out.per_sample.shape == batch.index.shape
        self.seen += int(batch.index.numel())

    def state_dict(self):  # noqa: ANN201
        return {"seen": self.seen}

    def load_state_dict(self, state):  # noqa: ANN001
        self.seen = state["seen"]


@pytest.fixture()
def toy():
    FRAMEWORKS.register("toy")(Toy)
    try:
        yield Toy
    finally:
        FRAMEWORKS.unregister("toy")


def test_a_framework_registered_in_a_test_trains_resumes_and_evaluates(toy, data_root, tmp_path):
    torch.set_num_threads(1)
    over = {"framework": "toy", "data": str(data_root), "out": str(tmp_path / "run"), "max_steps": 2,
            "deterministic": True, "toy": {"width": 4}}
    cfg = make_config(TINY, over)
    assert cfg.fw == ToyConfig(width=4)
    with pytest.raises(ValueError, match=r"\[mocov3\]"):
        make_config(TINY, {**over, "moco_hidden": 8})
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.framework.student.state_dict().items()}
    assert trainer.run()["step"] == 2
    after = trainer.framework.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # resume to the end, then the framework's evaluation protocol (k-NN on the CLS features)
    cfg2 = make_config(TINY, {**over, "max_steps": 0})
    result = Trainer(cfg2).run()
    assert result["finished"] and 0 <= result["knn_top1"] <= 100
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(ln).get("loss") for ln in lines]
    assert all(v is None or v == v for v in losses)


def test_sampler_filter_state_is_checkpointed(toy, data_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    filters: list[EvenRows] = []

    def make_filter(self, subset):  # noqa: ANN001, ANN202
        filters.append(EvenRows())
        return filters[-1]

    monkeypatch.setattr(Toy, "sample_filter", make_filter, raising=False)
    over = {"framework": "toy", "data": str(data_root), "out": str(tmp_path / "run"), "max_steps": 3,
            "ckpt_every": 1, "eval_at_end": False, "epochs": 1.0}
    trainer = Trainer(make_config(TINY, over))
    assert trainer.steps_per_epoch == (256 // 2) // 16  # only the filter's half of the subset
    trainer.run()
    assert filters[-1].seen == 3 * 16
    resumed = Trainer(make_config(TINY, {**over, "max_steps": 4}))
    assert filters[-1].seen == 3 * 16  # restored from the checkpoint before the first step
    resumed.run()
    assert filters[-1].seen == 4 * 16
