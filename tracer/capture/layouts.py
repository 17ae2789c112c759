"""Userspace mirrors of probes/events.h, declared once each.

tests/unit/test_layouts.py compiles events.h with gcc and checks every size
and member offset here against the C compiler's. Decoding uses struct
formats derived from these ctypes layouts (faster than from_buffer_copy and
tolerant of records trimmed to their string length).
"""

from __future__ import annotations

import ctypes as C
import struct
from dataclasses import dataclass

# The values of event fields belong to the model; the wire carries the same numbers.
from ..model.events import (  # noqa: F401  (re-exported: decode, ptrace, fdagg, tests)
    FDIO_FOLDED, FDIO_MAP_SHARED, FDIO_SEEN_OPEN, FDOP_CLOEXEC_RANGE, FDOP_CLOSE_RANGE,
    FDOP_DUP, FDOP_SETFD, FLUSH_CLOSE, FLUSH_EXEC, FLUSH_EXIT, FLUSH_FOLDED, FLUSH_REPLACED,
    FLUSH_SWEEP,
    LINK_HARD, LINK_SYMBOLIC, NET_ACCEPT, NET_BIND, NET_CONNECT, PT_FLUSH_FDS,
)

PT_PATH_MAX = 4096
PT_ARGV_MAX = 4096
PT_SOCKADDR_MAX = 128

EV_FORK, EV_EXEC, EV_EXEC_ARGV, EV_EXIT, EV_OPEN, EV_FDIO = 1, 2, 3, 4, 5, 6
EV_FDOP, EV_CHDIR, EV_RENAME, EV_UNLINK, EV_TRUNCATE, EV_NET = 7, 8, 9, 10, 11, 12
EV_IOURING = 23  # issue 13, reads (EV_OPEN with fd < 0 is a failed open)

# links and directories
EV_LINK, EV_MKDIR, EV_RESOLVED = 20, 21, 22
PT_RESOLVE_DEPTH, PT_NAME_MAX = 64, 256

EXEC_PRIVILEGED = 0x1
LOST_REASONS = ("ringbuf", "agg_map", "compat_syscalls", "traced_map")


class EventHdr(C.Structure):
    _fields_ = [("type", C.c_uint32), ("pid", C.c_uint32), ("tid", C.c_uint32),
                ("tag", C.c_uint32), ("ts_ns", C.c_uint64)]


class ForkEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("child_pid", C.c_uint32), ("child_tid", C.c_uint32),
                ("uid", C.c_uint32), ("is_thread", C.c_uint32)]


class ExecEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("old_tid", C.c_uint32), ("uid", C.c_uint32),
                ("filename_len", C.c_uint32), ("flags", C.c_uint32),
                ("filename", C.c_char * PT_PATH_MAX)]


class ArgvEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("_reserved", C.c_uint32), ("len", C.c_uint32),
                ("truncated", C.c_uint32), ("_pad", C.c_uint32),
                ("args", C.c_char * PT_ARGV_MAX)]


class ExitEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("exit_code", C.c_int32), ("max_fd", C.c_uint32),
                ("utime_ns", C.c_uint64), ("stime_ns", C.c_uint64), ("maxrss_pages", C.c_uint64),
                ("rchar", C.c_uint64), ("wchar", C.c_uint64)]


class OpenEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("fd", C.c_int32), ("dirfd", C.c_int32),
                ("flags", C.c_uint32), ("fmode", C.c_uint32), ("ino", C.c_uint64),
                ("dev", C.c_uint32), ("imode", C.c_uint32), ("path_len", C.c_uint32),
                ("_pad", C.c_uint32), ("path", C.c_char * PT_PATH_MAX)]


class FdioEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("fd", C.c_int32), ("reason", C.c_uint32),
                ("bytes_read", C.c_uint64), ("bytes_written", C.c_uint64),
                ("nreads", C.c_uint32), ("nwrites", C.c_uint32), ("ino", C.c_uint64),
                ("dev", C.c_uint32), ("imode", C.c_uint32), ("map_prot", C.c_uint32),
                ("flags", C.c_uint32), ("first_ts_ns", C.c_uint64)]


class FdopEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("op", C.c_uint32), ("oldfd", C.c_int32),
                ("newfd", C.c_int32), ("cloexec", C.c_uint32)]


class ChdirEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("fd", C.c_int32), ("path_len", C.c_uint32),
                ("path", C.c_char * PT_PATH_MAX)]


class RenameEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("olddirfd", C.c_int32), ("newdirfd", C.c_int32),
                ("flags", C.c_uint32), ("old_len", C.c_uint32), ("new_len", C.c_uint32),
                ("_pad", C.c_uint32), ("oldpath", C.c_char * PT_PATH_MAX),
                ("newpath", C.c_char * PT_PATH_MAX)]


class UnlinkEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("dirfd", C.c_int32), ("flags", C.c_uint32),
                ("path_len", C.c_uint32), ("_pad", C.c_uint32), ("path", C.c_char * PT_PATH_MAX)]


class TruncateEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("fd", C.c_int32), ("path_len", C.c_uint32),
                ("length", C.c_int64), ("path", C.c_char * PT_PATH_MAX)]


class NetEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("op", C.c_uint32), ("fd", C.c_int32), ("ret", C.c_int32),
                ("addr_len", C.c_uint32), ("addr", C.c_uint8 * PT_SOCKADDR_MAX)]


class IouringEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("fd", C.c_int32), ("flags", C.c_uint32)]
class LinkEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("op", C.c_uint32), ("olddirfd", C.c_int32),
                ("newdirfd", C.c_int32), ("flags", C.c_uint32), ("old_len", C.c_uint32),
                ("new_len", C.c_uint32), ("oldpath", C.c_char * PT_PATH_MAX),
                ("newpath", C.c_char * PT_PATH_MAX)]


class MkdirEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("dirfd", C.c_int32), ("mode", C.c_uint32),
                ("path_len", C.c_uint32), ("_pad", C.c_uint32), ("path", C.c_char * PT_PATH_MAX)]


class ResolvedEvent(C.Structure):
    _fields_ = [("h", EventHdr), ("fd", C.c_int32), ("len", C.c_uint32),
                ("truncated", C.c_uint32), ("_pad", C.c_uint32),
                ("names", C.c_char * (PT_PATH_MAX + PT_NAME_MAX))]


# C struct name in events.h -> ctypes mirror (checked by the layout test).
C_STRUCTS: dict[str, type[C.Structure]] = {
    "event_hdr": EventHdr, "fork_event": ForkEvent, "exec_event": ExecEvent,
    "argv_event": ArgvEvent, "exit_event": ExitEvent, "open_event": OpenEvent,
    "fdio_event": FdioEvent, "fdop_event": FdopEvent, "chdir_event": ChdirEvent,
    "rename_event": RenameEvent, "unlink_event": UnlinkEvent,
    "truncate_event": TruncateEvent, "net_event": NetEvent,
    "iouring_event": IouringEvent,
    "link_event": LinkEvent, "mkdir_event": MkdirEvent, "resolved_event": ResolvedEvent,
}

_CODES = {C.c_uint32: "I", C.c_int32: "i", C.c_uint64: "Q", C.c_int64: "q"}


@dataclass(frozen=True)
class Prefix:
    """The fixed-width fields of a layout as one struct.Struct, strings excluded."""

    fmt: struct.Struct
    names: tuple[str, ...]
    tail_offsets: dict[str, int]


def prefix_of(cls: type[C.Structure]) -> Prefix:
    """Flatten the scalar fields (the header included) into a struct format."""
    parts: list[str] = []
    names: list[str] = []
    tails: dict[str, int] = {}
    pos = 0

    def walk(layout: type[C.Structure], base: int, prefix: str) -> None:
        nonlocal pos
        for name, ctype in layout._fields_:
            off = base + getattr(layout, name).offset
            if isinstance(ctype, type) and issubclass(ctype, C.Structure):
                walk(ctype, off, "")
                continue
            if ctype not in _CODES:  # char/byte arrays: the string tail
                tails[name] = off
                continue
            if off > pos:
                parts.append(f"{off - pos}x")
            parts.append(_CODES[ctype])
            names.append(prefix + name)
            pos = off + C.sizeof(ctype)

    walk(cls, 0, "")
    return Prefix(struct.Struct("<" + "".join(parts)), tuple(names), tails)
