"""Runs built into a real SQLite store (Tracker -> RunWriter -> Store -> load_run),
shared by the export tests, and the flows every exporter reads from them.

The builders live here (not in a conftest) so each export test module names
exactly which runs it uses.
"""

from __future__ import annotations

import os
import stat

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.clock import Clock, us_to_iso
from provtrace.tracer.export.flows import ProcKey, final_name, flows_of, run_io
from provtrace.tracer.model import events as E
from provtrace.tracer.model.processes import AT_FDCWD, CellPolicy, Tracker
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.writer import RunWriter

CREATED = 0x100000
REG = stat.S_IFREG | 0o644
WRONLY_CREAT_TRUNC = 0o1101
A, B, K = 4_200_000, 4_200_001, 4_300_000
OFFSET_NS = 1_700_000_000 * 10**9  # wall clock = monotonic + this: events land in Nov 2023
CAFE = os.fsdecode(b"/w/caf\xe9.csv")
CAFE_ESCAPED = "/w/caf\\xe9.csv"


def _read(t, pid, fd, path, n, ino):
    yield E.Open(t(), pid, pid, 1, fd, AT_FDCWD, 0, 0, ino, 8, REG, path)
    yield E.FdIO(t(), pid, pid, 1, fd, L.FLUSH_CLOSE, n, 0, 1, 0, ino, 8, REG, 0, 1, 0)


def _write(t, pid, fd, path, n, ino):
    yield E.Open(t(), pid, pid, 1, fd, AT_FDCWD, WRONLY_CREAT_TRUNC, CREATED, ino, 8, REG, path)
    yield E.FdIO(t(), pid, pid, 1, fd, L.FLUSH_CLOSE, 0, n, 0, 1, ino, 8, REG, 0, 1, 0)


def _clock(start_ns: int):
    ts = iter(range(start_ns, start_ns + 10**9, 1_000_000))
    return lambda: next(ts)


def _new_run(store, run_id, kind, start_ns, label=None, argv=("tool", "in.csv")):
    start_us = (start_ns + OFFSET_NS) // 1000
    header = {"id": run_id, "kind": kind, "backend": "ebpf", "label": label, "argv": list(argv),
              "cwd": "/w", "host": "testhost", "user": "alice", "uid": 1000,
              "started": us_to_iso(start_us), "start_us": start_us}
    rid = store.new_run(run_id, header)
    return rid, start_us


