"""Window-position schedules (METHOD.md item 3) and EViT's keep-rate warm-up."""

from __future__ import annotations

import math

import pytest

from simprune.reducers import WINDOWS, KeepRateSchedule, window_position

TS = [0.0, 0.1, 0.25, 0.49, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sliding", TS),
        ("prune_dissimilar", [0.0] * 7),
        ("prune_similar", [1.0] * 7),
        ("two_stage", [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        ("two_stage_reverse", [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]),
    ],
)
def test_window_positions(name, expected):
    assert [window_position(name, t) for t in TS] == expected
    assert [WINDOWS.get(name)(t) for t in TS] == expected


@pytest.mark.parametrize("name", ["sliding", "prune_dissimilar", "two_stage"])
@pytest.mark.parametrize("t", [-0.5, 1.5])
def test_progress_outside_unit_interval(name, t):
    with pytest.raises(ValueError) as err:
        window_position(name, t)
    assert repr(t) in str(err.value) and "[0, 1]" in str(err.value)


def test_unknown_window_lists_known():
    with pytest.raises(KeyError) as err:
        window_position("two-stage", 0.2)
    msg = str(err.value)
    assert "'two-stage'" in msg
    for name in WINDOWS.names():
        assert name in msg


def test_keep_rate_cosine_warmup():
    sched = KeepRateSchedule(0.7, start=0.2, end=0.6)
    assert sched(0.0) == 1.0 and sched(0.19) == 1.0
    assert sched(0.2) == pytest.approx(1.0)
    assert sched(0.4) == pytest.approx(0.85)  # half way down the cosine
    # a quarter of the way: 0.7 + 0.3 * (1 + cos(pi/4)) / 2
    assert sched(0.3) == pytest.approx(0.7 + 0.15 * (1 + math.cos(math.pi / 4)))
    assert sched(0.6) == 0.7 and sched(0.8) == 0.7 and sched(1.0) == 0.7
    values = [sched(i / 200) for i in range(201)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert all(0.7 <= v <= 1.0 for v in values)


def test_keep_rate_default_is_constant_target():
    sched = KeepRateSchedule(0.8)
    assert [sched(t) for t in (0.0, 0.5, 1.0)] == [0.8, 0.8, 0.8]


def test_keep_rate_step_when_start_equals_end():
    sched = KeepRateSchedule(0.5, start=0.3, end=0.3)
    assert sched(0.29) == 1.0 and sched(0.3) == 0.5


@pytest.mark.parametrize("target", [0, 1.5, -0.1])
def test_bad_target_rate(target):
    with pytest.raises(ValueError) as err:
        KeepRateSchedule(target)
    assert repr(target) in str(err.value) and "(0, 1]" in str(err.value)


@pytest.mark.parametrize("start, end", [(0.5, 0.2), (-0.1, 0.5), (0.2, 1.5)])
def test_bad_warmup_window(start, end):
    with pytest.raises(ValueError) as err:
        KeepRateSchedule(0.7, start=start, end=end)
    msg = str(err.value)
    assert f"start={start}" in msg and f"end={end}" in msg and "0 <= start <= end <= 1" in msg


GRID = [i / 40 for i in range(41)]


@pytest.mark.parametrize("reach", [0.2, 0.5, 0.75, 1.0])
def test_window_reach_ends_the_schedule_early(reach):
    """Re-derived: sliding moves linearly from 0 at t = 0 to 1 at t = reach, then stays at 1;
    every schedule runs on the compressed clock min(1, t / reach)."""
    for t in GRID:
        want = t / reach if t < reach else 1.0
        assert window_position("sliding", t, reach) == pytest.approx(want, abs=1e-12)
        assert window_position("prune_similar", t, reach) == 1.0
        assert window_position("prune_dissimilar", t, reach) == 0.0
        if abs(t - reach / 2) > 1e-9:  # two-stage switches half-way through its reach
            assert window_position("two_stage", t, reach) == (0.0 if t < reach / 2 else 1.0)
    assert [window_position("sliding", t, 1.0) for t in TS] == TS  # reach 1: the paper's


@pytest.mark.parametrize("reach", [0.0, -0.5, 1.5, "half", True])
def test_bad_reach_is_one_clear_error(reach):
    from simprune.reducers import create_reducer

    with pytest.raises(ValueError, match=r"reach must be a number in \(0, 1\]"):
        window_position("sliding", 0.3, reach)
    with pytest.raises(ValueError, match=r"reach must be a number in \(0, 1\]"):
        create_reducer("simprune", reach=reach)


def test_reach_still_checks_progress():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        window_position("sliding", 1.5, 0.5)


def test_plan_uses_the_reducers_reach():
    from simprune.drive.plan import ReductionPlan
    from simprune.reducers import create_reducer

    plan = ReductionPlan(create_reducer("simprune", reach=0.5), KeepRateSchedule(0.7), "sliding")
    assert [plan.position(t) for t in (0.0, 0.1, 0.25, 0.5, 0.8, 1.0)] == pytest.approx(
        [0.0, 0.2, 0.5, 1.0, 1.0, 1.0])
    default = ReductionPlan(create_reducer("simprune"), KeepRateSchedule(0.7), "sliding")
    assert [default.position(t) for t in TS] == TS
