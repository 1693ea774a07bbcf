"""Tar shards of an image folder (webdataset-style), and the sampler that gives each process its own.

``simprune data shard --src FOLDER --out DIR`` (:func:`write_shards`) turns ``FOLDER/<split>/<class>/
<image>`` into ``DIR/<split>-000000.tar``, ``DIR/<split>-000001.tar``, ... Each sample is two tar
members with the same key, ``<class>/<stem>.<ext>`` (the image file's bytes, not re-encoded) and
``<class>/<stem>.cls`` (its label as text), so the shards read with webdataset and ``tar`` as well.
The samples are shuffled once (fixed seed) before they are written, so a shard holds a mix of
classes. ``DIR/<split>.index.npz`` keeps each sample's shard, byte offset, size and label, and
``DIR/shards.json`` (written last, so a stopped write leaves no usable folder) the classes and the
shards of every split. Classes are the training split's (as :mod:`simprune.data.folder`).

A shard folder is read by the ``imagefolder`` data set when the data folder holds ``shards.json``
(:class:`ShardedDataset`): the same recipes train from a folder or from its shards.

Sampling (:class:`ShardSampler`): epoch ``e`` permutes the shards (generator ``seed * 100003 +
e``); process ``r`` of ``W`` takes the shards ``perm[r::W]``, reads them in that order, and its
samples are shuffled within windows of :data:`WINDOW` consecutive shards, so it reads only its own
files, a few at a time. The processes' shards are disjoint and together every shard of the split,
once per epoch. An epoch has as many steps as the process with the fewest samples can fill (the
samples of the smallest ``floor(n_shards / W)`` shards, divided by the per-process batch); the rest
of an epoch is dropped, as the last partial batch of a map-style epoch is. Batch ``(e, s)`` is a
pure function of ``(seed, e, s, r, W)``, so a resumed run continues where it stopped;
:meth:`ShardSampler.position` is what the checkpoint keeps of it (epoch, step, this process's
shards, next sample), and a resume with other shards stops with a message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from simprune.atomic import atomic_write, atomic_write_text

from .base import DataNotFoundError
from .crops import CropSpec, cut_crops
from .folder import IMAGE_EXTENSIONS, TRAIN_SPLIT, class_folders, corrupt_image, resize_crop

__all__ = ["SHARDS_JSON", "WINDOW", "ShardedDataset", "ShardSampler", "is_shard_folder", "shard_sampler",
           "load_shards", "shard_ids", "write_shards"]

SHARDS_JSON = "shards.json"
FORMAT = "simprune-shards"
#: consecutive shards of one process whose samples are shuffled together
WINDOW = 4
_SHUFFLE_SEED = 20240611


def is_shard_folder(root: str | Path) -> bool:
    return (Path(root) / SHARDS_JSON).is_file()


# ----------------------------------------------------------------------------- writing


def write_shards(src: str | Path, out: str | Path, shard_size: int = 1000,
                 splits: list[str] | None = None, log: Any = None) -> dict[str, Any]:
    """Shard every split of the image folder ``src`` into ``out`` (see the module); returns the
    ``shards.json`` contents.

    Raises:
        DataNotFoundError: ``src`` holds no split folder with class folders.
        ValueError: a bad ``shard_size``, or ``out`` already holds shards.
    """
    src, out = Path(src), Path(out)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be a whole number of images >= 1, got {shard_size!r}")
    if not src.is_dir():
        raise DataNotFoundError(f"image folder {str(src)!r} does not exist")
    if is_shard_folder(src):
        raise ValueError(f"{str(src)!r} is already a shard folder (it holds {SHARDS_JSON})")
    if out.exists() and (is_shard_folder(out) or any(out.glob("*.tar"))):
        raise ValueError(f"{str(out)!r} already holds shards; pass an empty or new --out folder")
    found = sorted(d.name for d in src.iterdir() if d.is_dir())
    names = splits or found
    missing = [s for s in names if s not in found]
    if missing:
        raise DataNotFoundError(f"no split folder(s) {', '.join(missing)} in {str(src)!r}; valid: "
                                f"{', '.join(found) or 'none'}")
    ref = TRAIN_SPLIT if TRAIN_SPLIT in found else names[0]
    classes = [c for c, files in class_folders(src / ref).items() if files]
    if not classes:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of "
                                f"{str(src / ref)!r}")
    index = {c: i for i, c in enumerate(classes)}
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT, "version": 1, "source": str(src), "classes": classes,
                            "shard_size": shard_size, "splits": {}}
    for split in names:
        items = []
        for c, files in class_folders(src / split).items():
            if files and c not in index:
                raise ValueError(f"class folder {c!r} of {str(src / split)!r} is not a class of the "
                                 f"training split {str(src / ref)!r}; valid: {', '.join(classes[:8])}")
            items += [(f, index[c]) for f in files]
        if not items:
            continue
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(_SHUFFLE_SEED))
        items = [items[i] for i in order.tolist()]
        cols: dict[str, list[int]] = {"shard": [], "offset": [], "size": [], "label": []}
        shard_names = []
        for k, start in enumerate(range(0, len(items), shard_size)):
            name = f"{split}-{k:06d}.tar"
            part = items[start:start + shard_size]
            offsets = _write_tar(out / name, part)
            shard_names.append(name)
            for (f, label), off in zip(part, offsets):
                cols["shard"].append(k)
                cols["offset"].append(off)
                cols["size"].append(f.stat().st_size)
                cols["label"].append(label)
            if log is not None:
                log(f"wrote {out / name} ({len(part)} images)")
        arrays = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
        atomic_write(out / f"{split}.index.npz", lambda f, a=arrays: np.savez(f, **a))
        meta["splits"][split] = {"shards": shard_names, "n": len(items),
                                 "counts": [min(shard_size, len(items) - s)
                                            for s in range(0, len(items), shard_size)]}
    atomic_write_text(out / SHARDS_JSON, json.dumps(meta, indent=1))
    return meta


def _write_tar(path: Path, items: list[tuple[Path, int]]) -> list[int]:
    """A tar of ``items`` (image file, label); returns each image's data offset in the file."""
    offsets: list[int] = []

    def write(f: Any) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for file, label in items:
                key = f"{file.parent.name}/{file.stem}"
                data = file.read_bytes()
                members = ((key + file.suffix.lower(), data), (key + ".cls", str(label).encode()))
                for member, payload in members:
                    info = tarfile.TarInfo(member)
                    info.size, info.mode, info.mtime = len(payload), 0o644, 0
                    header = info.tobuf(tar.format, tar.encoding, tar.errors)
                    if not member.endswith(".cls"):
                        offsets.append(tar.offset + len(header))
                    tar.addfile(info, io.BytesIO(payload))

    atomic_write(path, write)
    return offsets


