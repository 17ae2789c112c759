"""Attribution edge cases: fork time, inheritance, pid reuse, boundaries, subshells."""

from __future__ import annotations

import itertools
import random

from provtrace.tracer.correlate.cells import CellAttributor, ProcessRecord, ThreadRecord
from provtrace.tracer.correlate.windows import CellWindow, ERROR

K = 100  # kernel pid
K_START = 1_000


def _attributor(*windows: CellWindow) -> CellAttributor:
    a = CellAttributor()
    a.add_kernel(K, K_START)
    a.add_windows(windows)
    return a


def _w(msg: str, start: int, end: int | None, **kw) -> CellWindow:
    return CellWindow(kernel_pid=K, msg_id=msg, start_ns=start, end_ns=end, cell_id=f"cell-{msg}", **kw)


def test_kernel_startup_belongs_to_no_cell():
    a = _attributor(_w("1", 5_000, 6_000))
    got = a.attribute(K, K, 2_000)
    assert got.window is None and got.reason == "kernel-idle"


def test_kernel_event_inside_window_and_between_windows():
    a = _attributor(_w("1", 5_000, 6_000), _w("2", 7_000, 8_000))
    assert a.attribute(K, K, 5_500).cell == "cell-1"
    assert a.attribute(K, K, 6_500).cell is None
    assert a.attribute(K, K, 7_001).cell == "cell-2"


def test_window_boundaries_are_inclusive():
    a = _attributor(_w("1", 5_000, 6_000))
    assert a.attribute(K, K, 5_000).cell == "cell-1"
    assert a.attribute(K, K, 6_000).cell == "cell-1"
    assert a.attribute(K, K, 4_999).cell is None
    assert a.attribute(K, K, 6_001).cell is None


def test_open_window_extends_until_closed():
    a = _attributor(_w("1", 5_000, None))
    assert a.attribute(K, K, 10**12).cell == "cell-1"
    a.add_window(_w("1", 5_000, 6_000, status=ERROR))
    assert a.attribute(K, K, 10**12).cell is None


def test_child_outliving_its_cell_keeps_the_cell():
    a = _attributor(_w("1", 5_000, 6_000), _w("2", 7_000, 8_000))
    a.add_process(ProcessRecord(pid=200, ppid=K, start_ns=5_500))
    got = a.attribute(200, 200, 7_500)  # acts during cell 2
    assert got.cell == "cell-1" and got.reason == "fork-time"


def test_grandchildren_inherit():
    a = _attributor(_w("1", 5_000, 6_000), _w("2", 7_000, 8_000))
    a.add_process(ProcessRecord(pid=200, ppid=K, start_ns=7_100))
    a.add_process(ProcessRecord(pid=201, ppid=200, start_ns=9_000))
    a.add_process(ProcessRecord(pid=202, ppid=201, start_ns=9_100))
    got = a.attribute(202, 202, 20_000)
    assert got.cell == "cell-2" and got.reason == "inherited"


def test_child_forked_outside_any_window_has_no_cell():
    a = _attributor(_w("1", 5_000, 6_000))
    a.add_process(ProcessRecord(pid=200, ppid=K, start_ns=2_000))  # start-up helper
    assert a.attribute(200, 200, 5_500).cell is None


def test_exit_before_exec_still_attributed_by_fork():
    a = _attributor(_w("1", 5_000, 6_000))
    a.add_process(ProcessRecord(pid=200, ppid=K, start_ns=5_100, exit_ns=5_200))
    assert a.attribute(200, 200, 5_150).cell == "cell-1"


def test_pid_reuse_uses_start_time_identity():
    a = _attributor(_w("1", 5_000, 6_000), _w("2", 7_000, 8_000))
    a.add_process(ProcessRecord(pid=300, ppid=K, start_ns=5_100, exit_ns=5_900))
    a.add_process(ProcessRecord(pid=300, ppid=K, start_ns=7_100))  # same pid, new process
    assert a.attribute(300, 300, 5_800).cell == "cell-1"
    assert a.attribute(300, 300, 9_000).cell == "cell-2"


def test_pid_reuse_of_a_parent():
    a = _attributor(_w("1", 5_000, 6_000), _w("2", 7_000, 8_000))
    a.add_process(ProcessRecord(pid=300, ppid=K, start_ns=5_100, exit_ns=5_900))
    a.add_process(ProcessRecord(pid=300, ppid=1, start_ns=6_500))  # unrelated reuse
    a.add_process(ProcessRecord(pid=301, ppid=300, start_ns=5_500))
    a.add_process(ProcessRecord(pid=302, ppid=300, start_ns=6_600))
    assert a.attribute(301, 301, 9_000).cell == "cell-1"
    assert a.attribute(302, 302, 9_000).cell is None


