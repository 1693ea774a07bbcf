"""Step time of trained runs against a reference run, interleaved, on real images.

    OMP_NUM_THREADS=1 SIMPRUNE_DATA=../shared/data python scripts/trained_step_time.py \\
        runs/study/table5_cpu/dense/seed0 runs/study/table5_cpu/dynamic-simprune_fb0.78/seed0

`simprune bench cost` builds fresh weights, which is right for a reducer whose cost is fixed by
its keep rate and wrong for one whose cost follows what it learned (dynamic_simprune's gates
choose how many tokens each batch keeps). This script times the training step's forward and
backward of each run's *saved* weights on the same real training images (``--images``, the
first run's recipe's augmentation, new views each round, the same for every run), in rounds that
visit every run once with the order rotating, after ``--warmup`` rounds. No optimizer step is
taken, so every round runs the same weights (the AdamW update is about 1% of the step). Reports the
median wall and process-CPU time of each run over the first run's, and the training-FLOPs
fraction a run logs in its forward (``flops``, dynamic_simprune's padded fraction) where it logs
one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders; the first is the reference")
    ap.add_argument("--images", type=int, default=64, help="images per step (default 64)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--progress", type=float, default=0.5, help="training progress of the step")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from simprune.checkpoint import CKPT_NAME
    from simprune.data import load_dataset, resolve_data_root
    from simprune.frameworks import Batch, Progress
    from simprune.train.loop import build_augment
    from simprune.viz.runs import framework_from_run, load_saved

    torch.manual_seed(args.seed)
    runs = [load_saved(p if p.endswith('.pt') else f"{p}/{CKPT_NAME}") for p in args.runs]
    built = [framework_from_run(r)[:2] for r in runs]
    cfg0 = built[0][0]
    ds = load_dataset(cfg0.dataset, resolve_data_root(cfg0.data or None), "train")
    images = torch.stack([ds[int(i)][0] for i in torch.randperm(len(ds))[: args.images]])
    labels = torch.zeros(args.images, dtype=torch.long)
    augments = [build_augment(cfg, fw) for cfg, fw in built]
    steps = 1000
    progress = Progress(int(args.progress * steps), steps, steps)
    wall: list[list[float]] = [[] for _ in built]
    cpu: list[list[float]] = [[] for _ in built]
    flops: list[list[float]] = [[] for _ in built]

    def step(i: int, round_: int) -> None:
        cfg, fw = built[i]
        with torch.random.fork_rng():
            torch.manual_seed(args.seed * 1_000_003 + round_)
            views = augments[i](images)
        fw.trainable().train()
        fw.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fw(Batch(views, labels, torch.arange(args.images)), progress)
        out.loss.backward()
        t1, c1 = time.perf_counter(), time.process_time()
        if round_ >= args.warmup:
            wall[i].append(t1 - t0)
            cpu[i].append(c1 - c0)
            if "flops" in out.logs:
                flops[i].append(float(out.logs["flops"]))

    n = len(built)
    for round_ in range(args.warmup + args.rounds):
        for k in range(n):
            step((k + round_) % n, round_)
    ref_wall, ref_cpu = statistics.median(wall[0]), statistics.median(cpu[0])
    print(f"{args.images} images, {args.rounds} timed rounds after {args.warmup}, progress "
          f"{args.progress}, {torch.get_num_threads()} threads; forward + backward, no optimizer step")
    for r, w, c, f in zip(runs, wall, cpu, flops):
        logged = f" logged flops {statistics.fmean(f):.3f}" if f else ""
        print(f"{str(r.path):60s} wall {statistics.median(w) / ref_wall:.3f}  "
              f"cpu {statistics.median(c) / ref_cpu:.3f}{logged}")


if __name__ == "__main__":
    main()