# ----------------------------------------------------------------------------- reading


class ShardedDataset(Dataset):
    """One split of a shard folder; ``__getitem__ -> (uint8 [3, S, S], label)`` (decoded at
    ``load_size`` as :class:`~simprune.data.folder.ImageFolderDataset` does).

    Attributes:
        classes: class names; labels: int64 ``[N]``; shard: int64 ``[N]``, each sample's shard;
        shards: the shard files; load_size: side ``S``; fingerprint: a hash of the split's shards.
    """

    streamed = True
    images = None

    def __init__(self, root: str | Path, split: str = "train", load_size: int = 256) -> None:
        root = Path(root)
        meta = json.loads((root / SHARDS_JSON).read_text())
        if meta.get("format") != FORMAT:
            raise DataNotFoundError(f"{str(root / SHARDS_JSON)!r} is not a simprune shard index")
        if split not in meta["splits"]:
            raise DataNotFoundError(f"no split {split!r} in the shard folder {str(root)!r}; valid: "
                                    f"{', '.join(meta['splits']) or 'none'}")
        info = meta["splits"][split]
        with np.load(root / f"{split}.index.npz") as z:
            cols = {k: torch.from_numpy(z[k].astype(np.int64)) for k in ("shard", "offset", "size", "label")}
        self.root, self.split, self.load_size = root, split, load_size
        self.classes = list(meta["classes"])
        self.labels, self.shard = cols["label"], cols["shard"]
        self._offset, self._size = cols["offset"].numpy(), cols["size"].numpy()
        self.shards = [root / name for name in info["shards"]]
        self.fingerprint = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_pid": -1}

    def read(self, index: int) -> bytes:
        """The encoded image of sample ``index`` (one ``pread`` from its shard)."""
        if self._pid != os.getpid():  # a forked worker opens its own files
            self._fds, self._pid = {}, os.getpid()
        k = int(self.shard[index])
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self.shards[k], os.O_RDONLY)
        return os.pread(fd, int(self._size[index]), int(self._offset[index]))

    def member_name(self, index: int) -> str:
        """``<shard>.tar:<member>`` of sample ``index``, for messages."""
        shard = self.shards[int(self.shard[index])]
        try:
            with open(shard, "rb") as f:
                f.seek(int(self._offset[index]) - tarfile.BLOCKSIZE)
                name = tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape").name
        except (OSError, tarfile.TarError):
            name = f"sample {index}"
        return f"{shard}:{name}"

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        try:
            with Image.open(io.BytesIO(self.read(index))) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (self.load_size, self.load_size))
                return resize_crop(img, self.load_size), int(self.labels[index])
        except Exception as e:
            raise corrupt_image(self.member_name(index), e) from e

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        rows = torch.as_tensor(idx, dtype=torch.int64).tolist()
        items = [self[i] for i in rows]
        s = self.load_size
        images = (torch.stack([im for im, _ in items]) if items
                  else torch.zeros(0, 3, s, s, dtype=torch.uint8))
        return images, self.labels[rows] if rows else torch.zeros(0, dtype=torch.int64)

    def load_crops(self, index: int, spec: CropSpec, gen: torch.Generator) -> tuple[list[Tensor], Tensor]:
        try:
            return cut_crops(self.read(index), spec, gen)
        except Exception as e:
            raise corrupt_image(self.member_name(index), e) from e

    def __repr__(self) -> str:
        return f"ShardedDataset({self.split}: {len(self)} images in {len(self.shards)} shards of {self.root})"


