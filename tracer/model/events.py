"""Decoded events: one frozen dataclass per kernel record type.

Paths are str decoded with os.fsdecode (surrogateescape): a name that is not
UTF-8 round-trips to its exact bytes with os.fsencode, and the JSON layer
writes such names as an escaped `path` plus `path_b64`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .status import exit_code  # noqa: F401 - the model's wait-status function, kept light in status.py

# Values of event fields. They are the model's own, and the probes send the
# same numbers: capture/layouts.py takes them from here (capture imports the
# model, never the reverse), and tests/unit/test_layouts.py checks each one
# against probes/events.h. Plain ints, not IntEnums: the Tracker compares them
# per event, and an IntEnum member costs ~4x a module constant there (3.11).
PT_FLUSH_FDS = 64  # the kernel flushes fds below this at exec/exit; Exit.max_fd above it: a sweep
FLUSH_CLOSE, FLUSH_REPLACED, FLUSH_EXIT, FLUSH_EXEC, FLUSH_SWEEP = 1, 2, 3, 4, 5  # FdIO.reason
FLUSH_FOLDED = 6  # FdIO.reason: repeated opens folded in the kernel; FdIO.fd is how many
FDIO_SEEN_OPEN, FDIO_MAP_SHARED = 0x1, 0x2  # FdIO.flags
FDIO_FOLDED = 0x4  # FdIO.flags: I/O through opens that sent no Open; the file is (dev, ino)
FDOP_DUP, FDOP_SETFD, FDOP_CLOSE_RANGE, FDOP_CLOEXEC_RANGE = 1, 2, 3, 4  # FdOp.op
NET_CONNECT, NET_ACCEPT, NET_BIND = 1, 2, 3  # Net.op
LINK_HARD, LINK_SYMBOLIC = 1, 2  # Link.op


@dataclass(frozen=True, slots=True)
class Event:
    ts_ns: int
    pid: int
    tid: int
    tag: int


@dataclass(frozen=True, slots=True)
class Fork(Event):
    child_pid: int
    child_tid: int
    uid: int
    is_thread: bool


@dataclass(frozen=True, slots=True)
class Exec(Event):
    old_tid: int
    uid: int
    filename: str
    privileged: bool = False  # gained privileges (setuid/setgid/caps): not followed from here


@dataclass(frozen=True, slots=True)
class Argv(Event):
    argv: tuple[str, ...]
    truncated: bool


@dataclass(frozen=True, slots=True)
class Usage:
    """A whole process's resource use as the kernel accounted it, at exit."""

    utime_ns: int
    stime_ns: int
    maxrss_bytes: int
    rchar_bytes: int  # bytes read by read-type syscalls on any fd (task io accounting)
    wchar_bytes: int


@dataclass(frozen=True, slots=True)
class Exit(Event):
    status: int  # wait status: (code << 8) | signal
    max_fd: int  # fds above PT_FLUSH_FDS need a userspace sweep
    usage: Usage | None = None  # None: the backend could not read it


@dataclass(frozen=True, slots=True)
class Open(Event):
    fd: int  # < 0: the open failed with errno -fd (ENOENT, EACCES): an attempted access
    dirfd: int
    flags: int
    fmode: int
    ino: int
    dev: int
    imode: int
    path: str


@dataclass(frozen=True, slots=True)
class FdIO(Event):
    fd: int
    reason: int
    bytes_read: int
    bytes_written: int
    nreads: int
    nwrites: int
    ino: int
    dev: int
    imode: int
    map_prot: int
    flags: int
    first_ts_ns: int


@dataclass(frozen=True, slots=True)
class FdOp(Event):
    op: int
    oldfd: int
    newfd: int
    cloexec: bool


@dataclass(frozen=True, slots=True)
class Chdir(Event):
    fd: int
    path: str | None


@dataclass(frozen=True, slots=True)
class Rename(Event):
    olddirfd: int
    newdirfd: int
    flags: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Unlink(Event):
    dirfd: int
    flags: int
    path: str


@dataclass(frozen=True, slots=True)
class Truncate(Event):
    fd: int
    length: int
    path: str | None


@dataclass(frozen=True, slots=True)
class Net(Event):
    op: int
    fd: int
    ret: int
    addr: bytes


@dataclass(frozen=True, slots=True)
class IoUring(Event):
    """The process set up an io_uring: what it submits there is not traced."""

    fd: int
    flags: int
# ---- links and directories ----

@dataclass(frozen=True, slots=True)
class Link(Event):
    """link/linkat (hard) or symlink/symlinkat: `old` is the existing name, or
    the symlink's target as written; `new` the name made."""

    op: int  # LINK_HARD | LINK_SYMBOLIC
    olddirfd: int
    newdirfd: int
    flags: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Mkdir(Event):
    dirfd: int
    mode: int
    path: str


@dataclass(frozen=True, slots=True)
class Resolved(Event):
    """The path the next open of this thread on fd really reached (it went
    through a symlink); None when the walk was cut (too deep or too long)."""

    fd: int
    path: str | None
