"""PCAE: the teacher's input, its progressive drop, the decoder's targets and the loss, each checked
against a loop written here; the EMA teacher equals the student from construction on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from framework_testkit import SMALL_MIM, random_batch
from framework_testkit import build as build_framework_of

from simprune.config import make_config
from simprune.frameworks import PCAE, Batch, Progress
from simprune.frameworks.pcae import teacher_counts
from simprune.run import check_config

SMALL = {"framework": "pcae", **SMALL_MIM}


def build(**over):
    return build_framework_of({**SMALL, **over})


def batch(augment, n: int = 3, seed: int = 0) -> Batch:
    return random_batch(augment, n, seed, first_index=0)


def teacher_by_loop(fw: PCAE, image: torch.Tensor, masked: list[int], score: str = "paper"):
    """The teacher for one image, written out from the paper's Eq. 2: masked patches with their
    positions, no CLS, each block whole (attention, then MLP), and after blocks 1, 5 and 9 the
    least mean-like half of the block's *output* tokens kept."""
    net = fw.teacher["backbone"]
    with torch.no_grad():
        patches, _ = net.patch_embed(image[None])
        x = (patches + net.pos_embed[:, 1:])[0, masked]  # [48, D]
        ids = list(masked)
        for number, block in enumerate(net.blocks, start=1):
            x = x + block.attn(block.norm1(x[None]))[0][0]
            x = x + block.mlp(block.norm2(x[None]))[0]
            if number in (1, 5, 9):
                k = int(len(ids) * 0.5)
                if score == "paper":
                    sim = [float(F.cosine_similarity(x[i], x.mean(0), dim=0)) for i in range(len(ids))]
                else:
                    xn = F.normalize(x, dim=-1)
                    sim = [float(xn[i] @ xn.mean(0)) for i in range(len(ids))]
                keep = sorted(sorted(range(len(ids)), key=lambda i: (sim[i], i))[:k])
                x, ids = x[keep], [ids[i] for i in keep]
        x = net.norm(x)
    return {pid: x[j] for j, pid in enumerate(ids)}


def test_teacher_sees_the_masked_patches_and_the_student_the_rest():
    fw, aug = build()
    b = batch(aug)
    parts = fw.step_parts(b, Progress(3, 10, 10))
    t_in = parts.teacher_points[0]
    assert t_in.block == 0 and t_in.tokens_out == 48
    for s in range(3):
        student_ids = parts.student.ids[s].tolist()
        teacher_ids = t_in.ids[s].tolist()
        assert not set(student_ids) & set(teacher_ids)
        assert sorted(student_ids + teacher_ids) == list(range(64))
    assert parts.student.num_prefix == 1 and parts.teacher.num_prefix == 0  # no CLS in the teacher


@pytest.mark.parametrize(("ratio", "counts"), [(0.75, [48, 24, 12, 6]), (0.85, [55, 27, 13, 6]),
                                               (0.9, [58, 29, 14, 7])])
def test_teacher_token_counts_on_the_cpu_model(ratio, counts):
    fw, aug = build(model="vit_micro_patch4_32", decoder_depth=8, decoder_dim=64, decoder_heads=4,
                    mask_ratio=ratio)
    out = fw(batch(aug, 2), Progress(0, 10, 10))
    teacher = [p for p in out.points if p.branch == "teacher"]
    assert [p.tokens_out for p in teacher] == counts == teacher_counts(counts[0], 0.5, 3)
    assert [p.block for p in teacher] == [0, 1, 5, 9]
    assert [out.logs[f"teacher_tokens/{i}"] for i in range(4)] == counts
    assert out.logs["decoded"] == counts[-1]


@pytest.mark.parametrize("score", ["paper", "normalized"])
def test_targets_are_the_teacher_tokens_with_the_same_id_and_the_loss_is_a_loop(score):
    fw, aug = build(drop_score=score)
    b = batch(aug)
    prog = Progress(4, 10, 10)
    seen = {}
    handle = fw.decoder.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    parts = fw.step_parts(b, prog)
    handle.remove()
    pred = seen["out"]
    assert torch.equal(pred, parts.pred)
    assert pred.shape == (3, 6, 48)  # one vector per surviving position, the encoder's width
    assert torch.equal(seen["args"][2], parts.teacher.ids)  # predicted at the surviving ids
    x = b.views.globals[0]
    per = []
    for s in range(3):
        ref = teacher_by_loop(fw, x[s], parts.masking.masked[s].tolist(), score)
        assert sorted(ref) == parts.teacher.ids[s].tolist()
        terms = []
        for j, pid in enumerate(parts.teacher.ids[s].tolist()):
            torch.testing.assert_close(parts.teacher.x[s, j], ref[pid], atol=1e-5, rtol=1e-5)
            t = ref[pid]
            t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-6)
            terms.append(1 - F.cosine_similarity(pred[s, j], t, dim=0))
        per.append(torch.stack(terms).mean())
    torch.testing.assert_close(parts.per_sample, torch.stack(per), atol=1e-5, rtol=1e-5)
    out = fw(b, prog)
    torch.testing.assert_close(out.loss, torch.stack(per).mean(), atol=1e-5, rtol=1e-5)


