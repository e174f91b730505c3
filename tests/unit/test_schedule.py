import pytest
from hypothesis import given
from hypothesis import strategies as st

from livesnap.jobs.models import Verdict
from livesnap.jobs.schedule import (
    TickSchedule,
    effective_interval,
    select,
    ticks_missed,
    ticks_passed,
)


def test_keyframe_before_tick_is_skipped():
    chosen = select(next_tick_ms=5000, interval_ms=5000, keyframe_ms=4999)
    assert not chosen.capture
    assert chosen.next_tick_ms == 5000


def test_first_keyframe_at_or_after_tick_is_captured():
    chosen = select(next_tick_ms=5000, interval_ms=5000, keyframe_ms=5000)
    assert chosen.capture
    assert chosen.next_tick_ms == 10000


def test_missed_ticks_are_not_captured_late():
    # an outage of 17 s: one capture on return, next tick aligned to the original grid
    chosen = select(next_tick_ms=5000, interval_ms=5000, keyframe_ms=22000)
    assert chosen.capture
    assert chosen.next_tick_ms == 25000


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        select(next_tick_ms=0, interval_ms=0, keyframe_ms=1)


def gop_run(interval_ms, gop_ms, seconds):
    sched = TickSchedule(interval_ms=interval_ms, start_ms=0)
    captured = []
    t = 0
    while t <= seconds * 1000:
        if sched.on_keyframe(t / 1000):
            captured.append(t)
        t += gop_ms
    return sched, captured


def test_two_second_gop_five_second_interval():
    sched, captured = gop_run(5000, 2000, 30)
    # ticks at 0,5,10,...; keyframes at 0,2,4,6,...: captures at 0,6,10,16,20,26,30
    assert captured == [0, 6000, 10000, 16000, 20000, 26000, 30000]
    assert sched.effective_interval_ms is None


def test_long_gop_captures_every_keyframe_and_reports_effective_interval():
    sched, captured = gop_run(5000, 10000, 60)
    assert captured == list(range(0, 60001, 10000))
    assert sched.effective_interval_ms == 10000


def test_reset_gaps_forgets_the_outage_gap():
    sched = TickSchedule(interval_ms=5000, start_ms=0)
    assert sched.on_keyframe(0.0)
    assert sched.on_keyframe(60.0)
    sched.reset_gaps()
    assert sched.effective_interval_ms is None


@given(
    st.integers(min_value=1000, max_value=60_000),
    st.lists(st.integers(min_value=0, max_value=3_600_000), min_size=1, max_size=200),
)
def test_captures_never_closer_than_interval_grid(interval, times):
    sched = TickSchedule(interval_ms=interval, start_ms=0)
    captured = [t for t in sorted(times) if sched.on_keyframe(t / 1000)]
    # at most one capture per tick slot
    slots = [t // interval for t in captured]
    assert len(slots) == len(set(slots))


def test_effective_interval_on_time_is_none():
    assert effective_interval(interval_ms=5000, capture_gaps_ms=[6000, 4000, 6000]) is None
    assert effective_interval(interval_ms=5000, capture_gaps_ms=[]) is None
    assert effective_interval(interval_ms=5000, capture_gaps_ms=[8000, 8000, 8000]) == 8000


def test_a_rejected_keyframe_is_retried_within_its_tick():
    sched = TickSchedule(interval_ms=5000, start_ms=0)
    assert sched.on_keyframe(0.0)  # the tick at 0 selects this keyframe
    sched.rejected(Verdict.BLACK)
    assert sched.on_keyframe(2.0)  # still within the tick: the next keyframe is tried
    sched.rejected(Verdict.BLACK)
    assert sched.on_keyframe(4.0)
    assert sched.accepted() == 2  # two rejected before this one
    assert not sched.on_keyframe(4.5)  # back to normal: the next tick is at 5 s
    assert sched.on_keyframe(6.0)
    assert sched.accepted() == 0
    assert sched.take_missed() == []


def test_a_tick_without_an_accepted_keyframe_is_reported_missed():
    sched = TickSchedule(interval_ms=5000, start_ms=0)
    assert sched.on_keyframe(0.0)
    sched.rejected(Verdict.BLACK)
    assert sched.on_keyframe(2.0)
    sched.rejected(Verdict.FROZEN)
    # the tick at 5 s starts: the first tick is missed (with its last verdict), this one runs
    assert sched.on_keyframe(5.0)
    assert sched.take_missed() == [Verdict.FROZEN]
    assert sched.take_missed() == []
    assert sched.accepted() == 0  # the count started again with the new tick


def test_closing_a_tick_with_no_keyframe_moves_to_the_next_tick():
    sched = TickSchedule(interval_ms=60_000, start_ms=0)
    assert sched.next_tick_ms == 0
    sched.close_tick(59_000)  # a per-tick connection found nothing for the tick at 0
    assert sched.next_tick_ms == 60_000
    assert sched.take_missed() == []  # no verdict: the connection is what failed
    sched.close_tick(200_000)  # ticks at 60, 120 and 180 s passed too (stream away)
    assert sched.next_tick_ms == 240_000


def test_closing_a_tick_whose_keyframes_were_rejected_reports_it_missed():
    sched = TickSchedule(interval_ms=60_000, start_ms=0)
    assert sched.on_keyframe(0.5)
    sched.rejected(Verdict.BLACK)
    assert sched.next_tick_ms == 60_000  # selected: the tick after is next already
    sched.close_tick(58_000)
    assert sched.take_missed() == [Verdict.BLACK]
    assert sched.next_tick_ms == 60_000
    assert not sched.on_keyframe(59.0)  # the retry ended with the window
    assert sched.on_keyframe(60.1)
    assert sched.accepted() == 0


def test_ticks_passed_counts_a_tick_once_its_window_has_ended():
    assert ticks_passed(previous_ms=0, now_ms=9_999, interval_ms=5_000) == 0
    assert ticks_passed(previous_ms=0, now_ms=10_000, interval_ms=5_000) == 1
    assert ticks_passed(previous_ms=None, now_ms=60_000, interval_ms=5_000) == 0


@given(previous=st.integers(0, 10**7), elapsed=st.integers(0, 10**7),
       later=st.integers(0, 10**6), interval=st.integers(1, 10**5))
def test_ticks_counted_as_they_end_never_exceed_what_a_later_capture_counts(
    previous: int, elapsed: int, later: int, interval: int
):
    passed = ticks_passed(previous_ms=previous, now_ms=previous + elapsed, interval_ms=interval)
    at_capture = ticks_missed(previous_ms=previous, capture_ms=previous + elapsed + later,
                              interval_ms=interval)
    assert 0 <= passed <= at_capture
