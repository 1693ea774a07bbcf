"""The keep rate that meets a training-FLOPs budget, and ``simprune bench budget``.

"Which keep rate gives me 70% of the dense training FLOPs for this recipe?" The fraction is the one
``simprune bench flops`` reports (:mod:`simprune.bench.flops`: one real training step of the
recipe's framework, views, reducer and points counted by ``torch.utils.flop_counter``, over the same
step dense, or over the framework's reference step), at the training progress ``progress`` (1: after
any keep-rate warm-up). It is a non-decreasing step function of the keep rate: the counts
``K = round(rate · N)`` at the points change only where ``rate · N`` crosses a half integer. So the
search runs over those steps, not over real numbers: every interval between two consecutive
crossings ``(2m + 1) / 2N`` (``N`` up to the view's patch count plus a fused token per point) is
one candidate, represented by its shortest decimal, and a bisection over the candidates counts
about ``log2`` of their number (11 to 15) steps. It brackets the budget between two adjacent steps:
the largest keep rate whose fraction does not exceed the budget and the next one up, which does.
The answer is the one of the two whose fraction is nearer the budget (``at_most``: always the one
below, for a hard ceiling); both are reported, so the fraction reached is within one step of the
token counts (one token kept from the first point on) of the budget, and usually within half.

A budget at or above 1, or below the fraction of the fewest tokens (one patch token per point), is
refused with the reachable range. A reducer that takes the budget itself (``owns_flops_budget``,
e.g. a gate trained to a budget) is left alone: there is no keep rate to solve.

Example: ``simprune bench budget --config configs/cifar10_mocov3_simprune.toml --flops 0.7 --json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any

from simprune.bench.flops import (
    StepCounter,
    add_flops_args,
    config_from_args,
    reference_config,
    with_reducer,
)
from simprune.config import TrainConfig, owns_flops_budget
from simprune.frameworks import DENSE, FRAMEWORKS
from simprune.run import check_model

#: a lower bound of the keep rates searched: the first candidate, the shortest decimal below the
#: first crossing, keeps one patch token per point (:func:`simprune.tokens.num_keep`)
FEWEST = 1e-6


@dataclass(frozen=True)
class BudgetSolution:
    """A keep rate solved from a training-FLOPs budget.

    Attributes:
        keep_rate, flops_ratio: the answer (the shortest decimal of its step of token counts) and
            its counted fraction: of the two steps that bracket the budget, the nearer one (the
            one below with ``at_most``).
        below_keep_rate, below_flops_ratio: the largest keep rate whose fraction does not exceed
            the budget; above_keep_rate, above_flops_ratio: the next step up, over the budget
            (``None`` when keep rate 1 is within the budget).
        reachable: ``(lowest, highest)`` fractions: at the fewest tokens and at keep rate 1.
        tokens: per reduction point, each branch's tokens in and out at ``keep_rate``.
        evaluations: training steps counted (the reference step included).
    """

    budget: float
    keep_rate: float
    flops_ratio: float
    below_keep_rate: float
    below_flops_ratio: float
    above_keep_rate: float | None
    above_flops_ratio: float | None
    reachable: tuple[float, float]
    at_most: bool = False
    tokens: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reachable"] = list(self.reachable)
        return out


def max_tokens(cfg: TrainConfig) -> int:
    """The most patch tokens a reduction point can see: the global view's grid, plus one synthetic
    token per point (EViT's fused token)."""
    vc = check_model(cfg)
    grid = vc.img_size // vc.patch_size
    return grid * grid + len(cfg.reducer.reduce_at)


def _shortest_decimal(lo: Fraction, hi: Fraction) -> Fraction:
    """The decimal with the fewest digits in ``[lo, hi)`` (``lo > 0``), the smallest such."""
    for digits in range(1, 19):
        scale = 10 ** digits
        c = Fraction(math.ceil(lo * scale), scale)
        if c < hi:
            return c
    return lo


def candidate_rates(n_max: int) -> list[float]:
    """One keep rate per step of the token counts ``round(rate · N)``, ``1 <= N <= n_max``, from
    low to high, ending with 1.0 (which keeps every token).

    The counts change where ``rate · N = m + 1/2``, ``m >= 1`` (halves round up; below 1.5 every
    point keeps its one token); each interval ``[c_i, c_{i+1})`` between consecutive crossings, and
    ``(0, c_1)``, is represented by its shortest decimal, for which :func:`simprune.tokens.num_keep`
    gives the interval's counts.
    """
    if n_max < 2:
        raise ValueError(f"n_max must be >= 2 (one token cannot be reduced), got {n_max}")
    cuts = sorted({Fraction(2 * m + 1, 2 * n) for n in range(2, n_max + 1) for m in range(1, n)})
    out = [float(_shortest_decimal(Fraction(FEWEST), cuts[0]))]
    for lo, hi in zip(cuts, cuts[1:]):
        out.append(float(_shortest_decimal(lo, hi)))
    out.append(1.0)  # from the last crossing on, every point keeps all its tokens
    return out


def check_budget(budget: Any, name: str = "flops budget") -> float:
    """A budget's type and sign (the reachable range needs a count: :func:`solve_keep_rate`)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"{name} must be a fraction of the dense training FLOPs in (0, 1), got "
                         f"{budget!r}")
    return float(budget)


class _Counter:
    """The counted fraction at a keep rate, each rate counted once."""

    def __init__(self, cfg: TrainConfig, progress: float, batch_size: int) -> None:
        self.cfg, self.progress, self.batch_size = cfg, progress, batch_size
        ref = reference_config(with_reducer(cfg, cfg.reducer.method, 1.0))
        if ref is None:  # pragma: no cover - a reducer config always has a reference
            raise ValueError("nothing to compare with")
        self.reference = StepCounter(ref, batch_size).count(progress).total
        self.evaluations = 1
        self.memo: dict[float, tuple[float, list[dict[str, Any]]]] = {}

    def __call__(self, rate: float) -> float:
        if rate not in self.memo:
            cfg = with_reducer(self.cfg, self.cfg.reducer.method, rate)
            step = StepCounter(cfg, self.batch_size).count(self.progress)
            self.evaluations += 1
            self.memo[rate] = (step.total / self.reference, step.points)
        return self.memo[rate][0]


def solve_keep_rate(cfg: TrainConfig, budget: float, progress: float = 1.0,
                    batch_size: int = 2, at_most: bool = False) -> BudgetSolution:
    """The keep rate whose counted training-FLOPs fraction is nearest ``budget`` (``at_most``: the
    largest one not above it).

    Args:
        cfg: a training config with a reducer (its keep rate is ignored; any ``flops_budget`` too).
        budget: the target fraction of the reference step's FLOPs (dense's, or the framework's
            ``cost_reference``), in the reachable range.
        progress: the training progress of the counted step (1: after any keep-rate warm-up);
        batch_size: images in the counted step (as ``bench flops --batch-size``);
        at_most: never above the budget.
    Raises:
        ValueError: a dense config, a reducer that owns its budget, or a budget outside the
            reachable range (the message gives the range).
    """
    budget = check_budget(budget)
    method = cfg.reducer.method
    if method == DENSE:
        raise ValueError("reducer.method is 'dense': there is no keep rate to solve; choose a reducer "
                         f"(e.g. simprune, evit, tome, mctf) for framework {cfg.framework!r}")
    if owns_flops_budget(method):
        raise ValueError(f"reducer {method!r} takes the flops budget itself (no keep rate to solve)")
    if FRAMEWORKS.get(cfg.framework).reducers == ():
        raise ValueError(f"framework {cfg.framework!r} takes no reducer: there is no keep rate to solve")
    cfg = replace(cfg, reducer=replace(cfg.reducer, flops_budget=0.0))
    rates = candidate_rates(max_tokens(cfg))
    ratio = _Counter(cfg, progress, batch_size)
    lowest, highest = ratio(rates[0]), ratio(rates[-1])
    if budget >= 1.0 or budget < lowest:
        raise ValueError(f"flops budget {budget:g} is out of reach for {method} in this recipe: "
                         f"reachable fractions are {lowest:.4f} (one patch token per point) to "
                         f"{highest:.4f} (keep rate 1), and a budget must be below 1")
    lo, hi = 0, len(rates) - 1
    if highest <= budget:  # a framework whose reference step costs more than its unreduced step
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ratio(rates[mid]) <= budget:
            lo = mid
        else:
            hi = mid
    below, above = rates[lo], (rates[hi] if hi > lo else None)
    pick = below
    if above is not None and not at_most and ratio(above) - budget < budget - ratio(below):
        pick = above
    return BudgetSolution(budget, pick, ratio(pick), below, ratio(below), above,
                          None if above is None else ratio(above), (lowest, highest), at_most,
                          ratio.memo[pick][1], ratio.evaluations)


def check_budget_overrides(given: Mapping[str, Any], where: str = "") -> None:
    """Refuse a keep rate and a flops budget given together (flat or dotted keys), naming both."""
    rate = [k for k in ("keep_rate", "reducer.keep_rate", "keep_rates") if given.get(k) is not None]
    budget = [k for k in ("flops_budget", "reducer.flops_budget") if given.get(k) not in (None, 0)]
    if rate and budget:
        raise ValueError(f"{where}{rate[0]} {given[rate[0]]!r} and {budget[0]} {given[budget[0]]!r} "
                         "were both given: the keep rate is solved from the flops budget; give one "
                         "of them")


def apply_flops_budget(cfg: TrainConfig, progress: float = 1.0) -> tuple[TrainConfig, BudgetSolution | None]:
    """``cfg`` with ``reducer.keep_rate`` solved from ``reducer.flops_budget`` (unchanged, and
    ``None``, without a budget or when the reducer takes the budget itself). The solution is also
    in the returned config's notes."""
    budget = cfg.reducer.flops_budget
    if budget == 0.0 or cfg.reducer.method == DENSE or owns_flops_budget(cfg.reducer.method):
        return cfg, None
    sol = solve_keep_rate(cfg, budget, progress)
    out = replace(cfg, reducer=replace(cfg.reducer, keep_rate=sol.keep_rate))
    out.notes = [*cfg.notes, f"flops budget {budget:g}: keep rate {sol.keep_rate:g} reaches "
                 f"{sol.flops_ratio:.4f} of the dense training FLOPs (simprune bench budget)"]
    return out, sol


