"""The training loader of splits that are not cached: worker processes, prefetch, pinned memory.

Two data paths feed the training step (docs/method.md, "Data paths"):

* **cached** (CIFAR, Fashion-MNIST, image folders that fit ``$SIMPRUNE_CACHE_MB``): the split is a
  uint8 array in memory; a batch is one gather, and the batched device augmentation cuts the
  random crops from each ``load_size`` square. Nothing here is used.
* **streamed** (image folders too large for the cache, and tar shards, :mod:`simprune.data.shards`):
  :class:`StepBatches` makes step ``s``'s batch, per sample: decode the file and cut every view
  from the whole image (:mod:`simprune.data.crops`); the device augmentation then applies flip
  and the colour operations only. With ``num_workers > 0`` a :class:`torch.utils.data.DataLoader`
  runs it in that many worker processes, each making whole steps, ``PREFETCH`` steps ahead per
  worker, so decoding overlaps the training step; batches come in step order, in pinned memory
  when the run is on CUDA (the trainer copies them with ``non_blocking=True``). One iterator
  serves every step of a sitting, so the workers live across epochs and evaluations.

Determinism: step ``s``'s batch is a pure function of ``(seed, s, rank, world)``: its rows come
from the run's sampler, and each sample's crop boxes from a generator seeded by ``(seed, s,
position in the global batch)`` (:func:`sample_seed`). So 0 or N workers give the same batches,
a resumed run gets the batches the uninterrupted run got, and every process reads only its own
rows. The loader never touches torch's global generators (its DataLoader has its own), whose
states the checkpoint keeps.

Errors: an exception in a worker comes back as the same exception type with the same one-line
message (e.g. :class:`~simprune.data.base.CorruptImageError` naming the file), not as the
DataLoader's multi-line traceback.

``num_workers``: processes per training process; ``-1`` (the default): :func:`default_workers`.
A sample filter (Tri-Level E-ViT's example level) decides from what training observed, so with
one the batches are made in the training process (no workers).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .crops import Crops, CropSpec, crop_spec

__all__ = ["AUTO_WORKERS", "PREFETCH", "StepBatches", "TrainLoader", "default_workers",
           "is_streamed", "resolve_workers", "sample_seed", "train_loader"]

#: ``num_workers`` value that asks for :func:`default_workers`
AUTO_WORKERS = -1
#: steps each worker prepares ahead
PREFETCH = 2
#: the default never starts more workers than this per training process
MAX_DEFAULT_WORKERS = 12


def cores_available() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers(local_processes: int | None = None) -> int:
    """Workers per training process: the cores left to each of the machine's training
    processes (``$LOCAL_WORLD_SIZE``, torchrun's count) after one for the process itself, at most
    :data:`MAX_DEFAULT_WORKERS`; at least 1 (a 1-core machine still overlaps I/O with the step)."""
    n = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cores_available() // max(1, n) - 1))


def resolve_workers(num_workers: int) -> int:
    """``num_workers`` as given (>= 0), or :func:`default_workers` for :data:`AUTO_WORKERS`."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < AUTO_WORKERS:
        raise ValueError(f"num_workers must be a whole number >= 0 (worker processes; 0: load in the "
                         f"training process) or -1 (one per free core), got {num_workers!r}")
    return default_workers() if num_workers == AUTO_WORKERS else num_workers


def _base(dataset: Any) -> tuple[Any, Tensor | None]:
    """The data set under views (:class:`~simprune.data.split.IndexedView`), and the map from the
    view's rows to its rows (``None``: the same)."""
    rows: Tensor | None = None
    while getattr(dataset, "rows", None) is not None and getattr(dataset, "dataset", None) is not None:
        rows = dataset.rows if rows is None else dataset.rows.index_select(0, rows)
        dataset = dataset.dataset
    return dataset, rows


def is_streamed(dataset: Any) -> bool:
    """Whether training reads ``dataset`` through this loader (not cached: a large image folder,
    tar shards)."""
    return bool(getattr(_base(dataset)[0], "streamed", False))


def sample_seed(seed: int, step: int, position: int) -> int:
    """Seed of the crop generator of the sample at ``position`` of global batch ``step``."""
    digest = hashlib.blake2b(f"{seed}:{step}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class _Failure:
    """An exception raised in a worker, carried back as its type and message."""

    kind: type
    message: str

    def reraise(self) -> None:
        try:
            err = self.kind(self.message)
        except Exception:  # an exception type that does not take one message
            err = RuntimeError(self.message)
        raise err


class StepBatches(Dataset):
    """Item ``s``: ``(images, labels, idx)`` of this process's part of global batch ``s``.

    ``images`` is a :class:`~simprune.data.crops.Crops` (every view cut from the whole image)
    when ``spec`` is given, else uint8 ``[B, 3, S, S]`` ``load_size`` squares; ``labels`` int64
    ``[B]``; ``idx`` int64 ``[B]``, the rows of ``dataset``.

    Args:
        dataset: the training set (``labels``, ``__getitem__``; ``load_crops`` for crops).
        sampler: the run's sampler (``batch(epoch, step)``, ``global_batch_indices``).
        whole: every process loads the whole global batch (deterministic multi-process runs).
    """

    def __init__(self, dataset: Any, sampler: Any, steps_per_epoch: int, seed: int, rank: int = 0,
                 world: int = 1, whole: bool = False, spec: CropSpec | None = None) -> None:
        self.dataset, self.sampler, self.spec = dataset, sampler, spec
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.rank, self.world, self.whole = rank, world, whole
        self.base, self.rows = _base(dataset)

    def __len__(self) -> int:
        return 1 << 62  # indexed by step; the DataLoader's sampler says which

    def indices(self, step: int) -> Tensor:
        epoch, it = divmod(step, self.steps_per_epoch)
        return self.sampler.global_batch_indices(epoch, it) if self.whole else self.sampler.batch(epoch, it)

    def _labels(self, idx: Tensor) -> Tensor:
        labels = getattr(self.dataset, "labels", None)
        if isinstance(labels, Tensor):
            return labels.index_select(0, idx)
        return torch.tensor([int(self.dataset[int(i)][1]) for i in idx], dtype=torch.int64)

    def make(self, step: int) -> tuple[Tensor | Crops, Tensor, Tensor]:
        """The batch of ``step`` (errors propagate)."""
        idx = self.indices(step)
        rows = idx if self.rows is None else self.rows.index_select(0, idx)
        if self.spec is None:
            images: Tensor | Crops = torch.stack([self.base[int(r)][0] for r in rows])
        else:
            first = 0 if self.whole else self.rank * len(idx)
            images = Crops.stack([
                self.base.load_crops(int(r), self.spec,
                                     torch.Generator().manual_seed(sample_seed(self.seed, step, first + j)))
                for j, r in enumerate(rows.tolist())])
        return images, self._labels(idx), idx

    def __getitem__(self, step: int) -> Any:
        if get_worker_info() is None:
            return self.make(step)
        try:
            return self.make(step)
        except Exception as e:  # one line in the training process, not a worker traceback
            return _Failure(type(e), str(e))


class TrainLoader:
    """Batches by step from :class:`StepBatches`, made in ``num_workers`` processes (0: here).

    ``get(step)`` returns step ``step``'s batch; consecutive steps come from one DataLoader
    iterator (prefetching ahead), any other step restarts it there.
    """

    def __init__(self, source: StepBatches, num_workers: int, stop: int, pin_memory: bool = False) -> None:
        self.source, self.num_workers, self.stop = source, num_workers, stop
        self.pin_memory = pin_memory
        self._it: Any = None
        self._next = -1

    def _start(self, step: int) -> None:
        self.close()
        loader = DataLoader(self.source, batch_size=None, sampler=range(step, max(step + 1, self.stop)),
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            prefetch_factor=PREFETCH, persistent_workers=False,
                            # its own generator: the global one, kept in checkpoints, is not drawn
                            generator=torch.Generator().manual_seed(0))
        self._it, self._next = iter(loader), step

    def get(self, step: int) -> tuple[Tensor | Crops, Tensor, Tensor]:
        if self.num_workers == 0:
            return self.source.make(step)
        if self._it is None or step != self._next:
            self._start(step)
        item = next(self._it)
        self._next += 1
        if isinstance(item, _Failure):
            self.close()
            item.reraise()
        return item

    def close(self) -> None:
        """Stop the workers (they also stop when the training process ends)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def train_loader(train_set: Any, sampler: Any, augment: Any, *, steps_per_epoch: int, seed: int,
                 num_workers: int, stop: int, device: torch.device, rank: int = 0, world: int = 1,
                 whole: bool = False) -> TrainLoader | None:
    """The loader of a streamed training set (``None`` for a cached one: the trainer gathers
    from memory). Views are cut from whole images when ``augment`` is a crop pipeline."""
    if not is_streamed(train_set):
        return None
    workers = resolve_workers(num_workers)
    if getattr(sampler, "filter", None) is not None:
        workers = 0  # the filter's choice depends on the steps before: made here, in step order
    source = StepBatches(train_set, sampler, steps_per_epoch, seed, rank, world, whole, crop_spec(augment))
    return TrainLoader(source, workers, stop, pin_memory=device.type == "cuda")
