"""Per-(process, fd) I/O aggregation in userspace, for the ptrace backend.

The same de-duplication the probes do in the kernel (probes/common.h, `agg`):
reads, writes and mmaps on one (tgid, fd) add up in one entry, which leaves as
one FdIO event when the fd is closed or replaced, or the process execs or
exits. The events are the ones the eBPF path decodes, so the Tracker cannot
tell the backends apart.

Inode identity comes from /proc/PID/fd/N when an entry is made (the tracee is
stopped then, so the fd is still the one the syscall used).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..model import events as E
from . import layouts as L


@dataclass(slots=True)
class Agg:
    ino: int
    dev: int
    imode: int
    first_ts_ns: int
    flags: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    nreads: int = 0
    nwrites: int = 0
    map_prot: int = 0


def fd_identity(tid: int, fd: int) -> tuple[int, int, int]:
    """(ino, dev in the kernel's encoding, st_mode) of a tracee's fd; zeros when gone."""
    try:
        st = os.stat(f"/proc/{tid}/fd/{fd}")
    except OSError:
        return 0, 0, 0
    return st.st_ino, (os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_mode


class FdAggregator:
    """Open aggregation entries, keyed (tgid, fd); flushes go to `emit`."""

    def __init__(self, emit, tag: int) -> None:
        self._emit = emit
        self._tag = tag
        self._agg: dict[tuple[int, int], Agg] = {}
        self._fds_of: dict[int, set[int]] = {}  # tgid -> fds with an entry

    def __len__(self) -> int:
        return len(self._agg)

    def opened(self, tgid: int, fd: int, ino: int, dev: int, imode: int, ts_ns: int) -> None:
        """A fresh entry for an fd an open we saw just returned."""
        self._put(tgid, fd, Agg(ino, dev, imode, ts_ns, L.FDIO_SEEN_OPEN))

    def get(self, tgid: int, tid: int, fd: int, ts_ns: int) -> Agg:
        a = self._agg.get((tgid, fd))
        if a is None:
            ino, dev, imode = fd_identity(tid, fd)
            a = Agg(ino, dev, imode, ts_ns)
            self._put(tgid, fd, a)
        return a

    def io(self, tgid: int, tid: int, fd: int, nbytes: int, write: bool, ts_ns: int) -> None:
        a = self.get(tgid, tid, fd, ts_ns)
        if write:
            a.bytes_written += nbytes
            a.nwrites += 1
        else:
            a.bytes_read += nbytes
            a.nreads += 1

    def flush(self, tgid: int, tid: int, fd: int, reason: int, ts_ns: int) -> None:
        a = self._agg.pop((tgid, fd), None)
        if a is None:
            return
        self._fds_of[tgid].discard(fd)
        self._emit(E.FdIO(ts_ns, tgid, tid, self._tag, fd, reason, a.bytes_read, a.bytes_written,
                          a.nreads, a.nwrites, a.ino, a.dev, a.imode, a.map_prot, a.flags,
                          a.first_ts_ns))

    def flush_range(self, tgid: int, tid: int, first: int, last: int, reason: int, ts_ns: int) -> None:
        for fd in sorted(fd for fd in self._fds_of.get(tgid, ()) if first <= fd <= last):
            self.flush(tgid, tid, fd, reason, ts_ns)

    def flush_process(self, tgid: int, tid: int, reason: int, ts_ns: int) -> None:
        for fd in sorted(self._fds_of.get(tgid, ())):  # sorted() copies: flush edits the set
            self.flush(tgid, tid, fd, reason, ts_ns)
        self._fds_of.pop(tgid, None)

    def flush_all(self, reason: int, ts_ns: int) -> None:
        for tgid in list(self._fds_of):
            self.flush_process(tgid, tgid, reason, ts_ns)

    def _put(self, tgid: int, fd: int, a: Agg) -> None:
        self._agg[(tgid, fd)] = a
        self._fds_of.setdefault(tgid, set()).add(fd)
