"""One real training step per variant (dense, or a method at a keep rate), and what it costs.

A :class:`Variant` is a framework built by :func:`simprune.run.build_framework` from its
:class:`~simprune.config.TrainConfig`, its augmentation (:func:`build_augment`) and its own
AdamW over the student; every variant starts from the dense variant's weights. Its step does what
:meth:`simprune.train.loop.Trainer.train_step` does, in four timed phases:

- ``augment``: the synthetic ``uint8`` batch through the device augmentation (seeded per round, so
  every variant of a round sees the same views);
- ``forward``: the framework forward (student, teacher, heads, loss) under autocast;
- ``backward``: ``zero_grad`` and the backward;
- ``update``: gradient clipping, the framework's ``before_optimizer_step``, the AdamW step and
  its ``after_step`` (e.g. the teacher EMA), as ``Trainer.train_step``.

The step is taken at training progress ``progress`` (lr and weight decay at their base values; the
keep-rate warm-up, window and framework schedules at ``progress``; variants are built without a
warm-up, so every variant runs at its target keep rate). Measurements (:func:`count_step_flops`,
:func:`saved_bytes`, :func:`cuda_peak`, :func:`time_rounds`) each run real steps, so the weights
move as in training.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from simprune.bench.flops_count import count_flops
from simprune.config import FRAMEWORKS, TrainConfig, make_config
from simprune.data.augment import Views
from simprune.frameworks import DENSE, Batch, Framework, Progress
from simprune.run import (
    PRECISIONS,
    build_augment,
    build_framework,
    build_optimizer,
    check_config,
    data_info,
    set_hparams,
)

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

PHASES = ("augment", "forward", "backward", "update")
#: steps of the schedule the benchmark's ``Progress`` counts in
SCHEDULE_STEPS = 1000


@dataclass
class Variant:
    """A framework, its optimiser and augmentation, and the step that trains it."""

    cfg: TrainConfig
    framework: Framework
    augment: nn.Module
    opt: torch.optim.Optimizer
    images: Tensor
    labels: Tensor
    progress: float = 0.5
    times: dict[str, list[float]] = field(
        default_factory=lambda: {p: [] for p in (*PHASES, "cpu", "faults")})
    #: how tables name it (the framework's ``cost_label``) and the reference group it belongs to
    name: str = ""
    group: str = ""

    @property
    def method(self) -> str:
        """The reducer, with its options as ``--methods`` takes them (``attn_topk:attn_keep=0.3``)."""
        rc = self.cfg.reducer
        if rc.method == DENSE or not rc.options:
            return rc.method
        return rc.method + ":" + ",".join(f"{k}={v}" for k, v in sorted(rc.options.items()))

    @property
    def keep_rate(self) -> float:
        return 1.0 if self.method == DENSE else self.cfg.reducer.keep_rate

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return DENSE if self.method == DENSE else f"{self.method}@{self.keep_rate:g}"

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def step_progress(self) -> Progress:
        return Progress(int(round(self.progress * SCHEDULE_STEPS)), SCHEDULE_STEPS, SCHEDULE_STEPS)

    def batch(self, round_: int) -> Batch:
        """The batch of round ``round_``: its views, labels in range and dataset rows."""
        index = torch.arange(self.images.shape[0], device=self.device)
        return Batch(self.views(round_), self.labels, index)

    def views(self, round_: int) -> Views:
        """The augmented views of round ``round_`` (the same for every variant)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.cfg.seed * 1_000_003 + round_) * 131)
            return self.augment(self.images)

    def forward(self, batch: Batch) -> Tensor:
        """The framework forward under the run's autocast; returns the loss."""
        cfg = self.cfg
        set_hparams(self.opt, cfg.lr, cfg.weight_decay)
        self.framework.trainable().train()
        dtype = PRECISIONS[cfg.precision]
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return self.framework(batch, self.step_progress).loss

    def backward(self, loss: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()

    def update(self) -> None:
        """Clip, the framework's hooks around the AdamW step, as ``Trainer.train_step``."""
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.framework.trainable().parameters(), self.cfg.clip_grad)
        progress = self.step_progress
        self.framework.before_optimizer_step(progress)
        self.opt.step()
        self.framework.after_step(progress)

    def step(self, round_: int, record: bool = False) -> None:
        """One training step; with ``record`` the wall time of each phase and the process CPU
        time of the whole step are appended to :attr:`times`."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else _no_sync
        sync()
        f0, c0 = _minor_faults(), time.process_time()
        t = [time.perf_counter()]
        batch = self.batch(round_)
        sync()
        t.append(time.perf_counter())
        loss = self.forward(batch)
        sync()
        t.append(time.perf_counter())
        self.backward(loss)
        sync()
        t.append(time.perf_counter())
        self.update()
        sync()
        t.append(time.perf_counter())
        if record:
            for name, a, b in zip(PHASES, t, t[1:]):
                self.times[name].append(b - a)
            self.times["cpu"].append(time.process_time() - c0)
            self.times["faults"].append(float(_minor_faults() - f0))

    def step_times(self) -> list[float]:
        """Recorded wall time of each whole step (sum of its phases)."""
        return [sum(parts) for parts in zip(*(self.times[p] for p in PHASES))]


def _no_sync() -> None:
    pass


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing): first touches
    of freshly mapped memory, a cost of large activations on CPU that FLOPs do not see."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def parse_method(spec: str) -> tuple[str, dict]:
    """``"attn_topk:attn_keep=0.3,attn_form=sparse"`` -> ``("attn_topk", {"attn_keep": 0.3, ...})``:
    a reducer name, optionally with reducer options (values are Python literals where they parse)."""
    import ast

    name, _, rest = spec.partition(":")
    options: dict = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"method {spec!r}: options are key=value pairs separated by commas, "
                             "e.g. attn_topk:attn_keep=0.3,attn_form=sparse")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return name.strip(), options


def with_method(cfg: TrainConfig, method: str, keep_rate: float | None = None) -> TrainConfig:
    """``cfg`` with another reduction method at ``keep_rate`` and no keep-rate warm-up. ``method``
    may carry reducer options: ``attn_topk:attn_keep=0.3`` (:func:`parse_method`)."""
    name, options = parse_method(method)
    over: dict = {"reducer.method": name}
    if name != DENSE:  # the reduction points survive a dense config's dataclass, not its dict
        over.update({"reducer.keep_rate": float(keep_rate if keep_rate is not None else 1.0),
                     "reducer.keep_warmup": [0.0, 0.0],
                     "reducer.reduce_at": list(cfg.reducer.reduce_at)})
        if options:
            over["reducer.options"] = options
    elif options:
        raise ValueError(f"method {method!r}: dense takes no options")
    return make_config(cfg.to_dict(), over)


def synthetic_images(cfg: TrainConfig, in_chans: int, device: torch.device, size: int | None = None,
                     seed: int = 0) -> Tensor:
    """``uint8 [B, C, S, S]`` random pixels (``S`` = the global view size unless given)."""
    s = size or cfg.global_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (cfg.batch_size, in_chans, s, s), dtype=torch.uint8,
                         generator=gen).to(device)


def build_variants(dense_cfg: TrainConfig, methods: Sequence[str], keep_rates: Sequence[float],
                   device: torch.device, progress: float = 0.5,
                   image_size: int | None = None) -> list[Variant]:
    """Dense first, then every method at every keep rate, all from the dense variant's weights
    (:func:`build_settings` of one group). ``dense_cfg`` gives everything but the reduction
    method and keep rate."""
    cfgs = [with_method(dense_cfg, DENSE)]
    cfgs += [with_method(dense_cfg, m, float(k)) for m in methods for k in keep_rates]
    return build_settings([("", c) for c in cfgs], device, progress, image_size)


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def build_settings(settings: Sequence[tuple[str, TrainConfig]], device: torch.device,
                   progress: float = 0.5, image_size: int | None = None) -> list[Variant]:
    """One variant per ``(group, config)``, each built from its config's seed on the same synthetic
    images; a variant with the architecture of its group's first (the reference) starts from the
    reference's weights, so that a reducer's variants differ from dense only in what they keep."""
    for _, cfg in settings:
        check_config(cfg)
    first = settings[0][1]
    data = data_info(first)
    images = synthetic_images(first, data.in_chans, device, image_size, first.seed)
    labels = (torch.arange(images.shape[0]) % max(1, data.num_classes)).to(device)
    variants: list[Variant] = []
    reference: dict[str, Variant] = {}
    for group, cfg in settings:
        torch.manual_seed(cfg.seed)
        fw = build_framework(cfg, data).to(device)
        ref = reference.get(group)
        if ref is not None and _same_shapes(ref.framework, fw):
            fw.load_state_dict(ref.framework.state_dict())
        opt = build_optimizer(cfg, fw)
        augment = build_augment(cfg, fw, data).to(device)
        v = Variant(cfg, fw, augment, opt, images, labels, progress,
                    name=FRAMEWORKS.get(cfg.framework).cost_label(cfg), group=group)
        reference.setdefault(group, v)
        variants.append(v)
    return variants


# ----------------------------------------------------------------------------- measurements


def count_step_flops(v: Variant, round_: int) -> int:
    """Matmul FLOPs ``FlopCounterMode`` counts in the forward and backward of one real step (the
    augmentation's blur convolutions and the optimiser are outside the count)."""
    batch = v.batch(round_)
    total = count_flops(lambda: v.backward(v.forward(batch)))
    v.update()
    return total


def _storage_key(t: Tensor) -> tuple[str, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # e.g. sparse or functional tensors
        return None
    return str(t.device), storage.data_ptr()


def saved_bytes(v: Variant, round_: int) -> int:
    """Bytes of the unique storages autograd saves for backward during one real step's forward.

    Parameters and buffers are left out (they live whatever the tokens); the input views, the
    autocast copies of weights (bf16) and every activation count once per storage.
    """
    owned = {_storage_key(t) for t in (*v.framework.parameters(), *v.framework.buffers())}
    seen: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key is not None and key not in owned:
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    batch = v.batch(round_)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = v.forward(batch)
    v.backward(loss)
    v.update()
    return sum(seen.values())


def cuda_peak(v: Variant, round_: int) -> tuple[int, int]:
    """``(peak, peak above the step's start)`` allocated CUDA bytes over one real step."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(v.device)
    base = torch.cuda.memory_allocated(v.device)
    v.step(round_)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(v.device)
    return peak, peak - base


def time_rounds(variants: Sequence[Variant], warmup: int, repeats: int, first_round: int = 0) -> int:
    """Warm-up rounds, then ``repeats`` timed rounds, each over every variant once.

    The order rotates by one variant each round, so no variant always follows the same one.
    Returns the next unused round number.
    """
    r = first_round
    for _ in range(warmup):
        for v in variants:
            v.step(r)
        r += 1
    gc.collect()
    n = len(variants)
    for i in range(repeats):
        for j in range(n):
            variants[(i + j) % n].step(r, record=True)
        r += 1
    return r


def medians(v: Variant) -> dict[str, float]:
    """Median seconds of the whole step, of each phase and of the step's process CPU time, and the
    median minor page faults per step (``faults``)."""
    out = {"step": statistics.median(v.step_times())}
    out.update({name: statistics.median(ts) for name, ts in v.times.items()})
    return out


def profile_step(v: Variant, round_: int, top: int = 15) -> str:
    """``torch.profiler`` table (self time per op) of one step of ``v``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if v.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        v.step(round_)
    key = "self_cuda_time_total" if v.device.type == "cuda" else "self_cpu_time_total"
    return f"--- {v.label}\n" + prof.key_averages().table(sort_by=key, row_limit=top)
