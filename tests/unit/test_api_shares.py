"""Worker shares and rate-limited log lines (issue 12: RPC starvation, log floods)."""

from __future__ import annotations

import logging

import pytest

from provtrace.tracer.serve.ratelog import RateLimitedLog, RateLimitFilter
from provtrace.tracer.serve.shares import Busy, Share, worker_budget


def test_a_share_caps_each_uid_and_everyone():
    share = Share("queries", total=3, per_uid=2)
    share.acquire(1000)
    share.acquire(1000)
    with pytest.raises(Busy, match=r"uid 1000 has 2 in progress, at most 2"):
        share.acquire(1000)
    share.acquire(1001)
    with pytest.raises(Busy, match="from all users"):
        share.acquire(1002)
    share.release(1000)
    with share.hold(1002):
        assert (share.held(), share.held(1002)) == (3, 1)
    assert share.held(1002) == 0


def test_the_budget_always_leaves_workers_for_control_calls():
    for workers in range(4, 64):
        reserved, streams, queries = worker_budget(workers)
        assert reserved >= 2 and streams >= 1 and queries >= 1
        assert reserved + streams + queries == workers
    with pytest.raises(ValueError, match="max_workers must be >= 4"):
        worker_budget(3)


def test_rate_limited_log_says_how_many_it_held_back(caplog):
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), every_s=3600)
    with caplog.at_level(logging.INFO, logger="t.ratelog"):
        for i in range(50):
            rl.error("kind-a", "event=x i=%d", i, exc_info=ValueError("boom"))
        rl.error("kind-b", "event=y")
    assert [r.getMessage() for r in caplog.records] == ["event=x i=0 suppressed_since_last=0",
                                                        "event=y suppressed_since_last=0"]
    assert caplog.records[0].exc_info is None  # no traceback unless debugging


def test_rate_limit_filter_drops_repeats_and_tracebacks(caplog):
    lib = logging.getLogger("t.lib")
    flt = RateLimitFilter(every_s=3600)
    lib.addFilter(flt)
    try:
        with caplog.at_level(logging.INFO, logger="t.lib"):
            for i in range(20):
                try:
                    raise KeyError(i)
                except KeyError as e:
                    lib.exception("Exception calling application: %s", e)
    finally:
        lib.removeFilter(flt)
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.exc_info is None and "KeyError" in record.getMessage()


def test_control_calls_are_capped_per_uid_only_and_root_is_exempt():
    share = Share("calls", None, per_uid=2, exempt_root=True)
    for _ in range(2):
        share.acquire(1000)
    with pytest.raises(Busy):
        share.acquire(1000)
    share.acquire(1001)  # another uid has its own cap: no total
    for _ in range(50):
        share.acquire(0)  # root: no per-uid cap
    assert share.held() == 53
