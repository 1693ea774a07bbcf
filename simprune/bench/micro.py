"""Micro-benchmark: time of a pruned training computation over dense, next to its FLOPs ratio.

Three computations, each against its dense counterpart with the same inputs:

- ``student``: forward + backward of one branch, ``forward_reduced`` with a one-branch reducer
  (default ``evit_nofuse``: CLS-attention top-K without fusion) over ``batch`` sequences.
- ``pair``: the lock-step ``dual_forward`` with a pair reducer (``--pair-reducer``, default
  SimPrune), student forward + backward and the teacher's forward under ``no_grad`` on
  ``batch / 2`` images × 2 global views, against the dense student forward + backward and dense
  teacher forward. (``simprune``, its name before other pair reducers, still selects it.)
- ``infer`` (not run by default): inference, the backbone in eval mode under ``no_grad`` with the
  one-branch reducer, over ``batch`` images. Reported as well: the throughput ratio (dense time
  over pruned time, images per second pruned over dense) and the MACs per image of each, counted
  as ``FlopCounterMode``'s FLOPs / 2 (one multiply-add = 2 FLOPs; matrix products only, as the
  paper's MACs counters). E.g. the distilled student of ``configs/cifar10_distill_evit.toml``:
  ``simprune bench micro --variant infer --reducer evit --keep-rate 0.5 --case vit_micro_patch4_32:64``.

Dense and pruned alternate within one process (order flipped every repeat), after warm-up; the
figure is the median pruned time over the median dense time (METHOD.md, "Cost figures"), printed
next to the FLOPs ratio ``torch.utils.flop_counter`` counts on one real step of each (no heads;
``--no-count`` skips it).

Example: ``python -m simprune.bench.micro`` (about two minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from simprune.bench.flops_count import count_flops
from simprune.drive import dual_forward, forward_reduced
from simprune.models import create_model
from simprune.models.vit import VisionTransformer
from simprune.reducers import REDUCERS, create_reducer

DEFAULT_CASES = ("vit_micro_patch4_32:64", "deit_small_patch16_224:8")
VARIANTS = ("student", "pair", "infer")
DEFAULT_VARIANTS = ("student", "pair")
#: the pair variant's old name (it ran SimPrune only); still accepted
OLD_NAMES = {"simprune": "pair"}
DEFAULT_PAIR_REDUCER = "simprune"


@dataclass
class MicroResult:
    """One benchmarked computation: medians in seconds and the ratios to dense."""

    model: str
    variant: str
    reducer: str
    keep_rate: float
    rows: int
    threads: int
    repeats: int
    dense_s: float
    pruned_s: float
    time_ratio: float
    paired_ratio: float
    cpu_time_ratio: float
    dense_faults: float
    pruned_faults: float
    flops_ratio: float | None
    gap: float | None
    #: ``infer``: dense time over pruned time, and counted MACs (FLOPs / 2) per image
    throughput_ratio: float | None = None
    macs_per_image: float | None = None
    dense_macs_per_image: float | None = None


def keep_heap() -> bool:
    """Stop glibc from returning freed activation memory to the OS between steps.

    By default glibc serves large blocks by ``mmap`` and trims the heap on ``free``, so every step
    page-faults its activations in afresh. The dense step's larger tensors cross those thresholds
    where the pruned step's do not (measured on ``vit_micro_patch4_32``, 64 rows: ~26k minor faults
    per dense step, ~0-2.6k per pruned one), which makes pruning look cheaper than its compute.
    A GPU's caching allocator has no such cost. Returns whether ``mallopt`` was applied.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def _loss(cls: Tensor) -> Tensor:
    return cls.float().pow(2).mean()


