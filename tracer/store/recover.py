"""Runs left open: closed, marked incomplete, once nobody can finish them.

A run is open until its end record is written. Its writer (a `provtrace run`,
a notebook run, the daemon) may die first: kill -9, a crash, a power cut,
or a disk that stayed full until the end. Every run's start record names
its writer (pid, start time, boot), so an open run whose writer is gone is
known to be abandoned: close_abandoned() writes its end, with the time of
its last record (or its start), no exit code, complete false, and the reason.
A run whose writer still lives is left alone: it may be tracing right now.
"""

from __future__ import annotations

import json
import logging
import os
import time

from ..clock import us_to_iso as iso
from . import sqlite as S

log = logging.getLogger(__name__)

END_REASON = ("its writer (pid {pid}) ended without writing the run's end "
              "(killed, crashed, or the store was full); closed at recovery")
# released (store/finisher.py): the tree had exited, the exit status was known
RELEASED_REASON = ("its writer (pid {pid}) ended after the command exited but before its context, "
                   "fingerprints and end were written; closed at recovery")


def writer_stamp() -> dict:
    """Who writes a run: this process (pid, start time since boot, pid namespace, boot id)."""
    return {"pid": os.getpid(), "start": _start_ticks(os.getpid()), "pidns": _pid_ns(),
            "boot": _boot_id()}


def writer_alive(stamp: dict | None) -> bool:
    """The process a stamp names may still run: same boot, and either another pid
    namespace (a container sharing the store: its pids mean nothing here, so
    it is not judged) or the same pid with the same start time, not a zombie."""
    if not stamp or stamp.get("boot") != _boot_id():
        return False
    if stamp.get("pidns") != _pid_ns():
        return True
    pid = stamp.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    ticks = _start_ticks(pid)
    return ticks is not None and stamp.get("start") in (None, ticks)


def close_abandoned(store: S.Store) -> list[str]:
    """Ends every open run whose writer is gone; returns their ids.
    StoreWriteError when an end cannot be written (the rest wait for the next time)."""
    closed = []
    rows = store.db.execute("SELECT rid, id FROM runs WHERE ended IS NULL ORDER BY rid").fetchall()
    for rid, run_id in rows:
        header = _header(store, rid)
        stamp = header.get("writer")
        if writer_alive(stamp):
            continue
        last_us = _last_time_us(store, rid, header)
        pid = stamp.get("pid") if stamp else "unknown"
        released = _released(store, rid)
        end = {"ended": iso(last_us or time.time_ns() // 1000), "exit_code": None,
               "signal": None, "lost_events": 0, "lost_by_reason": {}, "complete": False,
               "gaps": {"run_not_finished": 1}, "end_reason": END_REASON.format(pid=pid),
               "processes": None, "files": None}
        if released:  # the exit status is known; only the completion is missing
            end.update({"ended": released.get("released") or end["ended"],
                        "exit_code": released.get("exit_code"), "signal": released.get("signal"),
                        "end_reason": RELEASED_REASON.format(pid=pid)})
        store.end_run(rid, end)
        log.info("event=run-closed-at-recovery run=%s writer_pid=%s", run_id, pid)
        closed.append(run_id)
    return closed


def _header(store: S.Store, rid: int) -> dict:
    """The run's start record (its writer's stamp among it)."""
    row = store.db.execute("SELECT body FROM records WHERE rid=? AND kind=? ORDER BY seq LIMIT 1",
                           (rid, S.RUN_START)).fetchone()
    return json.loads(row[0]) if row else {}


def _released(store: S.Store, rid: int) -> dict | None:
    """The run's RUN_RELEASED record (store/finisher.py), if it has one."""
    row = store.db.execute("SELECT body FROM records WHERE rid=? AND kind=? ORDER BY seq LIMIT 1",
                           (rid, S.RUN_RELEASED)).fetchone()
    return json.loads(row[0]) if row else None


def _last_time_us(store: S.Store, rid: int, header: dict) -> int | None:
    """The latest time the run's records name (µs since the epoch), its start at least."""
    base = header.get("start_us") or 0
    last = base or None
    for _seq, _rid, kind, _p1, _p2, body in store.records(rid, (S.PROCESS, S.FILE)):
        b = json.loads(body)
        if kind == S.PROCESS:
            times = [b.get("started_us"), b.get("ended_us")]
        else:  # FILE: [pid, bits, read, written, first, last, cell, kind], times relative to the start
            times = [base + b[5]] if isinstance(b, list) and len(b) > 5 and b[5] is not None else []
        for t in times:
            if isinstance(t, int) and (last is None or t > last):
                last = t
    return last


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat; None when pid is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _pid_ns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None
