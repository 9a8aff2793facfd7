"""The due-check family of `core.schedule`: `Until`, `Every`, `Ratio`, `Cadence` and `crossed`."""

from __future__ import annotations

import itertools

import pytest

from core.schedule import Cadence, Every, Ratio, Until, crossed

REPEAT = 2


def firing_frames(cadence: Cadence, last_frame: int, span: int = REPEAT) -> dict[int, int]:
    """{frame: runs} over the agent steps at frames 0, span, 2 span, ... <= last_frame."""
    runs = {frame: cadence.runs(frame, span) for frame in range(0, last_frame + 1, span)}
    return {frame: n for frame, n in runs.items() if n}


def test_until_counts_agent_steps_of_a_frame_budget():
    until = Until(frames=201, action_repeat=2)  # 100 whole agent steps fit
    assert until(99) and not until(100)
    assert Until(None)(10**9)


def test_every_fires_on_frame_multiples():
    every = Every(frames=10, action_repeat=2)
    assert [s for s in range(16) if every(s)] == [0, 5, 10, 15]
    assert not any(Every(0, 2)(s) for s in range(10))
    assert not any(Every(None, 2)(s) for s in range(10))
    with pytest.raises(ValueError, match="shorter than one agent step"):
        Every(1, action_repeat=2)


@pytest.mark.parametrize("frames,repeat", [(10, 2), (7, 1), (9, 2), (1, 1)])
def test_every_is_a_cadence_from_step_zero(frames, repeat):
    every = Every(frames, repeat)
    steps = frames // repeat
    assert [s for s in range(100) if every(s)] == [s for s in range(100) if s % steps == 0]
    assert [s for s in range(100) if every(s)] == [s for s in range(100) if crossed(s - 1, s, steps)]


@pytest.mark.parametrize(
    "ratio,steps,expected", [(2, 10, 20), (0.5, 10, 5), (0.25, 8, 2), (1, 7, 7), (0, 5, 0)]
)
def test_ratio_spreads_updates_over_steps(ratio, steps, expected):
    due = Ratio(ratio)
    counts = [due(s) for s in range(steps)]
    assert sum(counts) == expected
    assert max(counts) - min(counts) <= max(1, int(ratio))


def test_ratio_rejects_negative_values():
    with pytest.raises(ValueError, match=">= 0"):
        Ratio(-1)


def test_crossed_is_true_when_a_multiple_lies_in_the_half_open_interval():
    assert crossed(30, 40, 40) and crossed(39, 40, 40) and crossed(30, 90, 40)
    assert not crossed(40, 60, 40) and not crossed(40, 40, 40) and not crossed(0, 39, 40)
    assert not crossed(0, 10**6, 0)  # a period of 0: never
    assert crossed(-1, 0, 40)  # frame 0 is a multiple


def test_crossed_fires_once_per_multiple_for_counters_advancing_by_uneven_steps():
    counters = [0, 7, 20, 33, 40, 41, 79, 80, 121, 160]
    fired = [b for a, b in itertools.pairwise(counters) if crossed(a, b, 40)]
    assert fired == [40, 80, 121, 160]


def test_cadence_fires_at_start_then_every_period():
    cadence = Cadence("x", start=40, every=20, times=2, first_times=5)
    assert firing_frames(cadence, 120) == {40: 5, 60: 2, 80: 2, 100: 2, 120: 2}
    assert firing_frames(Cadence("once", start=10, every=0, times=3), 100) == {10: 3}
    assert cadence.total_runs(120) == sum(firing_frames(cadence, 120).values())
    assert cadence.total_runs(39) == 0


def test_cadence_counts_every_firing_when_periods_do_not_align_with_agent_steps():
    cadence = Cadence("odd", start=3, every=3)  # firings at 3, 6, 9, ... seen through windows of 2 frames
    fired = firing_frames(cadence, 300)
    assert sum(fired.values()) == len(range(3, 301, 3)) and max(fired.values()) == 1
    assert set(fired) == {f + f % 2 for f in range(3, 301, 3) if f + f % 2 <= 300}  # the step at or after it


def test_cadence_counts_several_firings_inside_one_wide_window():
    cadence = Cadence("fast", start=0, every=4, times=3)
    assert cadence.runs(20, 10) == 3 * len([f for f in range(11, 21) if f % 4 == 0])
    assert Cadence("late", start=50, every=10).runs(40, 10) == 0


def test_cadence_rejects_negative_settings():
    with pytest.raises(ValueError, match="must be >= 0"):
        Cadence("bad", start=-1)
    with pytest.raises(ValueError, match="must be >= 0"):
        Cadence("bad", start=0, every=5, first_times=-2)
