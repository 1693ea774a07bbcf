"""Prune a student/teacher pair with SimPrune, from Python.

    python examples/prune_pair.py
"""

import torch

from simprune.drive import lockstep_forward
from simprune.models import create_model
from simprune.reducers import create_reducer, window_position

torch.manual_seed(0)
student = create_model("vit_micro_patch4_32")  # 32-px images, 4-px patches: 64 patch tokens
teacher = create_model("vit_micro_patch4_32")
teacher.load_state_dict(student.state_dict())
teacher.requires_grad_(False)

batch = 8
view1, view2 = torch.randn(batch, 3, 32, 32), torch.randn(batch, 3, 32, 32)
views = torch.cat([view1, view2])  # [v1; v2]: student v1 pairs with teacher v2 and vice versa

out = lockstep_forward(
    student, teacher, views, views,
    reducer=create_reducer("simprune"),
    keep_rate=0.8,                                   # K = round(0.8 · N) at blocks 4, 7, 10
    position=window_position("sliding", t=0.25),     # a quarter into training
)
for p in out.points:
    print(f"block {p.block}: student {p.student.tokens_in}->{p.student.tokens_out} tokens, "
          f"teacher {p.teacher.tokens_in}->{p.teacher.tokens_out}, "
          f"many-to-one {float(p.stats.many_to_one):.2f}")
print("kept patch ids of sample 0 after the last point:", out.points[-1].student.ids[0].tolist())
student_cls, teacher_cls = out.student.cls, out.teacher.cls  # [2B, D] each, feed your SSL loss
student_cls.sum().backward()  # gradients flow through the kept tokens only
