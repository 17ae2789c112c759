"""A process's resource use from the kernel's accounting in /proc.

The ptrace backend reads it at each PTRACE_EVENT_EXIT stop (the process is
still whole there: do_exit stops before it tears anything down); notebook
cells read the kernel process's figures at a cell's start and end and keep
the difference. Nothing here samples in a loop: each call is one read of
three small files.

/proc/PID/stat (utime, stime in clock ticks) and /proc/PID/io (rchar,
wchar) cover the whole thread group; VmHWM in /proc/PID/status is the peak
RSS of the current image (the eBPF probe reads signal->maxrss, which also
remembers images replaced by exec).
"""

from __future__ import annotations

import logging
import os

from ..model.events import Usage

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
_NS_PER_TICK = 1_000_000_000 // CLK_TCK


def proc_usage(pid: int, proc: str = "/proc") -> Usage | None:
    """The figures of pid now, or None when it is gone or not readable."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"{proc}/{pid}/status", "rb") as f:
            status = f.read()
        io = _io(pid, proc)
    except OSError as e:
        log.debug("proc usage not read pid=%d err=%s", pid, e)
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return Usage(utime * _NS_PER_TICK, stime * _NS_PER_TICK, _hwm_bytes(status),
                 io.get(b"rchar", 0), io.get(b"wchar", 0))


def _io(pid: int, proc: str) -> dict[bytes, int]:
    """/proc/PID/io; {} where the kernel has no task io accounting."""
    try:
        with open(f"{proc}/{pid}/io", "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    return {k: int(v) for k, _, v in (ln.partition(b": ") for ln in lines) if v}


def _hwm_bytes(status: bytes) -> int:
    for line in status.splitlines():
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0  # a kernel thread, or an image with no mm left


def usage_delta(start: Usage | None, end: Usage | None) -> Usage | None:
    """What happened between two readings of one process (a cell's window).

    Peak RSS is not a counter: the window reports the peak as seen at its end."""
    if start is None or end is None:
        return None
    return Usage(max(0, end.utime_ns - start.utime_ns), max(0, end.stime_ns - start.stime_ns),
                 end.maxrss_bytes, max(0, end.rchar_bytes - start.rchar_bytes),
                 max(0, end.wchar_bytes - start.wchar_bytes))