# ----------------------------------------------------------------------------- command line


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``simprune bench budget``: those of ``bench flops`` (but ``--keep-rate``,
    which is what is solved) and ``--flops``."""
    add_flops_args(parser)
    parser.add_argument("--flops", type=float, required=True, metavar="FRACTION",
                        help="training-FLOPs budget as a fraction of dense, e.g. 0.7")
    parser.add_argument("--at-most", action="store_true",
                        help="never above the budget (default: the step of token counts nearest it)")


def format_solution(cfg: TrainConfig, sol: BudgetSolution) -> str:
    rc = cfg.reducer
    lines = [f"{cfg.framework}, {cfg.model} ({cfg.global_size} px), {rc.method} at blocks "
             f"{tuple(rc.reduce_at)}: budget {sol.budget:g} of the dense training FLOPs",
             f"keep rate {sol.keep_rate:g}: flops_ratio {sol.flops_ratio:.4f}"]
    steps = [("at or below", sol.below_keep_rate, sol.below_flops_ratio),
             ("above", sol.above_keep_rate, sol.above_flops_ratio)]
    lines.append("  bracketing steps: " + "; ".join(
        f"{what} the budget keep rate {rate:g} ({frac:.4f})" for what, rate, frac in steps
        if rate is not None) + ("; the one below is used (--at-most)" if sol.at_most else ""))
    for p in sol.tokens:
        branches = ", ".join(f"{b} {v.get('tokens_in', '?')}->{v['tokens_out']}"
                             for b, v in p.items() if isinstance(v, dict))
        lines.append(f"  tokens p{p['point']}" + (f" (block {p['block']})" if "block" in p else "")
                     + f": {branches}")
    lines.append(f"reachable {sol.reachable[0]:.4f} to {sol.reachable[1]:.4f}; {sol.evaluations} "
                 "steps counted")
    return "\n".join(lines)


def run_budget(args: argparse.Namespace) -> int:
    """``simprune bench budget``: print the solved keep rate (or one JSON object). Bad input -> exit 2."""
    try:
        if args.keep_rate is not None:
            raise ValueError(f"--keep-rate {args.keep_rate:g} and --flops {args.flops:g} were both "
                             "given: the keep rate is what is solved from the budget; drop --keep-rate")
        cfg = config_from_args(args)
        sol = solve_keep_rate(cfg, args.flops, args.progress, args.batch_size, args.at_most)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"keep_rate": sol.keep_rate, "flops_ratio": sol.flops_ratio,
                          **sol.to_dict(), "framework": cfg.framework, "model": cfg.model,
                          "method": cfg.reducer.method, "reduce_at": list(cfg.reducer.reduce_at),
                          "progress": args.progress, "batch_size": args.batch_size}))
    else:
        print(format_solution(cfg, sol))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simprune bench budget", description=__doc__.split("\n")[0])
    add_budget_args(parser)
    return run_budget(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["FEWEST", "BudgetSolution", "add_budget_args", "apply_flops_budget", "candidate_rates",
           "check_budget", "check_budget_overrides", "max_tokens", "owns_flops_budget", "run_budget",
           "solve_keep_rate"]
