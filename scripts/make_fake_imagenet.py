"""Write an ImageNet-like image folder of synthetic JPEGs, for loader benchmarks and tests.

``root/train/<class>/<class>_<i>.JPEG`` and ``root/val/<class>/...``: 500x375 photos (ImageNet's
most common size), JPEG quality 90, each a smooth colour field with shapes and grain, so a file is
about as large (and as slow to decode) as an ImageNet photo of that size (~100 KB). Never commit
the output; write it under /tmp.

    python scripts/make_fake_imagenet.py --out /tmp/fake_imagenet --classes 4 --train 100 --val 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def fake_photo(rng: np.random.Generator, width: int, height: int, label: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    slope = rng.normal(0, 0.4, size=(3, 2))
    img = np.stack([base[c] + slope[c, 0] * xx + slope[c, 1] * yy for c in range(3)], axis=-1)
    img += rng.normal(0, 18, size=img.shape)  # grain: real photos' entropy
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(4 + label):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x1, y1 = x0 + rng.integers(20, 200), y0 + rng.integers(20, 150)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if label % 2 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return pil


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to create (e.g. /tmp/fake_imagenet)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--train", type=int, default=100, help="training images per class")
    p.add_argument("--val", type=int, default=20, help="validation images per class")
    p.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    root = Path(args.out)
    n = 0
    for split, count in (("train", args.train), ("val", args.val)):
        for c in range(args.classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = fake_photo(rng, args.size[0], args.size[1], c)
                img.save(folder / f"n{c:08d}_{i}.JPEG", quality=args.quality)
                n += 1
    print(f"wrote {n} images to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