def _end(store, rid, end_ns, exit_code=0):
    store.end_run(rid, {"ended": us_to_iso((end_ns + OFFSET_NS) // 1000), "exit_code": exit_code,
                        "signal": None, "lost_events": 0, "lost_by_reason": {}, "complete": True,
                        "gaps": {}})


CONTEXT = {
    "host": "testhost", "kernel": "6.1.0-test", "arch": "x86_64", "cpu": {"model": "Test CPU", "count": 2},
    "memory_bytes": 8 * 2**30, "os_release": {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
    "interpreters": [{"name": "python", "path": "/usr/bin/python3.11", "version": "3.11.2",
                      "implementation": "CPython"}],
    "libraries": [{"path": "/usr/lib/libm.so.6", "soname": "libm.so.6",
                   "build_id": "0123456789abcdef0123456789abcdef01234567", "package": "libc6"}],
    "packages": [{"name": "numpy", "version": "1.26.4", "ecosystem": "pypi", "hash": None},
                 {"name": "libc6", "version": "2.36-9+deb12u4", "ecosystem": "deb", "hash": None}],
    # FAKE: no GPU on this machine; this entry is written by hand in the shape
    # tracer/context/gpu.py produces, so the GPU part of the exports is covered.
    "gpus": [{"index": 0, "name": "FAKE GPU (test)", "uuid": "GPU-00000000-fake", "driver_version": "550.0",
              "cuda_version": "12.4", "memory_total_bytes": 16 * 2**30}],
    "env": {"LANG": "C.UTF-8"},
}


def command_run(store, run_id="20231114T221320-cmd001", start_ns=1_000_000_000, exit_code=0):
    """tool (A) reads in.csv and caf\\xe9.csv, writes mid.csv, makes and deletes junk.txt,
    and pipes into its child B; B reads mid.csv, writes out.csv.tmp, renames it to out.csv."""
    rid, start_us = _new_run(store, run_id, "command", start_ns)
    writer = RunWriter(store, rid, Clock(offset_ns=OFFSET_NS), base_us=start_us)
    tracker = Tracker(writer, CREATED)
    t = _clock(start_ns + 1_000_000)
    events = [E.Exec(t(), A, A, 1, A, 1000, "/nonexistent/bin/tool"),
              *_read(t, A, 3, "/w/in.csv", 100, 11), *_read(t, A, 4, CAFE, 5, 12),
              *_write(t, A, 5, "/w/mid.csv", 50, 13),
              *_write(t, A, 6, "/w/junk.txt", 1, 14), E.Unlink(t(), A, A, 1, AT_FDCWD, 0, "/w/junk.txt"),
              E.Fork(t(), A, A, 1, B, B, 1000, False),
              *_read(t, B, 5, "/w/mid.csv", 50, 13), *_write(t, B, 6, "/w/out.csv.tmp", 20, 15),
              E.Rename(t(), B, B, 1, AT_FDCWD, AT_FDCWD, 0, "/w/out.csv.tmp", "/w/out.csv"),
              E.Open(t(), B, B, 1, 7, AT_FDCWD, 0, 0, 16, 8, REG, "/usr/lib/libm.so.6"),
              E.Exit(t(), B, B, 1, 0, 7), E.Exit(t(), A, A, 1, exit_code << 8, 7)]
    for ev in events:
        tracker.handle(ev)
    tracker.finish_all(t())
    store.append(rid, S.PIPE, [777, [A], [B]])  # the body RunWriter.on_pipe writes
    store.append(rid, S.CONTEXT, CONTEXT)
    _end(store, rid, t(), exit_code)
    return rid


class _ByTime(CellPolicy):
    """A notebook kernel's actions belong to whichever cell window holds their time."""

    def __init__(self, windows):
        self.windows = windows

    def _at(self, ts_ns):
        return next((cid for cid, (a, b) in self.windows.items() if a <= ts_ns <= b), None)

    def child_cell(self, parent, tid, ts_ns):
        return self._at(ts_ns)

    def action_cell(self, p, tid, ts_ns):
        return self._at(ts_ns)


def notebook_run(store, run_id="20231114T221400-nb0001", start_ns=5_000_000_000):
    """A kernel K: cell-a reads data.csv and writes clean.csv via clean.csv.tmp;
    cell-b reads clean.csv, writes model.bin, and fails."""
    rid, start_us = _new_run(store, run_id, "notebook", start_ns, label="analysis",
                             argv=("provtrace", "notebook", "run", "analysis.ipynb"))
    s = start_ns
    windows = {"cell-a": (s + 10_000_000, s + 19_000_000), "cell-b": (s + 20_000_000, s + 29_000_000)}
    tracker = Tracker(RunWriter(store, rid, Clock(offset_ns=OFFSET_NS), base_us=start_us), CREATED,
                      cells=_ByTime(windows))
    tracker.handle(E.Exec(s + 1_000_000, K, K, 1, K, 1000, "/usr/bin/python3.11"))
    ta = _clock(s + 11_000_000)
    for ev in (*_read(ta, K, 3, "/nb/data.csv", 300, 21), *_write(ta, K, 4, "/nb/clean.csv.tmp", 200, 22),
               E.Rename(ta(), K, K, 1, AT_FDCWD, AT_FDCWD, 0, "/nb/clean.csv.tmp", "/nb/clean.csv")):
        tracker.handle(ev)
    tb = _clock(s + 21_000_000)
    for ev in (*_read(tb, K, 3, "/nb/clean.csv", 200, 22), *_write(tb, K, 4, "/nb/model.bin", 64, 23)):
        tracker.handle(ev)
    tracker.handle(E.Exit(s + 40_000_000, K, K, 1, 0, 7))
    tracker.finish_all(s + 41_000_000)
    for i, (cid, (a, b)) in enumerate(windows.items()):
        store.append(rid, S.CELL, {"id": cid, "index": i, "execution_count": i + 1,
                                   "code_sha256": f"{i:064x}", "status": "ok" if i == 0 else "error",
                                   "started": us_to_iso((a + OFFSET_NS) // 1000),
                                   "ended": us_to_iso((b + OFFSET_NS) // 1000)})
    store.append(rid, S.CONTEXT, {"host": "testhost", "kernel": "6.1.0-test"})
    _end(store, rid, s + 42_000_000, exit_code=1)
    return rid


def unfinished_run(store, run_id="20231114T221500-dead01", start_ns=9_000_000_000):
    """A run whose tracer died: a start record and one process, no end record."""
    rid, start_us = _new_run(store, run_id, "command", start_ns)
    tracker = Tracker(RunWriter(store, rid, Clock(offset_ns=OFFSET_NS), base_us=start_us), CREATED)
    t = _clock(start_ns + 1_000_000)
    for ev in (E.Exec(t(), A, A, 1, A, 1000, "/nonexistent/bin/tool"), *_read(t, A, 3, "/w/in.csv", 1, 11)):
        tracker.handle(ev)
    tracker.finish_all(t())
    store.flush()
    return rid


def load(store, rid):
    return Q.load_run(store, rid)


@pytest.fixture
def store(tmp_path):
    s = S.Store(str(tmp_path / "export.db"))
    yield s
    s.close()


# --- flows -----------------------------------------------------------------------------


def test_flows_of_command_run(store):
    doc = load(store, command_run(store))
    fl = flows_of(doc)
    assert set(fl.procs) == {ProcKey(A), ProcKey(B)}
    assert fl.parent == {ProcKey(B): ProcKey(A)}
    assert fl.pipes == [(ProcKey(A), ProcKey(B))]
    # libraries are not lineage: libm is left to the context
    assert "/usr/lib/libm.so.6" not in {a.path for a in fl.accesses}
    assert fl.b64 == {CAFE_ESCAPED: "L3cvY2Fm6S5jc3Y="}
    got = {(w.path, r.path, w.proc.pid) for w, r in fl.content}
    assert got == {
        ("/w/mid.csv", "/w/in.csv", A),
        ("/w/mid.csv", CAFE_ESCAPED, A),
        ("/w/out.csv.tmp", "/w/mid.csv", B),  # the name written; the rename to out.csv is a step of its own
        ("/w/out.csv.tmp", "/w/in.csv", B),  # through the pipe from A
        ("/w/out.csv.tmp", CAFE_ESCAPED, B),
        ("/w/junk.txt", "/w/in.csv", A),  # a temp file too: written after A read its inputs
        ("/w/junk.txt", CAFE_ESCAPED, A),
    }
    assert [(s, d) for _p, s, d, _t in fl.renames] == [("/w/out.csv.tmp", "/w/out.csv")]


def test_run_io_inputs_exclude_what_the_run_made(store):
    doc = load(store, command_run(store))
    inputs, outputs = run_io(flows_of(doc))
    assert inputs == [CAFE_ESCAPED, "/w/in.csv"]  # mid.csv was made by the run before B read it
    assert ("/w/out.csv", "/w/out.csv.tmp") in outputs and ("/w/mid.csv", "/w/mid.csv") in outputs
    # junk.txt was created and deleted in the run (temp): no output
    assert [o for o, _ in outputs] == ["/w/mid.csv", "/w/out.csv"]


def test_final_name_follows_chains_only_forward_in_time():
    p = ProcKey(1)
    renames = [(p, "/a", "/b", "2024-01-01T00:00:02.000000Z"), (p, "/b", "/c", "2024-01-01T00:00:03.000000Z")]
    assert final_name("/a", renames, "2024-01-01T00:00:01.000000Z") == "/c"
    # written after the rename away: that write stays under its own name
    assert final_name("/a", renames, "2024-01-01T00:00:05.000000Z") == "/a"


def test_pid_reuse_in_one_run_gets_two_keys():
    doc = {"processes": [
        {"pid": 7, "ppid": 1, "started": "2024-01-01T00:00:01.000000Z", "argv": ["first"]},
        {"pid": 7, "ppid": 1, "started": "2024-01-01T00:00:09.000000Z", "argv": ["second"]}],
        "files": [{"path": "/d/x", "pid": 7, "kind": "data", "access": ["write"],
                   "first": "2024-01-01T00:00:10.000000Z", "last": "2024-01-01T00:00:10.000000Z"}]}
    fl = flows_of(doc)
    assert [k.local for k in sorted(fl.procs, key=lambda k: k.nth)] == ["7", "7.2"]
    (w,) = fl.writes()
    assert w.proc == ProcKey(7, 2) and fl.procs[w.proc]["argv"] == ["second"]


def test_records_without_their_process_do_not_crash():
    doc = {"processes": [], "files": [{"path": "/d/x", "pid": 5, "kind": "data", "access": ["read"]}],
           "renames": [{"pid": 6, "from": "/d/y", "to": "/d/z", "time": None}],
           "pipes": [{"inode": 1, "writers": [5], "readers": [5, 6]}]}
    fl = flows_of(doc)
    assert fl.pipes == [(ProcKey(5), ProcKey(6))]  # a process piping to itself is no flow
    assert fl.content == [] and [(s, d) for _p, s, d, _t in fl.renames] == [("/d/y", "/d/z")]
