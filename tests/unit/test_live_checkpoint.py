"""Tracker.checkpoint: a live session's finished cell is written while its kernel
runs, and the records written at the kernel's exit hold only the remainder.

A real Tracker under the daemon's cell policy (KernelCells), the real RunWriter
and a real SQLite store, read back with load_run and the versions model; the
events are decoded-event fixtures, as in test_correlate_policy.py."""

from __future__ import annotations

import stat

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.clock import Clock
from provtrace.tracer.clock import us_to_iso as iso
from provtrace.tracer.correlate.policy import KernelCells
from provtrace.tracer.correlate.windows import CellWindow
from provtrace.tracer.lineage.versions import Model
from provtrace.tracer.model import events as E
from provtrace.tracer.model.processes import AT_FDCWD, Tracker
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.writer import RunWriter

K, CHILD = 4_300_000, 4_300_001  # above pid_max: nothing in /proc answers for them
MS = 1_000_000
OFFSET_NS = 1_700_000_000 * 10**9
CREATED = 0x100000
REG = stat.S_IFREG | 0o644
WRONLY_CREAT_TRUNC = 0o1101


def _open(ts, pid, fd, path, ino, write=False):
    return E.Open(ts, pid, pid, 1, fd, AT_FDCWD, WRONLY_CREAT_TRUNC if write else 0,
                  CREATED if write else 0, ino, 8, REG, path)


def _close(ts, pid, fd, ino, read=0, written=0, first_ts=0):
    return E.FdIO(ts, pid, pid, 1, fd, L.FLUSH_CLOSE, read, written, int(bool(read)), int(bool(written)),
                  ino, 8, REG, 0, 0, first_ts or ts)


@pytest.fixture
def session(tmp_path):
    """(store, rid, tracker) of a session whose kernel K runs cell m1 (100-200 ms)
    and then m2 (300 ms on)."""
    store = S.Store(str(tmp_path / "p.db"))
    start_us = OFFSET_NS // 1000
    rid = store.new_run("live-session", {"id": "live-session", "kind": "session", "backend": "ebpf",
                                         "uid": 0, "started": iso(start_us), "start_us": start_us})
    policy = KernelCells()
    tracker = Tracker(RunWriter(store, rid, Clock(offset_ns=OFFSET_NS), base_us=start_us), CREATED,
                      cells=policy)
    tracker.add_root(K, 0, ["python", "-m", "ipykernel_launcher"], "/w", 0)
    policy.add_kernel(K, 0)
    for msg_id, start, end in (("m1", 100, 200), ("m2", 300, None)):
        policy.set_window(CellWindow(kernel_pid=K, msg_id=msg_id, cell_id=None, start_ns=start * MS,
                                     end_ns=None if end is None else end * MS))
        store.append(rid, S.CELL, {"id": msg_id, "msg_id": msg_id, "status": "ok"})
    yield store, rid, tracker
    store.close()


def _doc(store, rid):
    store.flush()
    return Q.load_run(store, rid)


def _records(doc, path, cell):
    return [f for f in doc["files"] if f["path"] == path and f["cell"] == cell]


def test_a_finished_cell_is_stored_while_the_kernel_runs_and_never_twice(session):
    store, rid, t = session
    for ev in (_open(110 * MS, K, 5, "/w/a.csv", 21), _close(120 * MS, K, 5, 21, read=300),
               _open(130 * MS, K, 6, "/w/b.csv", 22, write=True), _close(140 * MS, K, 6, 22, written=64)):
        t.handle(ev)
    assert [fa.path for fa in t.checkpoint("m1")] == ["/w/a.csv", "/w/b.csv"]

    live = _doc(store, rid)
    assert live["run"]["ended"] is None and live["run"]["gaps"] == {"run_not_finished": 1}
    m1 = next(c for c in live["cells"] if c["id"] == "m1")
    assert m1["reads"] == ["/w/a.csv"] and m1["writes"] == ["/w/b.csv"]
    assert not any(fa.cell == "m1" for fa in t.live[K].files.values())  # handed over, not kept

    for ev in (_open(310 * MS, K, 5, "/w/b.csv", 22), _close(320 * MS, K, 5, 22, read=64)):  # m2 reads it
        t.handle(ev)
    t.handle(E.Exit(400 * MS, K, K, 1, 0, 7))
    t.finish_exited()
    done = _doc(store, rid)
    (wrote,) = _records(done, "/w/b.csv", "m1")  # one record: the checkpoint's, not again at exit
    assert wrote["bytes_written"] == 64 and set(wrote["access"]) == {"create", "write"}
    assert _records(done, "/w/a.csv", "m1")[0]["bytes_read"] == 300
    assert len(_records(done, "/w/a.csv", "m1")) == 1
    history = Model(store).history("/w/b.csv")
    assert [(v.how, v.act.cell) for v in history.versions] == [("write", "m1")]
    assert [r.act.cell for r in history.versions[0].reads] == ["m2"]  # m2 read what m1 wrote


def test_io_on_a_file_the_cell_left_open_is_the_remainder(session):
    store, rid, t = session
    t.handle(_open(110 * MS, K, 7, "/w/log.csv", 23, write=True))
    t.checkpoint("m1")
    # closed during m2: its I/O began in m1 (first_ts), so it is m1's, written at exit
    t.handle(_close(330 * MS, K, 7, 23, written=40, first_ts=150 * MS))
    t.handle(E.Exit(400 * MS, K, K, 1, 0, 7))
    t.finish_exited()
    recs = _records(_doc(store, rid), "/w/log.csv", "m1")
    assert [(sorted(f["access"]), f["bytes_written"]) for f in recs] == [(["create"], 0), (["write"], 40)]


def test_a_live_child_of_the_cell_is_checkpointed_and_its_exit_adds_only_the_rest(session):
    store, rid, t = session
    t.handle(E.Fork(150 * MS, K, K, 1, CHILD, CHILD, 0, False))  # a background job started in m1
    for ev in (_open(160 * MS, CHILD, 3, "/w/c.csv", 24, write=True), _close(170 * MS, CHILD, 3, 24, written=9)):
        t.handle(ev)
    assert [(fa.path, fa.cell) for fa in t.checkpoint("m1")] == [("/w/c.csv", "m1")]
    assert not t.checkpoint("m1")  # a cell's end reported twice (IOPub and a client): nothing more
    m1 = next(c for c in _doc(store, rid)["cells"] if c["id"] == "m1")
    assert m1["writes"] == ["/w/c.csv"] and m1["processes"] == []  # the child's record comes at its exit
    for ev in (_open(350 * MS, CHILD, 3, "/w/d.csv", 25, write=True), _close(360 * MS, CHILD, 3, 25, written=5),
               E.Exit(370 * MS, CHILD, CHILD, 1, 0, 4)):
        t.handle(ev)
    t.finish_all(500 * MS)
    done = _doc(store, rid)
    m1 = next(c for c in done["cells"] if c["id"] == "m1")
    assert m1["writes"] == ["/w/c.csv", "/w/d.csv"] and m1["processes"] == [CHILD]
    assert len(_records(done, "/w/c.csv", "m1")) == 1
