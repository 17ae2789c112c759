"""Real SQLite stores for the TUI tests, written the way the tracer writes them.

Decoded events go through the real Tracker and RunWriter into a real Store,
as tests/unit/test_store.py does; only the kernel is left out. Two command
runs form a lineage across runs (in.csv -> out.csv.tmp -> out.csv ->
report.txt); a notebook run has two cells, one of which failed.
"""

from __future__ import annotations

import os
import stat

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.clock import Clock
from provtrace.tracer.model import events as E
from provtrace.tracer.model.processes import AT_FDCWD, CellPolicy, Tracker
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.writer import RunWriter

CREATED = 0x100000
REG = stat.S_IFREG | 0o644
RUN_A, RUN_B, RUN_NB = "20240101T000000-aaaaaa", "20240101T010000-bbbbbb", "20240101T020000-cccccc"
CAFE = os.fsdecode(b"/data/caf\xe9.csv")  # not UTF-8: must show as /data/caf\xe9.csv
ODD = "/data/[red]odd\nname.txt"  # markup and a newline: must show literally, escaped
CONTEXT = {
    "host": "testhost", "kernel": "6.18.0-test", "arch": "x86_64",
    "os_release": {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
    "cpu": {"model": "Test CPU", "count": 2}, "memory_bytes": 8 * 1024**3,
    "interpreters": [{"name": "python", "path": "/usr/bin/python3.11", "version": "3.11.2"}],
    "libraries": [{"path": "/usr/lib/x86_64-linux-gnu/libm.so.6", "soname": "libm.so.6",
                   "build_id": "0123456789abcdef0123", "package": "libc6"}],
    "packages": [{"name": "numpy", "version": "1.26.4", "ecosystem": "pypi", "hash": None},
                 {"name": "libc6", "version": "2.36-9", "ecosystem": "deb", "hash": None}],
    "gpus": [], "env": {"PATH": "/usr/bin"},
}


def _header(run_id: str, kind: str, label: str, argv: list[str]) -> dict:
    return {"id": run_id, "kind": kind, "backend": "ebpf", "label": label, "argv": argv,
            "cwd": "/data", "host": "testhost", "user": "u", "uid": 1000,
            "started": "2024-01-01T00:00:00.000000Z"}


def _end(exit_code: int = 0) -> dict:
    return {"ended": "2024-01-01T00:00:05.000000Z", "exit_code": exit_code, "signal": None,
            "lost_events": 0, "lost_by_reason": {}, "complete": True, "gaps": {}}


class _Clock:
    def __init__(self, start_ns: int) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        self.now += 1_000_000
        return self.now


def _open(t, pid, fd, path, *, ino, write=False, created=False):
    flags = 0o1101 if write else 0
    return E.Open(t(), pid, pid, 1, fd, AT_FDCWD, flags, CREATED if created else 0, ino, 8, REG, path)


def _close(t, pid, fd, *, ino, read=0, written=0):
    return E.FdIO(t(), pid, pid, 1, fd, L.FLUSH_CLOSE, read, written, int(read > 0), int(written > 0),
                  ino, 8, REG, 0, 1, 0)


def _events_a(t):
    """python3 job.py reads in.csv and café.csv; its child writes out.csv via a temp name."""
    p, c = 4_100_000, 4_100_001
    yield E.Argv(t(), p, p, 1, ("python3", "job.py"), False)
    yield E.Exec(t(), p, p, 1, p, 1000, "/usr/bin/python3")
    yield _open(t, p, 3, "/data/in.csv", ino=11)
    yield _close(t, p, 3, ino=11, read=300)
    yield _open(t, p, 4, CAFE, ino=12)
    yield _close(t, p, 4, ino=12, read=5)
    yield E.Fork(t(), p, p, 1, c, c, 1000, False)
    yield _open(t, c, 5, "/data/out.csv.tmp", ino=13, write=True, created=True)
    yield _close(t, c, 5, ino=13, written=900)
    yield E.Rename(t(), c, c, 1, AT_FDCWD, AT_FDCWD, 0, "/data/out.csv.tmp", "/data/out.csv")
    yield _open(t, c, 6, "/usr/lib/x86_64-linux-gnu/libm.so.6", ino=14)
    yield E.Exit(t(), c, c, 1, 0, 7)
    yield E.Exit(t(), p, p, 1, 0, 7)


def _events_b(t):
    """report.sh reads out.csv and writes report.txt and a file with an odd name."""
    p = 4_200_000
    yield E.Argv(t(), p, p, 1, ("sh", "report.sh"), False)
    yield E.Exec(t(), p, p, 1, p, 1000, "/usr/bin/sh")
    yield _open(t, p, 3, "/data/out.csv", ino=13)
    yield _close(t, p, 3, ino=13, read=900)
    yield _open(t, p, 4, "/data/report.txt", ino=21, write=True, created=True)
    yield _close(t, p, 4, ino=21, written=40)
    yield _open(t, p, 5, ODD, ino=22, write=True, created=True)
    yield _close(t, p, 5, ino=22, written=1)
    yield E.Exit(t(), p, p, 1, 0, 7)


class _ByTime(CellPolicy):
    """A kernel's actions belong to the cell whose window holds them."""

    def __init__(self, windows: list[tuple[int, int, str]]) -> None:
        self.windows = windows

    def _at(self, ts_ns: int) -> str | None:
        return next((cell for lo, hi, cell in self.windows if lo <= ts_ns <= hi), None)

    def child_cell(self, parent, tid, ts_ns):
        return self._at(ts_ns)

    def action_cell(self, p, tid, ts_ns):
        return self._at(ts_ns)


NB_READS = ("/nb/train.csv",)


def _events_nb(reads):
    """A kernel: cell c1 reads each of reads (train.csv) and writes model.pkl; cell c2 runs a
    child that fails."""
    def events(t):
        k, c = 4_300_000, 4_300_001
        yield E.Argv(t(), k, k, 1, ("python3", "-m", "ipykernel_launcher"), False)
        yield E.Exec(t(), k, k, 1, k, 1000, "/usr/bin/python3")
        for i, path in enumerate(reads):
            yield _open(t, k, 3, path, ino=31 + 100 * i)
            yield _close(t, k, 3, ino=31 + 100 * i, read=1000)
        yield _open(t, k, 4, "/nb/model.pkl", ino=32, write=True, created=True)
        yield _close(t, k, 4, ino=32, written=64)
        yield E.Fork(t(), k, k, 1, c, c, 1000, False)
        yield E.Argv(t(), c, c, 1, ("false",), False)
        yield E.Exec(t(), c, c, 1, c, 1000, "/usr/bin/false")
        yield E.Exit(t(), c, c, 1, 1 << 8, 7)
        yield E.Exit(t(), k, k, 1, 0, 7)
    return events


def _write(store: S.Store, run_id: str, header: dict, events, t: _Clock, cells: CellPolicy | None = None,
           cell_records: list[dict] = ()) -> None:
    rid = store.new_run(run_id, header)
    tracker = Tracker(RunWriter(store, rid, Clock(offset_ns=0)), CREATED, **({"cells": cells} if cells else {}))
    for ev in events(t):
        tracker.handle(ev)
    tracker.finish_all(t())
    for cell in cell_records:
        store.append(rid, S.CELL, cell)
    store.append(rid, S.CONTEXT, CONTEXT)
    store.end_run(rid, _end())


def build_store(path: str, nb_reads: tuple[str, ...] = NB_READS) -> str:
    """Writes the three runs into a new store at path; returns path. The notebook's
    cell c1 reads the files nb_reads."""
    store = S.Store(path)
    try:
        t = _Clock(1_000_000_000)
        _write(store, RUN_A, _header(RUN_A, "command", "prep", ["python3", "job.py"]), _events_a, t)
        _write(store, RUN_B, _header(RUN_B, "command", "report", ["sh", "report.sh"]), _events_b, t)
        base = t.now
        # cell c1: the kernel's reads and writes (events 3 to 6 with one read); c2: the fork onwards
        n = 2 * len(nb_reads)
        windows = [(base + 3_000_000, base + (n + 4) * 1_000_000, "c1"),
                   (base + (n + 5) * 1_000_000, base + (n + 9) * 1_000_000, "c2")]
        cells = [{"id": "c1", "index": 0, "execution_count": 1, "code_sha256": "aa" * 32,
                  "started": "2024-01-01T02:00:01.000000Z", "ended": "2024-01-01T02:00:02.000000Z",
                  "status": "ok"},
                 {"id": "c2", "index": 1, "execution_count": 2, "code_sha256": "bb" * 32,
                  "started": "2024-01-01T02:00:03.000000Z", "ended": "2024-01-01T02:00:04.000000Z",
                  "status": "error"}]
        _write(store, RUN_NB, _header(RUN_NB, "notebook", "analysis.ipynb", ["analysis.ipynb"]),
               _events_nb(nb_reads), t, _ByTime(windows), cells)
    finally:
        store.close()
    return path


def empty_store(path: str) -> str:
    S.Store(path).close()
    return path