def make_steps(model: VisionTransformer, variant: str, reducer_name: str, keep_rate: float,
               rows: int, seed: int = 0) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(dense_step, pruned_step)`` closures doing forward + backward on fixed random inputs;
    ``reducer_name`` is a one-branch reducer (``student``, ``infer``) or a pair reducer (``pair``)."""
    variant = OLD_NAMES.get(variant, variant)
    gen = torch.Generator().manual_seed(seed)
    size = model.cfg.img_size
    if variant == "student":
        images = torch.randn(rows, 3, size, size, generator=gen)
        reducer = create_reducer(reducer_name)

        def student(red: object) -> Callable[[], None]:
            def step() -> None:
                model.zero_grad(set_to_none=True)
                _loss(forward_reduced(model, images, red, keep_rate).cls).backward()
            return step

        return student(None), student(reducer)
    if variant == "infer":
        model.eval()
        images = torch.randn(rows, 3, size, size, generator=gen)
        reducer = create_reducer(reducer_name)

        def infer(red: object) -> Callable[[], None]:
            def step() -> None:
                with torch.no_grad():
                    forward_reduced(model, images, red, keep_rate)
            return step

        return infer(None), infer(reducer)
    if variant != "pair":
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if rows % 2:
        raise ValueError(f"the pair variant needs an even number of rows (2 views), got {rows}")
    if not REDUCERS.get(reducer_name).is_pair:
        pairs = [n for n in REDUCERS.names() if REDUCERS.get(n).is_pair]
        raise ValueError(f"--pair-reducer {reducer_name!r} is a one-branch reducer; pair reducers: "
                         f"{', '.join(pairs)}")
    teacher = copy.deepcopy(model).requires_grad_(False)
    s_views = torch.randn(rows, 3, size, size, generator=gen)
    t_views = torch.randn(rows, 3, size, size, generator=gen)
    reducer = create_reducer(reducer_name)

    def dual(red: object) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            out = dual_forward(model, teacher, s_views, t_views, red, keep_rate, position=0.5)
            _loss(out.student.cls).backward()
        return step

    return dual(None), dual(reducer)


@dataclass
class Timing:
    """Medians of the dense and the pruned step: wall-clock and process-CPU seconds, and the
    median over repeats of the paired ratio (pruned over the dense run next to it)."""

    dense_s: float
    pruned_s: float
    dense_cpu_s: float
    pruned_cpu_s: float
    paired_ratio: float
    dense_faults: float
    pruned_faults: float


def time_pair(dense: Callable[[], None], pruned: Callable[[], None], warmup: int,
              repeats: int) -> Timing:
    """Medians of ``dense`` and ``pruned``, interleaved (order flipped every repeat).

    Process CPU time is recorded next to wall time: on a machine shared with other jobs it is
    the steadier of the two with one thread (with several, it includes OpenMP spin-waiting).
    The paired ratio cancels load that drifts slower than one dense + pruned pair.
    """
    for _ in range(warmup):
        dense()
        pruned()
    wall: dict[int, list[float]] = {0: [], 1: []}
    cpu: dict[int, list[float]] = {0: [], 1: []}
    faults: dict[int, list[float]] = {0: [], 1: []}
    fns = (dense, pruned)
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            f0, t0, c0 = _minor_faults(), time.perf_counter(), time.process_time()
            fns[which]()
            wall[which].append(time.perf_counter() - t0)
            cpu[which].append(time.process_time() - c0)
            faults[which].append(_minor_faults() - f0)
    med = statistics.median
    paired = med(p / d for d, p in zip(wall[0], wall[1]))
    return Timing(med(wall[0]), med(wall[1]), med(cpu[0]), med(cpu[1]), paired,
                  med(faults[0]), med(faults[1]))


def _minor_faults() -> float:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def bench_case(model_name: str, rows: int, variant: str, reducer_name: str, keep_rate: float,
               warmup: int, repeats: int, count: bool = True) -> MicroResult:
    torch.manual_seed(0)
    model = create_model(model_name).train()
    dense, pruned = make_steps(model, variant, reducer_name, keep_rate, rows)
    counted = (count_flops(pruned), count_flops(dense)) if count else None
    flops = counted[0] / counted[1] if counted else None
    t = time_pair(dense, pruned, warmup, repeats)
    ratio = t.pruned_s / t.dense_s
    infer = variant == "infer"
    return MicroResult(model_name, OLD_NAMES.get(variant, variant), reducer_name,
                       keep_rate, rows, torch.get_num_threads(), repeats, t.dense_s, t.pruned_s,
                       ratio, t.paired_ratio, t.pruned_cpu_s / t.dense_cpu_s, t.dense_faults,
                       t.pruned_faults, flops, None if flops is None else ratio - flops,
                       throughput_ratio=t.dense_s / t.pruned_s if infer else None,
                       macs_per_image=counted[0] / 2 / rows if infer and counted else None,
                       dense_macs_per_image=counted[1] / 2 / rows if infer and counted else None)


def profile_case(model_name: str, rows: int, variant: str, reducer_name: str, keep_rate: float,
                 top: int = 15) -> str:
    """Self CPU time per op of one dense and one pruned step (after a warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    model = create_model(model_name).train()
    out = []
    for label, step in zip(("dense", "pruned"),
                           make_steps(model, variant, reducer_name, keep_rate, rows)):
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        out.append(f"--- {model_name} {variant} {label}\n"
                   + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return "\n".join(out)


def parse_case(text: str) -> tuple[str, int]:
    """``MODEL:ROWS`` -> ``(model, rows)``."""
    name, _, rows = text.partition(":")
    if not rows.isdigit() or int(rows) < 1:
        raise argparse.ArgumentTypeError(f"expected MODEL:ROWS (e.g. vit_micro_patch4_32:64), got {text!r}")
    return name, int(rows)


def add_micro_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``simprune bench micro``."""
    parser.add_argument("--case", type=parse_case, nargs="+", default=None, metavar="MODEL:ROWS",
                        help=f"models and rows per branch (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--variant", choices=(*VARIANTS, *OLD_NAMES), nargs="+",
                        default=list(DEFAULT_VARIANTS),
                        help="computations to time: student (one branch), pair (two branches in "
                             "lock-step), infer (inference throughput and MACs per image); default "
                             "student pair")
    parser.add_argument("--reducer", default="evit_nofuse",
                        help="one-branch reducer of 'student' and 'infer' (default evit_nofuse)")
    parser.add_argument("--pair-reducer", default=DEFAULT_PAIR_REDUCER,
                        help=f"pair reducer of 'pair' (default {DEFAULT_PAIR_REDUCER})")
    parser.add_argument("--keep-rate", type=float, default=0.8, help="keep rate per point (default 0.8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave torch's default)")
    parser.add_argument("--trim-heap", action="store_true",
                        help="leave glibc's default heap trimming on (by default freed memory stays in "
                             "the process, so that the dense step does not page-fault its larger "
                             "activations in afresh every step and look slower than its compute)")
    parser.add_argument("--no-count", action="store_true", help="skip the FlopCounterMode FLOPs ratio")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_micro(args: argparse.Namespace) -> int:
    """``simprune bench micro``: time ratios next to FLOPs ratios. Bad names -> exit code 2."""
    cases = args.case or [parse_case(c) for c in DEFAULT_CASES]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    heap_kept = False if args.trim_heap else keep_heap()
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) and not args.json:
        print(f"warning: 1-minute load average {load:.1f} on {os.cpu_count()} cores; other jobs "
              "will distort wall-clock ratios", file=sys.stderr)
    results: list[MicroResult] = []
    try:
        for model_name, rows in cases:
            for variant in args.variant:
                pair = OLD_NAMES.get(variant, variant) == "pair"
                reducer = args.pair_reducer if pair else args.reducer
                res = bench_case(model_name, rows, variant, reducer, args.keep_rate,
                                 args.warmup, args.repeats, count=not args.no_count)
                results.append(res)
                if not args.json:
                    print(format_result(res), flush=True)
                if args.profile:
                    print(profile_case(model_name, rows, variant, reducer, args.keep_rate),
                          file=sys.stderr if args.json else sys.stdout)
    except (KeyError, ValueError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "heap_kept": heap_kept,
                          "load_before": load, "load_after": os.getloadavg()[0],
                          "results": [asdict(r) for r in results]}))
    return 0


def format_result(r: MicroResult) -> str:
    flops = "-" if r.flops_ratio is None else f"{r.flops_ratio:.3f}"
    gap = "-" if r.gap is None else f"{r.gap:+.3f}"
    return (f"{r.model} {r.variant} ({r.reducer}) keep {r.keep_rate} rows {r.rows} "
            f"threads {r.threads}: "
            f"dense {1e3 * r.dense_s:8.1f} ms, pruned {1e3 * r.pruned_s:8.1f} ms, time ratio "
            f"{r.time_ratio:.3f} (paired {r.paired_ratio:.3f}, cpu {r.cpu_time_ratio:.3f}), "
            f"FLOPs ratio {flops} (counted), "
            f"gap {gap}; page faults/step {r.dense_faults:.0f} dense, "
            f"{r.pruned_faults:.0f} pruned"
            + ("" if r.throughput_ratio is None else f"; throughput ratio {r.throughput_ratio:.3f}")
            + ("" if r.macs_per_image is None else
               f"; MACs/image {r.macs_per_image / 1e6:.2f} M pruned, {r.dense_macs_per_image / 1e6:.2f} M "
               "dense (MACs = counted FLOPs / 2)"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simprune bench micro", description=__doc__.split("\n")[0])
    add_micro_args(parser)
    return run_micro(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