def load_shards(root: str | Path, split: str = "train", load_size: int = 256) -> ShardedDataset:
    return ShardedDataset(root, split, load_size)


def shard_ids(dataset: Any) -> Tensor | None:
    """int64 ``[N]``: the shard of each item of ``dataset`` (a :class:`ShardedDataset`, or a view
    of one); ``None`` for other data sets."""
    if isinstance(dataset, ShardedDataset):
        return dataset.shard
    rows, base = getattr(dataset, "rows", None), getattr(dataset, "dataset", None)
    if rows is not None and base is not None:
        inner = shard_ids(base)
        return None if inner is None else inner.index_select(0, rows)
    return None


class ShardSampler:
    """Per-process batches of a sharded split (see the module); the interface of
    :class:`~simprune.data.sampler.ResumableSampler`.

    Args:
        indices: int64 ``[M]``: the items of ``dataset`` a run trains on.
        shards: int64 ``[len(dataset)]``: each item's shard (:func:`shard_ids`).
    """

    def __init__(self, indices: Tensor, shards: Tensor, global_batch: int, seed: int, rank: int = 0,
                 world: int = 1, fingerprint: str = "", window: int = WINDOW) -> None:
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} must be divisible by the number of "
                             f"processes {world}")
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.global_batch, self.seed, self.rank, self.world = global_batch, seed, rank, world
        self.local = global_batch // world
        self.window, self.fingerprint = window, fingerprint
        own = shards.index_select(0, self.indices)
        self.n_shards = int(shards.max()) + 1 if len(shards) else 0
        order = torch.argsort(own, stable=True)
        self._rows_sorted = self.indices[order]
        counts = torch.bincount(own, minlength=self.n_shards)
        self._starts = torch.cumsum(counts, 0) - counts
        self._counts = counts
        if self.n_shards < world:
            raise ValueError(f"{self.n_shards} shard(s) for {world} processes: every process needs its "
                             "own shards; write smaller shards (simprune data shard --shard-size)")
        per = self.n_shards // world
        fewest = int(torch.sort(counts).values[:per].sum())
        if fewest < self.local:
            raise ValueError(f"a process's {per} shard(s) may hold only {fewest} training images, "
                             f"fewer than one batch of {self.local} per process")
        self._steps = fewest // self.local
        self._cache: tuple[int, Tensor] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def shard_order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(self.n_shards, generator=g)

    def shards_of(self, epoch: int, rank: int | None = None) -> list[int]:
        """The shards process ``rank`` (default this one) reads in ``epoch``, in reading order."""
        r = self.rank if rank is None else rank
        return self.shard_order(epoch)[r::self.world].tolist()

    def rows(self, epoch: int, rank: int | None = None) -> Tensor:
        """Every item process ``rank`` reads in ``epoch``, in order (before the epoch's cut)."""
        r = self.rank if rank is None else rank
        if rank is None and self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        mine = self.shards_of(epoch, r)
        g = torch.Generator().manual_seed((self.seed * 100003 + epoch) * 131 + r)
        parts = []
        for w in range(0, len(mine), self.window):
            block = torch.cat([self._rows_sorted[int(self._starts[k]):int(self._starts[k] + self._counts[k])]
                               for k in mine[w:w + self.window]])
            parts.append(block[torch.randperm(len(block), generator=g)])
        out = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        if rank is None:
            self._cache = (epoch, out)
        return out

    def batch(self, epoch: int, step: int) -> Tensor:
        """This process's items of step ``step`` of ``epoch``."""
        return self.rows(epoch)[step * self.local:(step + 1) * self.local]

    def global_batch_indices(self, epoch: int, step: int) -> Tensor:
        """Every process's items of the step, rank by rank."""
        return torch.cat([self.rows(epoch, r)[step * self.local:(step + 1) * self.local]
                          for r in range(self.world)])

    def position(self, step: int) -> dict[str, Any]:
        """Where global step ``step`` reads: kept in the checkpoint."""
        epoch, it = divmod(step, self._steps)
        return {"kind": "shards", "fingerprint": self.fingerprint, "world": self.world,
                "rank": self.rank, "epoch": epoch, "step_in_epoch": it,
                "shards": self.shards_of(epoch),
                "next_sample": it * self.local}

    def check_position(self, saved: dict[str, Any] | None, step: int) -> None:
        """Raise ``ValueError`` when a checkpoint's position is not where this sampler would be."""
        if not saved or saved.get("kind") != "shards":
            return
        if saved.get("fingerprint") != self.fingerprint or saved.get("world") != self.world:
            raise ValueError("the checkpoint was trained on other shards (or another number of "
                             f"processes: {saved.get('world')} then, {self.world} now); resume with "
                             "the same shard folder and process count, or pass another --out")
        here = self.position(step)
        if (saved.get("epoch"), saved.get("step_in_epoch")) != (here["epoch"], here["step_in_epoch"]):
            raise ValueError(f"the checkpoint's data position (epoch {saved.get('epoch')}, step "
                             f"{saved.get('step_in_epoch')}) does not match step {step}")


