"""Measured FLOPs of real forwards and backwards with ``torch.utils.flop_counter``.

On CPU, ``FlopCounterMode`` has no formula for the fused CPU attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so a plain count would miss every
``q@kᵀ`` and ``attn@v``. :func:`count_flops` therefore runs the function with the MATH backend of
``scaled_dot_product_attention``, which decomposes attention into ``bmm`` s the counter sees. The
counter counts matrix products and convolutions only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs ``torch.utils.flop_counter`` counts while ``fn()`` runs (forward and any backward)."""
    return sum(count_flops_by_op(fn).values())


def count_flops_by_op(fn: Callable[[], Any]) -> dict[str, int]:
    """Counted FLOPs per aten op (``{"aten.bmm": ..., "aten.addmm": ...}``) while ``fn()`` runs."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def count_flops_by_module(fn: Callable[[], Any]) -> tuple[dict[str, int], int]:
    """Counted FLOPs per module name (``"DINO.student.head"``; a module's count includes its
    children's) while ``fn()`` runs, and the total."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    counts = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return counts, int(counter.get_total_flops())
