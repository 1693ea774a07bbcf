"""SimPrune's matchings on real features: how many-to-one the argmax is, how many students the
one-to-one assignment leaves to its fallback after r proposal rounds, and what each costs.

    OMP_NUM_THREADS=1 SIMPRUNE_DATA=../shared/data python scripts/matching_rounds.py
    ... --ckpt runs/x                      # a trained run's weights instead of fresh ones

One batch of training images (``--images``, the recipe's augmentation) through both branches of
the recipe's framework (default: the main job, ``configs/cifar10_mocov3_simprune.toml``, at
``--keep-rate`` 0.7 and progress ``--progress``), recording the student-teacher cosine matrix at
every reduction point. Times are the minimum over ``--repeats`` calls of the matching alone on that
matrix (the similarity product excluded; it is the same for both matchings), in CPU time of the
calling thread, so that other processes on a busy machine do not inflate them.
"""

from __future__ import annotations

import argparse
import time

import torch

import simprune.reducers.simprune as sp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/cifar10_mocov3_simprune.toml")
    ap.add_argument("--ckpt", default=None, help="a run folder or checkpoint (default: fresh weights)")
    ap.add_argument("--images", type=int, default=64, help="images (two views each) (default 64)")
    ap.add_argument("--keep-rate", type=float, default=0.7)
    ap.add_argument("--progress", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24, 32])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from simprune.config import load_recipe
    from simprune.data import load_dataset, resolve_data_root
    from simprune.train.loop import build_augment
    from simprune.viz.runs import framework_from_run, fresh_framework, load_runs

    torch.manual_seed(args.seed)
    if args.ckpt:
        run = load_runs([args.ckpt])[-1]
        cfg, fw, _ = framework_from_run(run)
        where = f"{args.ckpt} step {run.step}/{run.total_steps}"
    else:
        over = {"reducer.method": "simprune", "reducer.keep_rate": args.keep_rate}
        cfg, fw = fresh_framework(load_recipe(args.config), None, args.seed, over)
        where = f"fresh weights of {args.config}"
    ds = load_dataset(cfg.dataset, resolve_data_root(cfg.data or None), "train")
    idx = torch.randperm(len(ds))[: args.images]
    images = torch.stack([ds[int(i)][0] for i in idx])
    views = build_augment(cfg, fw)(images)
    cos_at: list[torch.Tensor] = []
    real = sp.match_tokens

    def spy(student, teacher, matching="argmax", rounds=sp.ONE_TO_ONE_ROUNDS):
        s = torch.nn.functional.normalize(student.float(), dim=-1)
        t = torch.nn.functional.normalize(teacher.float(), dim=-1)
        cos_at.append(s @ t.transpose(1, 2))
        return real(student, teacher, matching, rounds)

    sp.match_tokens = spy
    fw.train()
    with torch.no_grad():
        fw.encode(torch.cat(views.globals), None, args.progress)
    sp.match_tokens = real

    def best_time(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
        return min(times) * 1e3

    print(f"{where}: {len(cos_at)} points, {args.images} images x 2 views, "
          f"{torch.get_num_threads()} threads")
    totals = {"argmax": 0.0, **{r: 0.0 for r in args.rounds}}
    for i, cos in enumerate(cos_at, start=1):
        b, n, m = cos.shape
        arg = cos.argmax(-1)
        distinct = sum(row.unique().numel() for row in arg) / len(arg)
        left = {r: 100 * float(sp.proposal_rounds(cos, r)[1].float().mean()) for r in args.rounds}
        t_arg = best_time(lambda c=cos: c.max(dim=-1))
        totals["argmax"] += t_arg
        line = (f"point {i}: N={n}, mean argmax cosine {float(cos.max(-1).values.mean()):.3f}, "
                f"distinct argmax partners {float(distinct):.1f} of {n}; argmax {t_arg:.2f} ms")
        print(line)
        for r in args.rounds:
            t_one = best_time(lambda r=r, c=cos: sp.assign_one_to_one(c, r))
            totals[r] += t_one
            print(f"    rounds {r:>3}: left to the fallback {left[r]:6.2f}%   {t_one:7.2f} ms")
    print("all points: argmax {:.2f} ms; ".format(totals["argmax"]) + "; ".join(
        f"{r} rounds {totals[r]:.2f} ms" for r in args.rounds))


if __name__ == "__main__":
    main()
