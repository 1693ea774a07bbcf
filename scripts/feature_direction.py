"""How much of a run's final-norm features is one shared direction (simprune.eval.direction).

    python scripts/feature_direction.py --ckpt runs/cifar10_distill_teacher [--images 200]

Reads the run's evaluation backbone, unreduced, on a seeded random draw of test images and prints
the mean pairwise cosine of the CLS features, of each image's patch tokens (averaged over the
images), of the CLS features standardised per channel (as ``kd_target_norm = "batch"`` does), and
the share of the CLS features' energy in their mean. Needs ``$SIMPRUNE_DATA``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from simprune.data import load_dataset, resolve_data_root
from simprune.data.eval_transform import EvalTransform
from simprune.data.stats import dataset_stats
from simprune.eval.direction import mean_energy_share, mean_pairwise_cosine
from simprune.eval.features import random_subset
from simprune.losses.kd import standardize
from simprune.run import load_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint.pt")
    p.add_argument("--images", type=int, default=200, help="test images (default 200)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.images < 2:
        print(f"feature_direction: --images must be >= 2, got {args.images}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    cfg, fw, _ = load_run(args.ckpt)
    backbone = fw.eval_backbone(fw.eval_branch).eval()
    data = load_dataset(cfg.dataset, resolve_data_root(cfg.data or None), cfg.test_split)
    images, _ = data.get_batch(random_subset(len(data), args.images, args.seed))
    mean, std = dataset_stats(cfg.dataset)
    with torch.no_grad():
        x = backbone.forward_features(EvalTransform(cfg.global_size, mean, std)(images)).x
    cls, patches = x[:, 0], x[:, 1:]
    standardised = standardize(cls, dims=(0,))  # what kd_target_norm = "batch" does to CLS targets
    per_image = sum(mean_pairwise_cosine(patches[i]) for i in range(len(patches))) / len(patches)
    print(f"{args.ckpt}: {len(cls)} {cfg.dataset} {cfg.test_split} images (seed {args.seed})")
    print(f"  CLS features: mean pairwise cosine {mean_pairwise_cosine(cls):.3f}, "
          f"energy in their mean {mean_energy_share(cls):.3f}")
    print(f"  patch tokens of one image: mean pairwise cosine {per_image:.3f}")
    print(f"  CLS standardised per channel: mean pairwise cosine {mean_pairwise_cosine(standardised):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
