"""The connection mode's pure rules: which mode a job runs in, and how early it connects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livesnap.jobs.connect import LeadOptions, LeadTime, connect_at_ms, resolve
from livesnap.jobs.models import ConnectMode


@pytest.mark.parametrize(("mode", "interval", "expected"), [
    (ConnectMode.AUTO, 5, ConnectMode.PERSISTENT),
    (ConnectMode.AUTO, 9, ConnectMode.PERSISTENT),
    (ConnectMode.AUTO, 10, ConnectMode.PER_TICK),  # the threshold itself is per tick
    (ConnectMode.AUTO, 3600, ConnectMode.PER_TICK),
    (ConnectMode.PERSISTENT, 3600, ConnectMode.PERSISTENT),  # a choice is kept
    (ConnectMode.PER_TICK, 5, ConnectMode.PER_TICK),
])
def test_auto_is_per_tick_from_the_threshold_on(mode, interval, expected):
    assert resolve(mode, interval_s=interval, per_tick_min_interval_s=10) is expected


def test_the_threshold_is_a_setting():
    assert resolve(ConnectMode.AUTO, interval_s=30, per_tick_min_interval_s=60) is (
        ConnectMode.PERSISTENT)
    assert resolve(ConnectMode.AUTO, interval_s=5, per_tick_min_interval_s=5) is (
        ConnectMode.PER_TICK)


@given(st.sampled_from(list(ConnectMode)), st.integers(5, 3600), st.floats(1, 3600))
def test_a_job_never_runs_in_auto(mode, interval, threshold):
    assert resolve(mode, interval_s=interval, per_tick_min_interval_s=threshold) is not (
        ConnectMode.AUTO)


def test_before_any_open_the_lead_is_the_initial_one():
    lead = LeadTime(LeadOptions(initial_s=2.0))
    assert lead.lead_s(60) == 2.0
    assert lead.lead_s(2) == 1.0  # never more than half the interval


def test_the_lead_is_the_shortest_recent_open_plus_the_margin():
    # nginx-rtmp: set-up ~0.1 s, then a wait of up to one GOP (2 s) for the next keyframe
    lead = LeadTime(LeadOptions(margin_s=0.3, kept=4))
    for opened in (1.9, 0.4, 1.2, 0.8):
        lead.observe(opened)
    assert lead.lead_s(60) == pytest.approx(0.7)
    # older measurements leave the window: only the last four count
    for opened in (1.5, 1.6, 1.7, 1.8):
        lead.observe(opened)
    assert lead.lead_s(60) == pytest.approx(1.8)


def test_an_origin_with_a_gop_cache_gets_a_short_lead():
    lead = LeadTime(LeadOptions(margin_s=0.3, min_s=0.2))
    for _ in range(8):
        lead.observe(0.05)  # the cached keyframe comes at once
    assert lead.lead_s(60) == pytest.approx(0.35)


def test_the_lead_is_bounded():
    lead = LeadTime(LeadOptions(margin_s=0.0, min_s=0.2, max_s=10.0))
    lead.observe(0.0)
    assert lead.lead_s(60) == 0.2
    slow = LeadTime(LeadOptions(margin_s=0.0, max_s=10.0))
    slow.observe(25.0)  # an origin that takes 25 s to answer
    assert slow.lead_s(3600) == 10.0
    assert slow.lead_s(12) == 6.0


def test_a_negative_measurement_is_ignored():
    lead = LeadTime(LeadOptions(initial_s=2.0))
    lead.observe(-1.0)
    assert lead.samples == []
    assert lead.lead_s(60) == 2.0


def test_connect_time_is_the_lead_before_the_tick_or_now_when_late():
    assert connect_at_ms(tick_ms=60_000, lead_s=0.7, now_ms=10_000) == 59_300
    assert connect_at_ms(tick_ms=60_000, lead_s=0.7, now_ms=59_900) == 59_900
