"""A resumable, distributed batch sampler: the data position is ``(epoch, step in epoch)``.

Every epoch is a permutation of the (sub)set drawn from ``seed + epoch``. Global batch ``s`` is
``perm[s·G : (s+1)·G]`` and process ``r`` of ``W`` takes rows ``[r·G/W, (r+1)·G/W)`` of it, so a run
with W processes sees exactly the same global batches as a single process. The last partial batch
is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ResumableSampler:
    """Yields per-process index batches from a given position."""

    def __init__(self, indices: Tensor, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} must be divisible by the number of "
                             f"processes {world}")
        if len(indices) < global_batch:
            raise ValueError(f"the dataset has {len(indices)} samples, fewer than one batch of "
                             f"{global_batch}")
        self.indices = indices
        self.global_batch = global_batch
        self.seed = seed
        self.rank, self.world = rank, world

    @property
    def steps_per_epoch(self) -> int:
        return len(self.indices) // self.global_batch

    def batch(self, epoch: int, step: int) -> Tensor:
        """This process's indices of global batch ``step`` of ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = self.indices[torch.randperm(len(self.indices), generator=g)]
        local = self.global_batch // self.world
        start = step * self.global_batch + self.rank * local
        return perm[start : start + local]

    def global_batch_indices(self, epoch: int, step: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = self.indices[torch.randperm(len(self.indices), generator=g)]
        return perm[step * self.global_batch : (step + 1) * self.global_batch]