def test_kernel_pid_reuse_does_not_mix_windows():
    a = _attributor(_w("1", 5_000, 6_000))
    a.add_kernel(K, 50_000)  # a new kernel later got the same pid
    a.add_window(_w("2", 60_000, 61_000))
    assert a.attribute(K, K, 5_500).cell == "cell-1"
    assert a.attribute(K, K, 55_000).cell is None
    assert a.attribute(K, K, 60_500).cell == "cell-2"


def test_out_of_order_records_give_the_same_answers():
    windows = [_w("1", 5_000, 6_000), _w("2", 7_000, 8_000)]
    procs = [
        ProcessRecord(pid=200, ppid=K, start_ns=5_500),
        ProcessRecord(pid=201, ppid=200, start_ns=7_500),
        ProcessRecord(pid=210, ppid=K, start_ns=7_200),
        ProcessRecord(pid=211, ppid=210, start_ns=7_300, exit_ns=7_400),
    ]
    events = [(200, 7_600), (201, 9_000), (210, 7_250), (211, 7_350), (K, 5_001), (K, 6_500)]
    expected = None
    rng = random.Random(7)
    for _ in range(20):
        items = [("w", w) for w in windows] + [("p", p) for p in procs]
        rng.shuffle(items)
        a = CellAttributor()
        a.add_kernel(K, K_START)
        # query in the middle of arrival, as a live stream would
        for kind, item in items:
            (a.add_window if kind == "w" else a.add_process)(item)
            a.attribute(201, 201, 9_000)
        got = [a.attribute(pid, pid, ts).cell for pid, ts in events]
        if expected is None:
            expected = got
        assert got == expected
    assert expected == ["cell-1", "cell-1", "cell-2", "cell-2", "cell-1", None]


def test_event_before_process_record_is_unknown_then_resolves():
    a = _attributor(_w("1", 5_000, 6_000))
    assert a.attribute(200, 200, 5_600).reason == "unknown-process"
    a.add_process(ProcessRecord(pid=200, ppid=K, start_ns=5_500))
    assert a.attribute(200, 200, 5_600).cell == "cell-1"


def test_unrelated_process_is_not_attributed():
    a = _attributor(_w("1", 5_000, 6_000))
    a.add_process(ProcessRecord(pid=400, ppid=1, start_ns=5_500))
    assert a.attribute(400, 400, 5_600).reason == "not-kernel-descendant"


def test_concurrent_subshell_windows_by_thread():
    main = _w("m", 5_000, 9_000)
    sub = _w("s", 6_000, 7_000, subshell_id="sub-1", tid=K + 5)
    a = _attributor(main, sub)
    assert a.attribute(K, K + 5, 6_500).cell == "cell-s"
    assert a.attribute(K, K, 6_500).cell == "cell-m"
    # a child forked by the subshell thread belongs to the subshell's cell
    a.add_process(ProcessRecord(pid=500, ppid=K, start_ns=6_600, parent_tid=K + 5))
    assert a.attribute(500, 500, 9_999).cell == "cell-s"


def test_concurrent_windows_without_thread_info_are_marked_ambiguous():
    a = _attributor(_w("a", 5_000, 9_000, subshell_id="x"), _w("b", 6_000, 7_000, subshell_id="y"))
    got = a.attribute(K, K + 9, 6_500)
    assert got.cell == "cell-a" and got.ambiguous


def test_one_open_subshell_takes_other_threads_flagged_ambiguous():
    a = _attributor(_w("m", 5_000, 9_000), _w("s", 6_000, 7_000, subshell_id="sub-1"))
    got = a.attribute(K, K + 3, 6_500)
    assert got.cell == "cell-s" and got.ambiguous
    assert a.attribute(K, K, 6_500).cell == "cell-m"
    assert a.attribute(K, K + 3, 8_000).cell == "cell-m"  # only the main shell is open


def test_thread_started_in_a_cell_keeps_it():
    a = _attributor(_w("1", 5_000, 6_000), _w("2", 7_000, 8_000))
    a.add_thread(ThreadRecord(tid=K + 7, pid=K, start_ns=5_500))
    assert a.attribute(K, K + 7, 7_500).cell == "cell-1"
    assert a.attribute(K, K, 7_500).cell == "cell-2"


def test_many_processes_deep_chain_does_not_recurse():
    a = _attributor(_w("1", 5_000, 6_000))
    parent = K
    for i, pid in enumerate(itertools.islice(itertools.count(1000), 5000)):
        a.add_process(ProcessRecord(pid=pid, ppid=parent, start_ns=5_100 + i))
        parent = pid
    assert a.attribute(parent, parent, 10**9).cell == "cell-1"
