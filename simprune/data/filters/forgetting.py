"""Tri-Level E-ViT's example level as a sample filter (METHOD.md, "Tri-Level E-ViT").

- **Initial subset.** A seeded random ``keep`` share of the training rows (``round(keep·N)``) is
  the active set; the rest is the pool. The draw depends only on ``seed`` and the rows, never on
  the process rank, so every process of a run trains on the same subset (the reference seeds it
  with ``seed + rank``: each rank drew its own 80%).
- **Statistics, on the device.** After every step :meth:`ForgettingFilter.observe` gathers the
  global batch's dataset rows, per-sample correctness (``StepOutput.extras["correct"]``) and, for
  the tie-break, the per-sample variance of the last block's CLS attention over the patch tokens
  (``extras["cls_attn_var"]``) from every process, and updates per-example tensors with index
  operations: last outcome, forgetting events (correct → incorrect between two consecutive
  presentations), whether it was ever correct, presentations and the variance sum. No host sync;
  every process holds the same statistics, so the checkpoint (written by process 0) holds them all.
- **Rounds.** At the start of the epochs :func:`round_epochs` places at the ``rounds_at`` fractions
  of training (default 0.1 … 0.5: five rounds, every 10%), the ``round(remove_frac·N)`` active
  examples with the fewest forgetting events are removed (an example never correct in the window
  counts as the window's length in epochs), ties broken by the lowest mean CLS-attention variance
  over the window (then the lowest dataset row); as many are restored, drawn at random from the
  pool (seeded by the round), and the removed ones join the pool. The active set keeps its size.
  The statistics are reset: each window is the epochs since the last round.
- **Random refresh** (``mode = "random"``): the same schedule, the removed examples drawn at random.

The state (active set, pool, statistics, the round plan, a summary of every round) is the filter's
``state_dict``, which the trainer saves in every checkpoint, so a run killed between rounds resumes
with the same subset, pool and statistics. A round is applied by :meth:`ForgettingFilter.select`
when the first step of its epoch asks for the epoch's rows, so it is part of the state of every
checkpoint written after that step and of none written before.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from simprune import dist

MODES = ("forgetting", "random")
TIE_BREAKS = ("cls_var", "none")
STATE_VERSION = 1


def round_epochs(rounds_at: Sequence[float], total_epochs: float) -> list[int]:
    """The epochs at whose start the rounds happen: ``round(f · total_epochs)`` for each fraction
    ``f`` (half up), keeping those in ``[1, total_epochs)`` and dropping repeats (a run too short
    to separate two fractions has fewer rounds)."""
    out: list[int] = []
    for f in rounds_at:
        e = math.floor(round(f * total_epochs, 9) + 0.5)
        if 1 <= e < total_epochs and (not out or e > out[-1]):
            out.append(e)
    return out


def check_rounds_at(rounds_at: Sequence[float]) -> list[float]:
    """Fractions of training strictly between 0 and 1, increasing."""
    values = [float(f) for f in rounds_at]
    if any(not 0.0 < f < 1.0 for f in values) or any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"rounds_at must be increasing fractions of training in (0, 1), got {values}")
    return values


def stats_until(rounds_at: Sequence[float], total_steps: int, steps_per_epoch: int) -> int:
    """The step before which statistics are gathered (the last round's first step; 0: never)."""
    epochs = round_epochs(rounds_at, total_steps / max(1, steps_per_epoch))
    return epochs[-1] * steps_per_epoch if epochs else 0


def kept_count(keep: float, n: int) -> int:
    """Examples an epoch trains on: ``round(keep · n)`` (half up), at least 1."""
    return max(1, math.floor(round(keep * n, 9) + 0.5))


def _generator(seed: int, *salt: int) -> torch.Generator:
    """A private CPU generator for ``(seed, salt...)``; the global RNG is never touched."""
    value = int(seed) % (2**31)
    for s in salt:
        value = (value * 1_000_003 + int(s) + 7919) % (2**62)
    return torch.Generator().manual_seed(value)


class ForgettingFilter:
    """Tri-Level E-ViT's example level (or random refresh) over the training rows ``indices``.

    Args:
        indices: ``[N]`` dataset rows of the training set (or of its ``train_subset``).
        keep: share of ``indices`` trained on (``0 < keep < 1``).
        remove_frac: share of ``N`` removed and restored per round (reference: 5% of the full set).
        rounds_at: fractions of training at which rounds happen (see :func:`round_epochs`).
        seed: the run's seed (the subset, the restores and random choices derive from it).
        mode: ``forgetting`` or ``random`` (random refresh).
        tie_break: ``cls_var`` (lowest mean CLS-attention variance first) or ``none`` (seeded
            random order among equal counts).
        device: where the statistics live (the framework's device).
    """

    def __init__(self, indices: Tensor, keep: float, remove_frac: float, rounds_at: Sequence[float],
                 seed: int, mode: str = "forgetting", tie_break: str = "cls_var",
                 device: torch.device | str = "cpu", verbose: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"example-level mode must be one of {', '.join(MODES)}, got {mode!r}")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {', '.join(TIE_BREAKS)}, got {tie_break!r}")
        if not 0.0 < keep < 1.0:
            raise ValueError(f"example_keep must be in (0, 1) (1 trains on everything: turn the example "
                             f"level off instead), got {keep}")
        self.rounds_at = check_rounds_at(rounds_at)
        self.universe = indices.detach().to("cpu", torch.int64)
        n = len(self.universe)
        if n == 0 or len(self.universe.unique()) != n:
            raise ValueError("the example level needs a non-empty set of distinct training rows")
        self.n_keep = kept_count(keep, n)
        self.n_remove = math.floor(round(remove_frac * n, 9) + 0.5)
        pool = n - self.n_keep
        if self.rounds_at and not 1 <= self.n_remove <= min(pool, self.n_keep):
            raise ValueError(
                f"remove_frac {remove_frac} of {n} training examples is {self.n_remove} per round; it "
                f"must be between 1 and min(kept {self.n_keep}, pool {pool}) so that a round can "
                "restore as many as it removes")
        self.keep, self.remove_frac, self.seed = float(keep), float(remove_frac), int(seed)
        self.mode, self.tie_break = mode, tie_break
        self.device = torch.device(device)
        self.verbose = verbose
        perm = torch.randperm(n, generator=_generator(self.seed, 0))
        self.active = self.universe[perm[: self.n_keep]].sort().values
        self.pool = self.universe[perm[self.n_keep :]]
        self.rounds_done = 0
        self.plan: list[int] | None = None  # round epochs, fixed at the first observed step
        self.history: list[dict[str, Any]] = []
        slot = torch.full((int(self.universe.max()) + 1,), -1, dtype=torch.int64)
        slot[self.universe] = torch.arange(n)
        self._slot = slot.to(self.device)
        self._reset_stats()

    # --- statistics ------------------------------------------------------------------------
    @property
    def needs_variance(self) -> bool:
        return self.mode == "forgetting" and self.tie_break == "cls_var"

    def _reset_stats(self) -> None:
        n, dev = len(self.universe), self.device
        self.last = torch.full((n,), -1, dtype=torch.int8, device=dev)  # -1: not presented yet
        self.forgets = torch.zeros(n, dtype=torch.int32, device=dev)
        self.learned = torch.zeros(n, dtype=torch.bool, device=dev)
        self.presented = torch.zeros(n, dtype=torch.int32, device=dev)
        self.var_sum = torch.zeros(n, dtype=torch.float32, device=dev)

    def record(self, index: Tensor, correct: Tensor, variance: Tensor | None = None) -> None:
        """Add one presentation of the rows ``index`` (``[B]``, distinct) with their correctness
        and CLS-attention variance: device index operations only."""
        slot = self._slot[index.to(self.device)]
        now = correct.to(self.device, torch.int8)
        prev = self.last[slot]
        self.forgets[slot] += ((prev == 1) & (now == 0)).to(torch.int32)
        self.last[slot] = now
        self.learned[slot] |= now.bool()
        self.presented[slot] += 1
        if variance is not None:
            self.var_sum[slot] += variance.to(self.device, torch.float32)

    def counts(self, window: int) -> Tensor:
        """``[N]`` forgetting counts of the current window: events, or ``window`` for an example
        never correct in it."""
        return torch.where(self.learned, self.forgets, torch.full_like(self.forgets, window))

    # --- the SampleFilter protocol ------------------------------------------------------------
    def select(self, indices: Tensor, epoch: int) -> Tensor:
        """The active rows of ``epoch``; applies a round that is due at the start of ``epoch``."""
        plan = self.plan or []
        while self.rounds_done < len(plan) and epoch >= plan[self.rounds_done]:
            self._round()
        return self.active

    def observe(self, batch: Any, out: Any, progress: Any) -> None:
        """Record the step's outcomes (every process's rows; no host sync)."""
        if self.plan is None:
            self.plan = round_epochs(self.rounds_at, progress.total_steps / progress.steps_per_epoch)
        if self.mode != "forgetting" or self.rounds_done >= len(self.plan):
            return
        correct = out.extras.get("correct")
        if correct is None:
            raise RuntimeError("the example level needs per-sample correctness (StepOutput.extras"
                               "['correct']); the framework does not provide it")
        variance = out.extras.get("cls_attn_var") if self.needs_variance else None
        if self.needs_variance and variance is None:
            raise RuntimeError("the CLS-attention tie-break needs StepOutput.extras['cls_attn_var'] "
                               "while statistics are gathered; the framework did not provide it")
        index = dist.all_gather_cat(batch.index.to(torch.int64))
        correct = dist.all_gather_cat(correct.to(torch.uint8))
        if variance is not None:
            variance = dist.all_gather_cat(variance.detach().float())
        self.record(index, correct, variance)

    def _round(self) -> None:
        assert self.plan is not None
        j = self.rounds_done
        window = self.plan[j] - (self.plan[j - 1] if j else 0)
        active = self.active
        slots = self._slot[active.to(self.device)]
        if self.mode == "forgetting":
            counts = self.counts(window)[slots].cpu()
            if self.tie_break == "cls_var":
                pres = self.presented[slots].clamp(min=1).float()
                tie = (self.var_sum[slots] / pres).cpu()
            else:
                tie = torch.rand(len(active), generator=_generator(self.seed, 2, j))
            # active is sorted by row: stable sorts give (count, tie, row) order
            order = tie.argsort(stable=True)
            order = order[counts[order].argsort(stable=True)]
            removed = active[order[: self.n_remove]]
            summary = {"events_of_removed_max": int(counts[order[self.n_remove - 1]]),
                       "events_mean": float(counts.float().mean()),
                       "never_forgotten": int(((counts == 0)).sum())}
        else:
            pick = torch.randperm(len(active), generator=_generator(self.seed, 2, j))
            removed = active[pick[: self.n_remove]]
            summary = {}
        restore = torch.randperm(len(self.pool), generator=_generator(self.seed, 3, j))
        restored = self.pool[restore[: self.n_remove]]
        kept = active[~torch.isin(active, removed)]
        self.active = torch.cat([kept, restored]).sort().values
        self.pool = torch.cat([self.pool[restore[self.n_remove :]], removed.sort().values])
        self.rounds_done += 1
        entry = {"round": j + 1, "epoch": self.plan[j], "window_epochs": window,
                 "removed": len(removed), "restored": len(restored), **summary}
        self.history.append(entry)
        self._reset_stats()
        if self.verbose and dist.is_main():
            more = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}"
                           for k, v in summary.items())
            print(f"simprune: example level ({self.mode}): round {j + 1}/{len(self.plan)} at epoch "
                  f"{self.plan[j]}: removed {len(removed)}, restored {len(restored)} of "
                  f"{len(self.active)} active{more}", file=sys.stderr, flush=True)

    # --- checkpoint ---------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {"keep": self.keep, "remove_frac": self.remove_frac, "rounds_at": self.rounds_at,
                "seed": self.seed, "mode": self.mode, "tie_break": self.tie_break,
                "examples": len(self.universe)}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "settings": self._settings(), "active": self.active.clone(),
                "pool": self.pool.clone(), "rounds_done": self.rounds_done,
                "plan": None if self.plan is None else list(self.plan),
                "history": [dict(h) for h in self.history],
                "stats": {k: getattr(self, k).cpu().clone()
                          for k in ("last", "forgets", "learned", "presented", "var_sum")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"example-level state version {state.get('version')!r}; this simprune "
                             f"reads version {STATE_VERSION}")
        if state["settings"] != self._settings():
            raise ValueError(f"the checkpoint's example level was made with {state['settings']}, "
                             f"this run has {self._settings()}")
        self.active = state["active"].to(torch.int64)
        self.pool = state["pool"].to(torch.int64)
        self.rounds_done = int(state["rounds_done"])
        self.plan = None if state["plan"] is None else [int(e) for e in state["plan"]]
        self.history = [dict(h) for h in state["history"]]
        for k, v in state["stats"].items():
            setattr(self, k, v.to(self.device))
