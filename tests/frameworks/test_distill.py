"""Task-agnostic distillation (``framework = "distill"``): a frozen teacher, a token-pruned student.

- the teacher gets no gradient and its weights do not move over training steps;
- the step's loss equals a float64 re-derivation from the student's own tokens and the teacher's
  (each retained token against the teacher token at its original id, the fused token left out,
  a ToMe-merged token against the mean of its sources);
- a teacher of another patch grid, or with missing tensors, is refused with a clear message;
- a tiny real run trains, resumes and evaluates through the unchanged trainer, serves as a teacher
  itself, and ``simprune finetune --ckpt RUN`` fine-tunes its student.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from train_testkit import TINY

from simprune.config import make_config
from simprune.drive import forward_reduced
from simprune.frameworks import Batch, Progress, distill
from simprune.frameworks.distill import Distill, DistillConfig
from simprune.models import create_model
from simprune.teachers import load_frozen_teacher
from simprune.train.loop import Trainer, build_augment, build_framework, check_config

TEACHER = "vit_micro_patch4_32"  # 96 wide, the same 8x8 grid as the 48-wide nano student


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A saved (random) ViT/4 backbone with timm names: a teacher a recipe can point at."""
    torch.manual_seed(11)
    net = create_model(TEACHER, reduce_at=())
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def distill_config(teacher_file, **over):
    base = {"framework": "distill", "model": "vit_nano_patch4_32", "drop_path": 0.0,
            "teacher.path": str(teacher_file), "teacher.model": TEACHER}
    return make_config({**base, **over})