def test_ema_teacher_equals_the_student_right_after_construction():
    """In one process (the reference copies the student only under DDP)."""
    fw, _ = build(momentum=0.99)
    s = fw.student["backbone"].state_dict()
    t = fw.teacher["backbone"].state_dict()
    assert set(s) == set(t)
    assert all(torch.equal(s[k], t[k]) for k in s)
    assert not any(p.requires_grad for p in fw.teacher.parameters())
    assert set(fw.teacher) == {"backbone"}  # no decoder in the teacher
    assert fw.teacher["backbone"].reduce_at == (0, 1, 5, 9) and fw.backbone.reduce_at == (0,)
    # the teacher moves towards the student after a step, by the EMA rule
    with torch.no_grad():
        for p in fw.student.parameters():
            p.add_(0.1)
    before = fw.teacher["backbone"].blocks[0].attn.qkv.weight.clone()
    m = fw.after_step(Progress(0, 10, 10))["momentum"]
    assert m == pytest.approx(0.99)
    after = fw.teacher["backbone"].blocks[0].attn.qkv.weight
    torch.testing.assert_close(after, m * before + (1 - m) * fw.backbone.blocks[0].attn.qkv.weight)


def test_teacher_gets_no_gradient_and_the_student_does():
    fw, aug = build(drop_path=0.1)
    out = fw(batch(aug), Progress(0, 10, 10))
    out.loss.backward()
    assert all(p.grad is None for p in fw.teacher.parameters())
    grads = dict(fw.student.named_parameters())
    for name in ("backbone.cls_token", "backbone.blocks.0.attn.qkv.weight", "decoder.mask_token",
                 "decoder.pred.weight"):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name
    assert not fw.teacher["backbone"].training


def test_random_drop_keeps_the_counts_but_not_the_tokens():
    fw, aug = build()
    rd, _ = build(random_drop=True)
    b = batch(aug)
    a, r = fw.step_parts(b, Progress(0, 10, 10)), rd.step_parts(b, Progress(0, 10, 10))
    assert [p.tokens_out for p in r.teacher_points] == [48, 24, 12, 6]
    assert torch.equal(a.masking.masked, r.masking.masked)
    assert not torch.equal(a.teacher.ids, r.teacher.ids)
    for s in range(3):
        assert set(r.teacher.ids[s].tolist()) <= set(r.masking.masked[s].tolist())
    again = rd.step_parts(b, Progress(0, 10, 10))
    assert torch.equal(again.teacher.ids, r.teacher.ids)  # per-sample noise, not the global RNG


def test_options_drop_blocks_and_keep():
    fw, aug = build(drop_at=[2, 6], drop_keep=0.25, mask_ratio=0.5)
    parts = fw.step_parts(batch(aug), Progress(0, 10, 10))
    assert [(p.block, p.tokens_out) for p in parts.teacher_points] == [(0, 32), (2, 8), (6, 2)]


@pytest.mark.parametrize(("over", "match"), [
    ({"drop_at": [0, 5]}, "drop_at"),
    ({"drop_at": [5, 13]}, "drop_at"),
    ({"drop_keep": 0.0}, "drop_keep"),
    ({"drop_score": "cosine"}, "drop_score"),
    ({"method": "mean_sim"}, r"remove the \[reducer\]"),
    ({"momentum": 1.5}, "momentum"),
])
def test_refusals(over, match):
    with pytest.raises(ValueError, match=match):
        check_config(make_config({**SMALL, **over}))


def test_evaluation_reads_the_student_unless_told():
    fw, _ = build()
    assert fw.eval_backbone() is fw.student["backbone"]
    assert fw.eval_backbone("teacher") is fw.teacher["backbone"]
    with pytest.raises(ValueError, match="PCAE has the branches student, teacher, got branch 'ema'"):
        fw.eval_backbone("ema")
    assert fw.eval_pool == "mean"
