"""KernelCells driving a real Tracker: a kernel's actions follow its cells,
children and threads keep the cell they were started in (decoded-event fixtures)."""

from __future__ import annotations

import stat

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.correlate.policy import KernelCells
from provtrace.tracer.correlate.windows import CellWindow
from provtrace.tracer.model import events as E
from provtrace.tracer.model.processes import AT_FDCWD, Sink, Tracker

K, CHILD, THREAD = 4000, 4100, 4001
MS = 1_000_000
REG = stat.S_IFREG | 0o644


class Collect(Sink):
    def __init__(self) -> None:
        self.procs = []
        self.renames = []

    def on_process(self, proc) -> None:
        self.procs.append(proc)

    def on_rename(self, rec) -> None:
        self.renames.append(rec)


def _setup():
    policy = KernelCells()
    sink = Collect()
    t = Tracker(sink, created_mask=0x100000, cells=policy)
    t.add_root(K, 0, ["python", "-m", "ipykernel_launcher"], "/work", 0)
    policy.add_kernel(K, 0)
    policy.set_window(CellWindow(kernel_pid=K, msg_id="m1", cell_id="c1", start_ns=100 * MS, end_ns=200 * MS))
    policy.set_window(CellWindow(kernel_pid=K, msg_id="m2", cell_id="c2", start_ns=300 * MS))
    return t, sink, policy


def _read(t: Tracker, ts: int, pid: int, tid: int, fd: int, path: str) -> None:
    t.handle(E.Open(ts, pid, tid, 0, fd, AT_FDCWD, 0, 0, 7, 1, REG, path))
    t.handle(E.FdIO(ts + 1, pid, tid, 0, fd, L.FLUSH_CLOSE, 10, 0, 1, 0, 7, 1, REG, 0, 0, ts))


def test_kernel_reads_belong_to_the_window_they_happen_in():
    t, sink, _ = _setup()
    _read(t, 50 * MS, K, K, 5, "/work/early.csv")  # before any cell: start-up
    _read(t, 150 * MS, K, K, 5, "/work/data.csv")
    _read(t, 250 * MS, K, K, 5, "/work/idle.csv")  # between cells
    _read(t, 350 * MS, K, K, 5, "/work/data.csv")
    t.finish_all(400 * MS)
    (kernel,) = [p for p in sink.procs if p.pid == K]
    by = {(fa.path, fa.cell): fa for fa in kernel.files.values()}
    assert set(by) == {("/work/early.csv", None), ("/work/data.csv", "c1"),
                       ("/work/idle.csv", None), ("/work/data.csv", "c2")}
    assert by[("/work/data.csv", "c1")].bytes_read == 10 and "read" in by[("/work/data.csv", "c2")].access


def test_child_forked_in_a_cell_keeps_it_after_the_cell_ends():
    t, sink, _ = _setup()
    t.handle(E.Fork(150 * MS, K, K, 0, CHILD, CHILD, 0, False))
    t.handle(E.Open(250 * MS, CHILD, CHILD, 0, 3, AT_FDCWD, 0o101, 0x100000, 8, 1, REG, "late.txt"))
    t.handle(E.Exit(260 * MS, CHILD, CHILD, 0, 0, 3))
    t.finish_all(400 * MS)
    (child,) = [p for p in sink.procs if p.pid == CHILD]
    assert child.cell == "c1"
    assert [(fa.path, fa.cell, sorted(fa.access)) for fa in child.files.values()] == \
        [("/work/late.txt", "c1", ["create"])]


def test_thread_started_in_a_cell_acts_for_it_later():
    t, sink, policy = _setup()
    t.handle(E.Fork(320 * MS, K, K, 0, K, THREAD, 0, True))  # a thread born in cell 2
    policy.set_window(CellWindow(kernel_pid=K, msg_id="m2", cell_id="c2", start_ns=300 * MS, end_ns=400 * MS))
    t.handle(E.Rename(500 * MS, K, THREAD, 0, AT_FDCWD, AT_FDCWD, 0, "a.tmp", "a.csv"))  # c2 has ended
    t.handle(E.Rename(510 * MS, K, K, 0, AT_FDCWD, AT_FDCWD, 0, "b.tmp", "b.csv"))  # main thread, idle
    assert [(r.dst, r.cell) for r in sink.renames] == [("/work/a.csv", "c2"), ("/work/b.csv", None)]
