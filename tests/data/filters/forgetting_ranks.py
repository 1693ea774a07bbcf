"""Run under ``torchrun`` (or alone) by ``test_two_processes_see_one_subset``: drives the example
level through a scripted run with each process's share of every global batch, then saves what the
process ended with (``rank<r>.pt`` in the folder given as the argument)."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as tdist

from simprune import dist
from simprune.data.filters import ForgettingFilter
from simprune.data.sampler import ResumableSampler


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        tdist.init_process_group("gloo")
    rank = dist.rank()
    rows = torch.arange(200, 264)
    f = ForgettingFilter(rows, 0.75, 0.125, (1 / 3, 2 / 3), seed=3, verbose=False)
    sampler = ResumableSampler(rows, 8, seed=3, rank=rank, world=world, sample_filter=f)
    spe = sampler.steps_per_epoch
    total = 6 * spe
    subsets = []
    for step in range(total):
        epoch, it = divmod(step, spe)
        idx = sampler.batch(epoch, it)
        if it == 0:
            subsets.append(sampler.epoch_indices(epoch).tolist())
        correct = (idx * 13 + step * 5) % 7 > 2  # a fixed outcome per (row, step), on any rank
        extras = {"correct": correct, "cls_attn_var": (idx % 11).float()}
        f.observe(SimpleNamespace(index=idx), SimpleNamespace(extras=extras),
                  SimpleNamespace(step=step, total_steps=total, steps_per_epoch=spe))
        if step == 4 * spe - 1:  # the statistics the second round reads
            before_round = f.state_dict()
    torch.save({"state": f.state_dict(), "before_round": before_round, "subsets": subsets,
                "world": world}, f"{out}/rank{rank}.pt")
    if world > 1:
        tdist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