def step(fw, cfg, seed: int = 0, b: int = 3):
    """One framework forward on random images; returns the output and the views it saw."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = build_augment(cfg, fw)(images)
    out = fw(Batch(views, torch.full((b,), -1), torch.arange(b)), Progress(10, 10, 10))
    return out, views.globals[0]


def ref_per_sample(fw, x, kind: str, loss: str, norm: str = "none"):
    """The loss per image from loops in float64 over the student's and the teacher's own tokens
    (``norm = "batch"``: each teacher channel standardised by a loop over the batch first)."""
    with torch.no_grad():
        s = forward_reduced(fw.student["backbone"], x, fw.plan.reducer, fw.plan.keep_rate(1.0)).state
        t = fw.teacher["backbone"].forward_features(x)
        p_cls = fw.student["cls_head"](s.x[:, 0]).double()
        p_tok = fw.token_head(s.patches).double()
    t_cls, t_tok = t.x[:, 0].double(), t.patches.double()
    if norm == "batch":
        def z(v):  # v: [M, D] -> each column minus its mean, over its (biased) std
            mu = v.mean(0)
            return (v - mu) / ((v - mu).pow(2).mean(0) + 1e-6).sqrt()
        t_cls = z(t_cls)
        t_tok = z(t_tok.reshape(-1, t_tok.shape[-1])).reshape(t_tok.shape)

    def dist(p, q):
        if kind == "cos":
            return 1 - float(p @ q) / max(float(p.norm() * q.norm()), 1e-8)
        u = (p - q).abs()
        if kind == "smooth_l1":  # beta 1
            return float(torch.where(u < 1, u * u / 2, u - 0.5).mean())
        return float((u * u).mean())

    per, held_sizes = [], []
    for b in range(x.shape[0]):
        total = dist(p_cls[b], t_cls[b])
        if loss == "all":
            terms = []
            for i, d in enumerate(s.ids[b].tolist()):
                held = [j for j in range(t_tok.shape[1]) if int(s.source[b, j]) == i]
                if d < 0:
                    continue  # EViT's fused token
                if len(held) == 1:
                    assert held == [d]  # a retained token holds exactly its own patch
                held_sizes.append(len(held))
                target = t_tok[b, held].mean(0)
                terms.append(dist(p_tok[b, i], target))
            total += sum(terms) / len(terms)
        per.append(total)
    return per, held_sizes, s


@pytest.mark.parametrize("method,kind,loss,norm", [
    ("evit", "cos", "all", "none"), ("tome", "mse", "all", "none"), ("evit", "cos", "cls", "none"),
    ("dense", "cos", "all", "none"), ("evit", "cos", "all", "batch"), ("tome", "smooth_l1", "all", "batch")])
def test_the_step_loss_equals_the_re_derivation(teacher_file, method, kind, loss, norm):
    over = {"kd_distance": kind, "kd_loss": loss, "kd_target_norm": norm}
    if method != "dense":
        over.update({"method": method, "keep_rate": 0.5})
    cfg = distill_config(teacher_file, **over)
    check_config(cfg)
    torch.manual_seed(0)
    fw = build_framework(cfg).train()
    assert fw.teacher.training is False and fw.teacher["backbone"].training is False
    out, x = step(fw, cfg)
    want, sizes, s = ref_per_sample(fw, x, kind, loss, norm)
    assert out.per_sample.tolist() == pytest.approx(want, abs=1e-5)
    assert float(out.loss.detach()) == pytest.approx(sum(want) / len(want), abs=1e-5)
    assert len(out.points) == 3  # one record per reduction point (dense: nothing reduced)
    if method == "evit" and loss == "all":
        assert (s.ids < 0).any(dim=1).all()  # a fused token was there, and was left out
        assert out.logs["kd_tokens_distilled"] == pytest.approx(float((s.ids >= 0).sum(1).float().mean()))
    if method == "tome":
        assert max(sizes) > 1  # merged tokens were compared with the mean of their sources


def test_the_teacher_gets_no_gradient_and_does_not_move(teacher_file, data_root, tmp_path):
    cfg = make_config({**TINY, "framework": "distill", "data": str(data_root), "out": str(tmp_path / "run"),
                       "method": "evit", "keep_rate": 0.5, "max_steps": 2, "eval_at_end": False,
                       "teacher": {"path": str(teacher_file), "model": TEACHER}})
    trainer = Trainer(cfg)
    fw = trainer.framework
    teacher_before = {k: v.clone() for k, v in fw.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in fw.student.state_dict().items()}
    assert not any(p.requires_grad for p in fw.teacher.parameters())
    trained = {id(p) for g in trainer.opt.param_groups for p in g["params"]}
    assert trained.isdisjoint(id(p) for p in fw.teacher.parameters())
    loss, _ = trainer.train_step(0)
    assert math.isfinite(float(loss))
    assert all(p.grad is None for p in fw.teacher.parameters())
    assert fw.teacher["backbone"].training is False
    trainer.run()
    assert all(torch.equal(v, fw.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, fw.student.state_dict()[k]) for k, v in student_before.items())
    # the student's heads project to the teacher's width
    assert fw.student["cls_head"].out_features == fw.teacher["backbone"].embed_dim == 96


def test_a_teacher_of_another_grid_or_with_missing_tensors_is_refused(tmp_path):
    other = create_model("deit_tiny_patch16_224", reduce_at=(), img_size=32)  # 2x2 grid on 32 px
    grid = tmp_path / "patch16.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(grid))
    cfg = distill_config(grid, **{"teacher.model": "deit_tiny_patch16_224"})
    with pytest.raises(ValueError, match=r"teacher's patch grid is 2x2 \(patch 16 on 32 px\) and the "
                                         r"student's 8x8 \(patch 4 on 32 px\)"):
        build_framework(cfg)
    # a CLS-only loss needs no common grid
    build_framework(distill_config(grid, **{"teacher.model": "deit_tiny_patch16_224", "kd_loss": "cls"}))
    sd = create_model(TEACHER, reduce_at=()).state_dict()
    del sd["norm.weight"], sd["blocks.3.mlp.fc1.bias"]
    missing = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(missing))
    with pytest.raises(ValueError, match=r"missing.*blocks\.3\.mlp\.fc1\.bias.*norm\.weight"):
        build_framework(distill_config(missing))


def test_what_cannot_work_is_refused(teacher_file, tmp_path):
    with pytest.raises(ValueError, match="needs a frozen teacher: set teacher.path"):
        check_config(make_config({"framework": "distill"}))
    nowhere = make_config({"framework": "distill", "teacher_path": str(tmp_path / "nope")})
    check_config(nowhere)  # a recipe names its teacher before the teacher run exists
    with pytest.raises(FileNotFoundError, match="does not exist; train the teacher first"):
        build_framework(nowhere)
    with pytest.raises(ValueError, match="takes teacher kind 'frozen', got 'ema'"):
        check_config(make_config({"framework": "distill", "teacher.kind": "ema"}))
    with pytest.raises(ValueError, match="applies to a ema teacher"):
        distill_config(teacher_file, **{"teacher.momentum": 0.9})
    with pytest.raises(ValueError, match=r"\[dino\]"):
        distill_config(teacher_file, out_dim=8)
    for key, value, needle in [("kd_loss", "tokens", "distill.loss"), ("kd_head", "conv", "distill.head"),
                               ("kd_distance", "l1", "distill.distance"), ("kd_smooth_l1_beta", 0.0, "beta"),
                               ("kd_target_norm", "layer", "distill.target_norm")]:
        with pytest.raises(ValueError, match=needle):
            check_config(distill_config(teacher_file, **{key: value}))
    with pytest.raises(ValueError, match="pair reducer"):
        check_config(distill_config(teacher_file, method="simprune"))
    with pytest.raises(ValueError, match="batch_size >= 2"):
        check_config(distill_config(teacher_file, kd_target_norm="batch", batch_size=1))


def test_heads_and_a_random_teacher_for_cost_counting(teacher_file, capsys, monkeypatch):
    monkeypatch.setattr(distill, "_NOTED", set())  # the note is said once per process
    fw = build_framework(distill_config(teacher_file, kd_head="mlp", kd_head_hidden=32))
    assert [m.out_features for m in fw.student["token_head"] if hasattr(m, "out_features")] == [32, 96]
    shared = build_framework(distill_config(teacher_file, kd_shared_head=True))
    assert "token_head" not in shared.student and shared.token_head is shared.student["cls_head"]
    assert "token_head" not in build_framework(distill_config(teacher_file, kd_loss="cls")).student
    capsys.readouterr()
    rnd = build_framework(make_config({"framework": "distill", "model": "vit_nano_patch4_32",
                                       "kd_random_teacher": True}))
    assert "RANDOMLY INITIALISED" in capsys.readouterr().err
    assert rnd.teacher["backbone"].embed_dim == 48  # the student's architecture by default
    assert Distill.bench_defaults(set()) == {"distill.random_teacher": True}
    assert Distill.bench_defaults({"teacher.path"}) == {}


def test_reduced_evaluation_features(teacher_file):
    cfg = distill_config(teacher_file, method="evit", keep_rate=0.5)
    fw = build_framework(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = fw.eval_features()
    with torch.no_grad():
        want = forward_reduced(fw.student["backbone"], x, fw.plan.reducer, 0.5).cls
        assert torch.equal(feats(x), want)
        assert not torch.allclose(want, fw.student["backbone"].forward_features(x).x[:, 0])
    assert fw.eval_features("teacher") is None
    off = build_framework(distill_config(teacher_file, method="evit", keep_rate=0.5,
                                         kd_eval_reduced=False))
    assert off.eval_features() is None
    assert fw.eval_backbone("teacher") is fw.teacher["backbone"]


def test_a_tiny_run_trains_resumes_evaluates_and_finetunes(teacher_file, data_root, tmp_path):
    run = tmp_path / "kd"
    base = {**TINY, "framework": "distill", "data": str(data_root), "out": str(run), "method": "evit",
            "keep_rate": 0.7, "teacher": {"path": str(teacher_file), "model": TEACHER}}
    cfg = make_config(base, {"max_steps": 2})
    assert isinstance(cfg.fw, DistillConfig)
    assert Trainer(cfg).run()["step"] == 2
    result = Trainer(make_config(base)).run()  # resumes at step 2, runs to the end, evaluates
    assert result["finished"] and 0 <= result["knn_top1"] <= 100
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and "kd_cls" in r and "kd_tokens" in r for r in steps)
    # the run's student serves as a frozen teacher (strictly), and as a fine-tuning start
    student = load_frozen_teacher(run)
    saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["framework"]
    assert all(torch.equal(v, saved[f"student.backbone.{k}"]) for k, v in student.state_dict().items())
    from simprune.cli import main

    ft = tmp_path / "ft"
    assert main(["finetune", "--ckpt", str(run), "--out", str(ft), "--data", str(data_root),
                 "--train-subset", "64", "--batch-size", "16", "--epochs", "0.25", "--knn-test", "32",
                 "--method", "evit", "--keep-rate", "0.5", "--progress-bar", "false"]) == 0
    res = json.loads((ft / "results.json").read_text())
    assert res["finished"] and 0 <= res["top1"] <= 100
    cfg_ft = json.loads((ft / "config.json").read_text())
    assert cfg_ft["framework"] == "supervised" and cfg_ft["supervised"]["init_from"] == str(run)
    assert cfg_ft["model"] == "vit_nano_patch4_32"


def test_knn_and_the_linear_probe_read_the_pruned_student(teacher_file, data_root, monkeypatch):
    from simprune.data import load_dataset
    from simprune.run import data_info
    from simprune.train.evaluate import knn_protocol

    cfg = distill_config(teacher_file, method="evit", keep_rate=0.5, knn_train=64, knn_test=32,
                         linear_probe=True, progress_bar=False)
    fw = build_framework(cfg)
    reduced, seen = fw.eval_features(), []

    def spy(images):  # noqa: ANN001, ANN202
        seen.append(images.shape[0])
        return reduced(images)

    monkeypatch.setattr(fw, "eval_features", lambda branch=None: spy if branch == "student" else None)
    train_set = load_dataset("cifar10", data_root, "train")
    test_set = load_dataset("cifar10", data_root, "test")
    res = knn_protocol(fw, train_set, test_set, cfg, data_info(cfg, train_set), torch.device("cpu"))
    assert sum(seen) == 64 + 32 and 0 <= res["knn_top1"] <= 100 and "linear_top1" in res
