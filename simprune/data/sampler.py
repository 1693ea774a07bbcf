"""A resumable, distributed batch sampler: the data position is ``(epoch, step in epoch)``.

Every epoch is a permutation of the (sub)set drawn from ``seed + epoch``. Global batch ``s`` is
``perm[s·G : (s+1)·G]`` and process ``r`` of ``W`` takes rows ``[r·G/W, (r+1)·G/W)`` of it, so a run
with W processes sees exactly the same global batches as a single process. The last partial batch
is dropped.

An optional :class:`SampleFilter` chooses, per epoch, which of the indices take part (Tri-Level
E-ViT's example level). Its state belongs in the checkpoint: the trainer saves ``state_dict()`` and
restores it before the first step, so a resumed run draws the same batches.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class SampleFilter(Protocol):
    """Chooses the examples an epoch trains on, from what training observed."""

    def select(self, indices: Tensor, epoch: int) -> Tensor:
        """The ``[M]`` dataset rows epoch ``epoch`` draws from (``M`` may not change over a run)."""
        ...

    def observe(self, batch: Any, out: Any, progress: Any) -> None:
        """Called after every step with the :class:`~simprune.frameworks.Batch` and
        :class:`~simprune.frameworks.StepOutput` (device tensors; no host sync expected)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ResumableSampler:
    """Yields per-process index batches from a given position."""

    def __init__(self, indices: Tensor, global_batch: int, seed: int, rank: int = 0, world: int = 1,
                 sample_filter: SampleFilter | None = None):
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} must be divisible by the number of "
                             f"processes {world}")
        if len(indices) < global_batch:
            raise ValueError(f"the dataset has {len(indices)} samples, fewer than one batch of "
                             f"{global_batch}")
        self.indices = indices
        self.filter = sample_filter
        if sample_filter is not None:
            active = sample_filter.select(indices, 0)
            if len(active) < global_batch:
                raise ValueError(f"the sample filter keeps {len(active)} samples, fewer than one "
                                 f"batch of {global_batch}")
            self._active_len = len(active)
        self.global_batch = global_batch
        self.seed = seed
        self.rank, self.world = rank, world

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.indices) if self.filter is None else self._active_len
        return n // self.global_batch

    def epoch_indices(self, epoch: int) -> Tensor:
        """The indices epoch ``epoch`` draws from (the filter's choice, if any)."""
        if self.filter is None:
            return self.indices
        active = self.filter.select(self.indices, epoch)
        if len(active) != self._active_len:
            raise RuntimeError(f"the sample filter changed the epoch size from {self._active_len} to "
                               f"{len(active)}; it must stay constant")
        return active

    def _perm(self, epoch: int) -> Tensor:
        idx = self.epoch_indices(epoch)
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return idx[torch.randperm(len(idx), generator=g)]

    def batch(self, epoch: int, step: int) -> Tensor:
        """This process's indices of global batch ``step`` of ``epoch``."""
        perm = self._perm(epoch)
        local = self.global_batch // self.world
        start = step * self.global_batch + self.rank * local
        return perm[start : start + local]

    def global_batch_indices(self, epoch: int, step: int) -> Tensor:
        perm = self._perm(epoch)
        return perm[step * self.global_batch : (step + 1) * self.global_batch]
