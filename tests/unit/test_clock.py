from __future__ import annotations

import datetime as dt
import time

from provtrace.tracer.clock import Clock, default_clock, iso_utc, parse_iso


def test_round_trip_is_exact_to_the_microsecond():
    clock = Clock(offset_ns=1_700_000_000_123_456_000)
    mono = 5_000_000_789_000
    assert clock.utc_to_mono_ns(clock.mono_ns_to_utc(mono)) == mono


def test_calibration_matches_now():
    clock = Clock()
    wall = dt.datetime.now(dt.timezone.utc)
    mono = clock.now_mono_ns()
    assert abs(clock.utc_to_mono_ns(wall) - mono) < 1_000_000_000  # same second


def test_parse_jupyter_dates():
    a = parse_iso("2026-11-21T14:00:00.123456Z")
    b = parse_iso("2026-11-21T14:00:00.123456+00:00")
    c = parse_iso("2026-11-21T16:00:00.123456+02:00")
    assert a == b == c
    assert iso_utc(a) == "2026-11-21T14:00:00.123456Z"


def test_naive_datetime_is_utc():
    clock = Clock(offset_ns=0)
    naive = dt.datetime(2020, 1, 1)
    assert clock.utc_to_mono_ns(naive) == clock.utc_to_mono_ns(naive.replace(tzinfo=dt.timezone.utc))


def test_default_clock_is_built_once():
    assert default_clock() is default_clock()
    assert isinstance(time.clock_gettime_ns(time.CLOCK_MONOTONIC), int)
