"""IOPub messages -> windows, on scripted messages (no kernel)."""

from __future__ import annotations

import datetime as dt
import hashlib

from provtrace.tracer.clock import Clock
from provtrace.tracer.correlate.tracker import WindowTracker

CLOCK = Clock(offset_ns=1_700_000_000 * 10**9)
K = 77


def _date(mono_ns: int) -> dt.datetime:
    return CLOCK.mono_ns_to_utc(mono_ns)


def _msg(msg_type, parent_id, content, at_ns, parent_type="execute_request", **parent):
    return {
        "header": {"msg_type": msg_type, "date": _date(at_ns)},
        "parent_header": {"msg_id": parent_id, "msg_type": parent_type, **parent},
        "content": content,
    }


def _feed(tracker, *msgs, recv_ns=10**15):
    return [tracker.on_message(m, recv_ns) for m in msgs]


def test_a_cell_from_busy_to_idle():
    t = WindowTracker(K, CLOCK)
    _feed(t,
          _msg("status", "m1", {"execution_state": "busy"}, 1_000_000),
          _msg("execute_input", "m1", {"code": "x = 1", "execution_count": 3}, 1_001_000),
          _msg("stream", "m1", {"name": "stdout", "text": "hi"}, 1_002_000),
          _msg("display_data", "m1", {"data": {}}, 1_003_000),  # IRkernel's result
          _msg("status", "m1", {"execution_state": "idle"}, 2_000_000))
    [w] = t.closed_windows
    assert (w.start_ns, w.end_ns, w.status, w.execution_count) == (1_000_000, 2_000_000, "ok", 3)
    assert w.code_sha256 == hashlib.sha256(b"x = 1").hexdigest() and not t.open_windows


def test_error_marks_the_window():
    t = WindowTracker(K, CLOCK)
    _feed(t,
          _msg("status", "m1", {"execution_state": "busy"}, 1_000),
          _msg("error", "m1", {"ename": "ValueError", "evalue": "x", "traceback": []}, 2_000),
          _msg("status", "m1", {"execution_state": "idle"}, 3_000))
    [w] = t.closed_windows
    assert (w.status, w.error_name) == ("error", "ValueError")


def test_non_execute_requests_are_ignored():
    t = WindowTracker(K, CLOCK)
    results = _feed(t,
                    _msg("status", "k1", {"execution_state": "busy"}, 1_000, parent_type="kernel_info_request"),
                    _msg("status", "k1", {"execution_state": "idle"}, 2_000, parent_type="kernel_info_request"),
                    _msg("status", "c1", {"execution_state": "busy"}, 3_000, parent_type="complete_request"))
    assert results == [None, None, None] and not t.closed_windows and not t.open_windows


def test_concurrent_executions_are_separate_windows():
    t = WindowTracker(K, CLOCK)
    _feed(t,
          _msg("status", "main", {"execution_state": "busy"}, 1_000),
          _msg("status", "sub", {"execution_state": "busy"}, 2_000, subshell_id="s-1"),
          _msg("status", "sub", {"execution_state": "idle"}, 3_000, subshell_id="s-1"),
          _msg("status", "main", {"execution_state": "idle"}, 4_000))
    sub, main = t.closed_windows
    assert (main.msg_id, main.start_ns, main.end_ns, main.subshell_id) == ("main", 1_000, 4_000, None)
    assert (sub.msg_id, sub.start_ns, sub.end_ns, sub.subshell_id) == ("sub", 2_000, 3_000, "s-1")


def test_joined_mid_cell_is_partial():
    t = WindowTracker(K, CLOCK)
    _feed(t,
          _msg("stream", "m1", {"text": "late"}, 5_000),
          _msg("error", "m1", {"ename": "E"}, 6_000),
          _msg("status", "m1", {"execution_state": "idle"}, 7_000))
    [w] = t.closed_windows
    assert w.partial and w.status == "error" and w.end_ns == 7_000


def test_idle_without_anything_before_is_a_partial_window():
    t = WindowTracker(K, CLOCK)
    _feed(t, _msg("status", "m9", {"execution_state": "idle"}, 7_000))
    [w] = t.closed_windows
    assert w.partial and w.start_ns == w.end_ns == 7_000


def test_kernel_death_closes_open_windows():
    t = WindowTracker(K, CLOCK)
    _feed(t, _msg("status", "m1", {"execution_state": "busy"}, 1_000))
    [w] = t.on_kernel_died(9_000)
    assert (w.status, w.end_reason, w.end_ns) == ("error", "died", 9_000) and not t.open_windows


def test_header_dates_from_the_future_are_clamped_to_receipt():
    t = WindowTracker(K, CLOCK)
    w = t.on_message(_msg("status", "m1", {"execution_state": "busy"}, 50_000_000_000), recv_ns=40_000_000_000)
    assert w.start_ns == 40_000_000_000


def test_missing_or_bad_dates_fall_back_to_receipt():
    t = WindowTracker(K, CLOCK)
    msg = {"header": {"msg_type": "status", "date": "not a date"},
           "parent_header": {"msg_id": "m1", "msg_type": "execute_request"},
           "content": {"execution_state": "busy"}}
    assert t.on_message(msg, recv_ns=123).start_ns == 123
    msg = {"header": {"msg_type": "status"}, "parent_header": {"msg_id": "m2", "msg_type": "execute_request"},
           "content": {"execution_state": "busy"}}
    assert t.on_message(msg, recv_ns=456).start_ns == 456


def test_garbage_shapes_do_not_crash():
    t = WindowTracker(K, CLOCK)
    for msg in ({}, {"header": None}, {"parent_header": {"msg_id": "x"}},
                {"header": {"msg_type": "execute_input"}, "parent_header": {"msg_id": "m", "msg_type": "execute_request"},
                 "content": {"code": 5, "execution_count": "seven"}}):
        t.on_message(msg, 1)
    [w] = t.open_windows
    assert w.code_sha256 is None and w.execution_count is None