def shard_sampler(train_set: Any, indices: Tensor, global_batch: int, seed: int, rank: int = 0,
                  world: int = 1, sample_filter: Any = None) -> ShardSampler | None:
    """A :class:`ShardSampler` when ``train_set`` is (a view of) a shard split, else ``None``."""
    shards = shard_ids(train_set)
    if shards is None:
        return None
    if sample_filter is not None:
        raise ValueError("a sample filter (Tri-Level E-ViT's example level) chooses images from the "
                         "whole split; train it from the image folder, not from tar shards")
    base = train_set
    while not isinstance(base, ShardedDataset):
        base = base.dataset
    return ShardSampler(indices, shards, global_batch, seed, rank, world, base.fingerprint)


# ----------------------------------------------------------------------------- the command


def add_shard_args(parser: Any) -> None:
    """Options of ``simprune data shard``."""
    parser.add_argument("--src", required=True, help="image folder: <split>/<class>/<image>")
    parser.add_argument("--out", required=True, help="folder for the shards (new or empty)")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="images per shard (default 1000: about 110 MB of ImageNet JPEGs)")
    parser.add_argument("--splits", nargs="+", default=None, help="(default: every sub-folder)")


def run_shard(args: Any) -> int:
    """``simprune data shard``: prints one line per split."""
    meta = write_shards(args.src, args.out, args.shard_size, args.splits)
    for split, info in meta["splits"].items():
        print(f"{split}: {info['n']} images in {len(info['shards'])} shards "
              f"({args.out}/{split}-*.tar), {len(meta['classes'])} classes")
    print(f"train from them with: SIMPRUNE_DATA={args.out} simprune train --config RECIPE "
          "(dataset imagefolder)")
    return 0
