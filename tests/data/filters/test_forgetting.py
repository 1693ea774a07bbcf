"""Tri-Level E-ViT's example level (``simprune.data.filters.forgetting``): forgetting counts against
a loop, the remove-and-restore round, random refresh, its schedule, and its checkpointed state."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from simprune.data.filters import ForgettingFilter, round_epochs
from simprune.data.filters.forgetting import stats_until
from simprune.data.sampler import ResumableSampler


def make(n=40, keep=0.5, remove=0.1, rounds=(0.25, 0.5), seed=0, **kw) -> ForgettingFilter:
    rows = torch.arange(100, 100 + n)  # dataset rows need not start at 0
    return ForgettingFilter(rows, keep, remove, rounds, seed, verbose=False, **kw)


def loop_counts(history: dict[int, list[int]], window: int) -> dict[int, int]:
    """Forgetting events per row from its outcomes in presentation order (1 correct, 0 wrong):
    correct -> incorrect transitions; never correct: the window length."""
    out = {}
    for row, seq in history.items():
        if not any(seq):
            out[row] = window
        else:
            out[row] = sum(1 for a, b in zip(seq, seq[1:]) if a == 1 and b == 0)
    return out


def step_io(index, correct, variance=None, step=0, total=100, spe=10):
    extras = {"correct": torch.as_tensor(correct, dtype=torch.bool)}
    if variance is None:
        variance = [0.0] * len(index)
    extras["cls_attn_var"] = torch.as_tensor(variance, dtype=torch.float32)
    return (SimpleNamespace(index=torch.as_tensor(index)), SimpleNamespace(extras=extras),
            SimpleNamespace(step=step, total_steps=total, steps_per_epoch=spe))


def test_forgetting_counts_equal_a_loop_on_a_scripted_sequence():
    f = make(n=30, keep=0.6, remove=0.1)
    rows = f.active.tolist()
    rng = random.Random(3)
    history: dict[int, list[int]] = {r: [] for r in f.universe.tolist()}
    for presentation in range(7):
        order = rows[:]
        rng.shuffle(order)
        for start in range(0, len(order), 5):  # batches of 5 rows, each row once per presentation
            batch = order[start:start + 5]
            outcome = [int(rng.random() < 0.6) for _ in batch]
            if presentation == 0:
                outcome[0] = 0
            b, o, p = step_io(batch, outcome, step=presentation)
            f.observe(b, o, p)
            for r, c in zip(batch, outcome):
                history[r].append(c)
    want = loop_counts({r: history[r] for r in rows}, window=7)
    got = f.counts(7)[f._slot[torch.tensor(rows)]].tolist()
    assert got == [want[r] for r in rows]
    assert f.presented[f._slot[torch.tensor(rows)]].tolist() == [7] * len(rows)
    # a row that is never correct counts the window length
    g = make(n=10, keep=0.5, remove=0.1)
    r = g.active[:1]
    for step in range(4):
        g.observe(*step_io(r, [0], step=step))
    assert int(g.counts(4)[g._slot[r]]) == 4


def test_round_removes_the_least_forgotten_ties_by_variance_and_restores_as_many():
    f = make(n=40, keep=0.5, remove=0.1)  # 20 active, 20 in the pool, 4 per round
    active, pool = f.active.clone(), f.pool.clone()
    rows = active.tolist()
    rng = random.Random(0)
    counts = {r: rng.choice([0, 0, 0, 1, 2]) for r in rows}  # many ties at 0
    variance = {r: rng.choice([0.1, 0.2, 0.3]) for r in rows}  # ties in variance too
    seqs = {r: ([1, 0] * counts[r] + [1])[:2 * counts[r] + 1] for r in rows}  # exactly counts[r] events
    length = max(len(s) for s in seqs.values())
    for step in range(length):
        batch = [r for r in rows if step < len(seqs[r])]
        f.observe(*step_io(batch, [seqs[r][step] for r in batch], [variance[r] for r in batch],
                           step=step))
    f.plan = [3]
    expected = sorted(rows, key=lambda r: (counts[r], variance[r], r))[:4]
    out = f.select(None, 3)
    removed = sorted(set(rows) - set(out.tolist()))
    assert removed == sorted(expected)
    restored = sorted(set(out.tolist()) - set(rows))
    assert len(restored) == 4 and set(restored) <= set(pool.tolist())
    assert len(out) == 20 and len(set(out.tolist())) == 20  # the set size stays constant
    assert sorted(f.pool.tolist()) == sorted((set(pool.tolist()) - set(restored)) | set(removed))
    assert len(f.pool) == 20
    assert int(f.presented.sum()) == 0 and int(f.forgets.sum()) == 0  # statistics reset
    assert f.history[0]["removed"] == 4 and f.history[0]["restored"] == 4
    assert torch.equal(f.select(None, 4), out)  # no second round before the next planned epoch


def test_round_with_tie_break_none_keeps_the_count_order():
    f = make(n=40, keep=0.5, remove=0.1, tie_break="none")
    rows = f.active.tolist()
    forgotten = set(rows[:16])  # one event each; the other 4 never forgotten
    for step in range(2):
        f.observe(*step_io(rows, [int(step == 0 or r not in forgotten) for r in rows], step=step))
    f.plan = [2]
    out = f.select(None, 2).tolist()
    assert set(rows[16:]).isdisjoint(out)


def test_random_refresh_follows_the_schedule_and_the_seed():
    a, b, c = make(mode="random", seed=1), make(mode="random", seed=1), make(mode="random", seed=2)
    for f in (a, b, c):
        f.observe(*step_io(f.active[:2], [1, 1], step=0, total=40, spe=10))  # 4 epochs: rounds at 1, 2
    assert a.plan == [1, 2] and int(a.presented.sum()) == 0  # random refresh keeps no statistics
    before = a.active.clone()
    out = a.select(None, 1)
    assert len(out) == len(before) and len(set(before.tolist()) - set(out.tolist())) == 4
    assert torch.equal(out, b.select(None, 1)) and torch.equal(a.pool, b.pool)
    assert not torch.equal(out, c.select(None, 1))


def test_initial_subset_is_seeded_and_sized():
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    assert torch.equal(a.active, b.active) and not torch.equal(a.active, c.active)
    assert len(a.active) == 20 and len(a.pool) == 20
    assert sorted(a.active.tolist() + a.pool.tolist()) == list(range(100, 140))


def test_round_epochs_and_the_statistics_window():
    assert round_epochs([0.1, 0.2, 0.3, 0.4, 0.5], 50) == [5, 10, 15, 20, 25]
    assert round_epochs([0.1, 0.2, 0.3, 0.4, 0.5], 10) == [1, 2, 3, 4, 5]
    assert round_epochs([0.1, 0.2, 0.3, 0.4, 0.5], 4) == [1, 2]  # too short: repeats dropped
    assert round_epochs([0.1], 2) == []  # round(0.2) = 0: no round at the start
    assert stats_until([0.1, 0.2, 0.3, 0.4, 0.5], 500, 10) == 250


@pytest.mark.parametrize("bad", [dict(keep=1.0), dict(keep=0.9, remove=0.2), dict(rounds=(0.5, 0.2)),
                                 dict(rounds=(1.0,)), dict(mode="hardest"), dict(tie_break="max"),
                                 dict(remove=0.001)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        make(**bad)


def test_state_resumes_between_and_after_rounds():
    def drive(f, steps, start=0):
        spe, total = 4, 24  # 6 epochs: rounds at epochs 2 (0.33) and 4 (0.66)
        sampler = ResumableSampler(f.universe, 5, seed=0, sample_filter=f)
        for step in range(start, steps):
            epoch, it = divmod(step, spe)
            idx = sampler.batch(epoch, it)
            correct = (idx * 7 + step) % 3 != 0
            f.observe(*step_io(idx, correct, (idx % 5).float() / 10, step, total, spe))
        return sampler

    whole = make(n=40, keep=0.5, remove=0.1, rounds=(1 / 3, 2 / 3))
    drive(whole, 24)
    assert whole.rounds_done == 2
    for cut in (9, 17, 5):  # right after round 1 (step 8 applied it), after round 2, between rounds
        first = make(n=40, keep=0.5, remove=0.1, rounds=(1 / 3, 2 / 3))
        drive(first, cut)
        state = first.state_dict()
        again = make(n=40, keep=0.5, remove=0.1, rounds=(1 / 3, 2 / 3))
        again.load_state_dict(state)
        for key in ("active", "pool"):
            assert torch.equal(getattr(again, key), getattr(first, key))
        assert again.rounds_done == first.rounds_done and again.history == first.history
        for key, value in state["stats"].items():
            assert torch.equal(getattr(again, key).cpu(), value)
        drive(again, 24, start=cut)
        assert torch.equal(again.active, whole.active) and torch.equal(again.pool, whole.pool)
        assert again.history == whole.history
        assert torch.equal(again.forgets, whole.forgets) and torch.equal(again.var_sum, whole.var_sum)


def test_state_of_other_settings_is_refused():
    state = make(seed=1).state_dict()
    with pytest.raises(ValueError, match="example level was made with"):
        make(seed=2).load_state_dict(state)


def test_two_processes_see_one_subset(tmp_path):
    """2 gloo processes under torchrun: one subset, pool and set of statistics on both ranks, equal
    to one process seeing the same global batches (the reference drew a subset per rank)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("forgetting_ranks.py")
    repo = Path(__file__).resolve().parents[3]
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    subprocess.run([sys.executable, str(script), str(one)], env=env, check=True, timeout=300)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script), str(two)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    single = torch.load(one / "rank0.pt")
    r0, r1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    assert r0["world"] == r1["world"] == 2
    assert r0["state"]["rounds_done"] == 2 and r0["state"]["history"][0]["removed"] == 8
    for other in (r1, single):
        assert other["subsets"] == r0["subsets"]
        for key in ("active", "pool"):
            assert torch.equal(other["state"][key], r0["state"][key])
        assert other["state"]["history"] == r0["state"]["history"]
        for key, value in r0["before_round"]["stats"].items():
            assert torch.equal(other["before_round"]["stats"][key], value), key
    assert int(r0["before_round"]["stats"]["presented"].sum()) == 2 * 6 * 8  # 2 epochs of 6 batches
    assert r0["subsets"][0] != r0["subsets"][-1]  # the rounds changed the subset


def test_observe_reads_nothing_back_to_the_host(monkeypatch):
    """The per-step update is device work only: with every tensor-to-host read disabled, a step is
    still recorded (a round, which sorts on the host once, is not a step)."""
    f = make(n=40, keep=0.5, remove=0.1)
    rows = f.active[:8]
    f.observe(*step_io(rows, [1] * 8, step=0))  # the first step fixes the round plan (host floats)
    b, o, p = step_io(rows, [0, 1] * 4, [0.5] * 8, step=1)

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("a host read in observe")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    f.observe(b, o, p)
    monkeypatch.undo()
    assert f.forgets[f._slot[rows]].tolist() == [1, 0] * 4 and int(f.presented.sum()) == 16
