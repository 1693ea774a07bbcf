"""Image-folder decode time per image: the old fixed 256-px load size against the size derived from
the crop size, measured interleaved (image by image, in rounds) so that a busy machine slows both
alike.

    OMP_NUM_THREADS=1 SIMPRUNE_DATA=../shared/data python scripts/bench_folder_decode.py

Makes a temporary folder of JPEGs from the CIFAR-10 archive (upscaled to 64 px like Tiny-ImageNet,
and to 500x375 like an ImageNet photo), then times ``simprune.data.folder.load_image`` at each
load size, plus the cache's reload of the same images as a memory-mapped gather.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simprune.data import load_dataset, resolve_data_root
from simprune.data.folder import default_load_size, load_image, resize_crop


def make_jpegs(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    ds = load_dataset("cifar10", resolve_data_root(None), "test")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n]
    paths = []
    for i, j in enumerate(idx.tolist()):
        arr = ds.images[j].permute(1, 2, 0).numpy()
        img = Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC)
        path = folder / "train" / "c" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=75)
        paths.append(path)
    return paths


def load_full_decode(path: Path, load_size: int) -> torch.Tensor:
    """The loader before this change: a full-size decode (no JPEG draft), then the same resize."""
    with Image.open(path) as img:
        return resize_crop(img, load_size)


def time_interleaved(paths: list[Path], ways: dict[str, tuple], rounds: int) -> dict[str, float]:
    """Median ms per image of each ``name: (loader, load_size)``, alternating image by image."""
    per: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for p in paths:
            for k in order:
                fn, size = ways[k]
                t = time.perf_counter()
                fn(p, size)
                per[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per folder")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, crops in (("64-px JPEGs (Tiny-ImageNet-like)", (64, 64), (64, 32)),
                                  ("500x375 JPEGs (ImageNet-like)", (500, 375), (224, 64))):
            folder = Path(tmp) / name.split()[0]
            paths = make_jpegs(folder, args.n, size)
            ways = {"before: 256 px, full decode": (load_full_decode, 256)}
            for c in crops:
                s = default_load_size(c)
                ways[f"now, global_size {c}: {s} px"] = (load_image, s)
                if s != 256:
                    ways[f"  ({s} px without the JPEG draft)"] = (load_full_decode, s)
            ms = time_interleaved(paths, ways, args.rounds)
            base = ms["before: 256 px, full decode"]
            print(f"{name}, {args.n} images x {args.rounds} rounds, median ms per image:")
            for k, v in ms.items():
                print(f"  {k:38s} {v:7.3f} ms  (x{base / v:.1f} faster than before)")
            s = default_load_size(crops[-1])
            cache = Path(tmp) / "cache"
            ds = load_dataset("imagefolder", folder, "train", cache, load_size=s, cache_mb=1024)
            again = load_dataset("imagefolder", folder, "train", cache, load_size=s, cache_mb=1024)
            idx = torch.arange(len(again))
            t = time.perf_counter()
            for _ in range(args.rounds):
                again.get_batch(idx)
            per = (time.perf_counter() - t) / (args.rounds * len(idx)) * 1e3
            assert np.array_equal(np.asarray(ds.images), np.asarray(again.images))
            print(f"  cached at {s} px, read back memory-mapped: {per:.4f} ms per image")


if __name__ == "__main__":
    main()
