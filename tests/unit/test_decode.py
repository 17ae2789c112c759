"""Decoder: ring-buffer bytes -> event dataclasses (model/events.py).

Records are built from the ctypes mirrors and, for string tails, trimmed to
offsetof(tail) + len the way the probes emit them.
"""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.capture.decode import PAGE_SIZE, Decoder
from provtrace.tracer.model import events as E

PID, TID, TAG, TS = 4_000_001, 4_000_002, 7, 123_456_789_000


def _rec(cls, etype, **fields):
    obj = cls()
    obj.h.type, obj.h.pid, obj.h.tid, obj.h.tag, obj.h.ts_ns = etype, PID, TID, TAG, TS
    for k, v in fields.items():
        setattr(obj, k, v)
    return obj


def _put(obj, field: str, raw: bytes) -> None:
    """Raw bytes into a char array (assignment would stop at the first NUL)."""
    ctypes.memmove(ctypes.addressof(obj) + getattr(type(obj), field).offset, raw, len(raw))


def _trim(obj, tail: str, length: int) -> bytes:
    return bytes(obj)[: getattr(type(obj), tail).offset + length]


def _with_path(cls, etype, tail, len_field, raw: bytes, **fields) -> bytes:
    obj = _rec(cls, etype, **{len_field: len(raw) + 1}, **fields)
    _put(obj, tail, raw)
    return _trim(obj, tail, len(raw) + 1)


def _header_ok(ev):
    assert (ev.ts_ns, ev.pid, ev.tid, ev.tag) == (TS, PID, TID, TAG)


def test_fork():
    d = Decoder()
    ev = d.decode(bytes(_rec(L.ForkEvent, L.EV_FORK, child_pid=11, child_tid=12, uid=1000, is_thread=1)))
    assert ev == E.Fork(TS, PID, TID, TAG, 11, 12, 1000, True)
    assert d.bad == 0


def test_open_trimmed_to_path_length():
    buf = _with_path(L.OpenEvent, L.EV_OPEN, "path", "path_len", b"/data/in.csv",
                     fd=3, dirfd=-100, flags=0o2000001, fmode=0x100000, ino=(1 << 40) + 5,
                     dev=(8 << 20) | 1, imode=0o100644)
    assert len(buf) == L.OpenEvent.path.offset + len(b"/data/in.csv") + 1
    ev = Decoder().decode(buf)
    assert isinstance(ev, E.Open)
    _header_ok(ev)
    assert (ev.fd, ev.dirfd, ev.flags, ev.fmode, ev.ino, ev.dev, ev.imode, ev.path) == (
        3, -100, 0o2000001, 0x100000, (1 << 40) + 5, (8 << 20) | 1, 0o100644, "/data/in.csv")


def test_non_utf8_path_round_trips():
    raw = b"/home/u/caf\xe9.csv"
    ev = Decoder().decode(_with_path(L.OpenEvent, L.EV_OPEN, "path", "path_len", raw, fd=4, dirfd=-100))
    assert isinstance(ev.path, str)
    assert os.fsencode(ev.path) == raw


def test_path_len_zero_and_len_beyond_record_are_tolerated():
    d = Decoder()
    obj = _rec(L.OpenEvent, L.EV_OPEN, fd=3, path_len=0)
    assert d.decode(_trim(obj, "path", 0)).path == ""
    # a length claiming more than was emitted: the string ends with the record
    obj = _rec(L.OpenEvent, L.EV_OPEN, fd=3, path_len=200)
    _put(obj, "path", b"/short")
    assert d.decode(_trim(obj, "path", 7)).path == "/short"
    assert d.bad == 0


def test_exec_filename():
    ev = Decoder().decode(_with_path(L.ExecEvent, L.EV_EXEC, "filename", "filename_len",
                                     b"./run.sh", old_tid=99, uid=0))
    assert ev == E.Exec(TS, PID, TID, TAG, 99, 0, "./run.sh")


def test_argv_with_several_args():
    args = [b"python3", b"-c", b"", b"print('hi there')", b"caf\xe9"]
    blob = b"\0".join(args) + b"\0"
    obj = _rec(L.ArgvEvent, L.EV_EXEC_ARGV, len=len(blob), truncated=0)
    _put(obj, "args", blob)
    ev = Decoder().decode(_trim(obj, "args", len(blob)))
    assert isinstance(ev, E.Argv)
    assert [os.fsencode(a) for a in ev.argv] == args
    assert ev.truncated is False


def test_argv_cut_keeps_the_partial_last_argument():
    blob = b"a\0\0bc"  # cut inside the third argument: no NUL after it
    obj = _rec(L.ArgvEvent, L.EV_EXEC_ARGV, len=len(blob), truncated=1)
    _put(obj, "args", blob)
    ev = Decoder().decode(_trim(obj, "args", len(blob)))
    assert ev.argv == ("a", "", "bc") and ev.truncated is True


def test_argv_empty_region_is_an_empty_argv():
    obj = _rec(L.ArgvEvent, L.EV_EXEC_ARGV, len=0, truncated=0)
    ev = Decoder().decode(_trim(obj, "args", 0))
    assert ev.argv == () and ev.truncated is False


def test_exit_signed_status():
    ev = Decoder().decode(bytes(_rec(L.ExitEvent, L.EV_EXIT, exit_code=-1, max_fd=70)))
    assert ev == E.Exit(TS, PID, TID, TAG, -1, 70, E.Usage(0, 0, 0, 0, 0))


def test_exit_usage_counters_and_pages():
    ev = Decoder().decode(bytes(_rec(L.ExitEvent, L.EV_EXIT, utime_ns=3_000_000, stime_ns=5,
                                     maxrss_pages=2560, rchar=7, wchar=1 << 40)))
    assert ev.usage == E.Usage(3_000_000, 5, 2560 * PAGE_SIZE, 7, 1 << 40)


def test_fdio_all_counters():
    obj = _rec(L.FdioEvent, L.EV_FDIO, fd=-1 & 0x7FFFFFFF, reason=L.FLUSH_CLOSE,
               bytes_read=1 << 33, bytes_written=17, nreads=3, nwrites=1, ino=42, dev=9,
               imode=0o100600, map_prot=5, flags=L.FDIO_SEEN_OPEN | L.FDIO_MAP_SHARED,
               first_ts_ns=TS - 10)
    ev = Decoder().decode(bytes(obj))
    assert ev == E.FdIO(TS, PID, TID, TAG, 0x7FFFFFFF, L.FLUSH_CLOSE, 1 << 33, 17, 3, 1, 42, 9,
                        0o100600, 5, 3, TS - 10)


def test_fdop_negative_fd():
    ev = Decoder().decode(bytes(_rec(L.FdopEvent, L.EV_FDOP, op=L.FDOP_DUP, oldfd=3, newfd=-1, cloexec=1)))
    assert ev == E.FdOp(TS, PID, TID, TAG, L.FDOP_DUP, 3, -1, True)


def test_chdir_with_and_without_path():
    d = Decoder()
    ev = d.decode(_with_path(L.ChdirEvent, L.EV_CHDIR, "path", "path_len", b"sub/dir", fd=-100))
    assert ev == E.Chdir(TS, PID, TID, TAG, -100, "sub/dir")
    ev = d.decode(_trim(_rec(L.ChdirEvent, L.EV_CHDIR, fd=5, path_len=0), "path", 0))
    assert ev == E.Chdir(TS, PID, TID, TAG, 5, None)


def test_rename_trimmed_after_newpath():
    obj = _rec(L.RenameEvent, L.EV_RENAME, olddirfd=-100, newdirfd=7, flags=1,
               old_len=len(b"a.part") + 1, new_len=len(b"b\xff.csv") + 1)
    _put(obj, "oldpath", b"a.part")
    _put(obj, "newpath", b"b\xff.csv")
    ev = Decoder().decode(_trim(obj, "newpath", len(b"b\xff.csv") + 1))
    assert (ev.olddirfd, ev.newdirfd, ev.flags, ev.old) == (-100, 7, 1, "a.part")
    assert os.fsencode(ev.new) == b"b\xff.csv"


def test_unlink_and_truncate():
    d = Decoder()
    ev = d.decode(_with_path(L.UnlinkEvent, L.EV_UNLINK, "path", "path_len", b"/tmp/x", dirfd=-100, flags=0x200))
    assert ev == E.Unlink(TS, PID, TID, TAG, -100, 0x200, "/tmp/x")
    ev = d.decode(_with_path(L.TruncateEvent, L.EV_TRUNCATE, "path", "path_len", b"/tmp/y", fd=-100, length=-5))
    assert ev == E.Truncate(TS, PID, TID, TAG, -100, -5, "/tmp/y")
    ev = d.decode(_trim(_rec(L.TruncateEvent, L.EV_TRUNCATE, fd=4, length=1 << 40), "path", 0))
    assert ev == E.Truncate(TS, PID, TID, TAG, 4, 1 << 40, None)


def test_net_addr_cut_to_addr_len():
    sa = struct.pack("<H", 2) + struct.pack(">H", 443) + bytes([93, 184, 216, 34]) + b"\0" * 8
    obj = _rec(L.NetEvent, L.EV_NET, op=L.NET_CONNECT, fd=5, ret=-115, addr_len=len(sa))
    obj.addr[: len(sa)] = sa
    obj.addr[len(sa)] = 0xEE  # garbage past addr_len must not leak in
    ev = Decoder().decode(bytes(obj))
    assert ev == E.Net(TS, PID, TID, TAG, L.NET_CONNECT, 5, -115, sa)


@pytest.mark.parametrize("cut", [0, 1, 23])
def test_shorter_than_header_is_bad(cut):
    d = Decoder()
    assert d.decode(bytes(_rec(L.ForkEvent, L.EV_FORK))[:cut]) is None
    assert d.bad == 1


@pytest.mark.parametrize("cls,etype", [(L.ForkEvent, L.EV_FORK), (L.OpenEvent, L.EV_OPEN),
                                       (L.FdioEvent, L.EV_FDIO), (L.NetEvent, L.EV_NET),
                                       (L.RenameEvent, L.EV_RENAME)])
def test_record_cut_inside_fixed_fields_is_bad(cls, etype):
    d = Decoder()
    fixed = L.prefix_of(cls).fmt.size
    assert d.decode(bytes(_rec(cls, etype))[: fixed - 1]) is None
    assert d.bad == 1


@pytest.mark.parametrize("etype", [0, 13, 0xFFFFFFFF])
def test_unknown_type_is_bad(etype):
    d = Decoder()
    assert d.decode(bytes(_rec(L.ForkEvent, etype))) is None
    assert d.bad == 1


def test_decode_all_skips_bad_and_keeps_going():
    d = Decoder()
    good = bytes(_rec(L.ExitEvent, L.EV_EXIT, exit_code=0))
    out = list(d.decode_all([b"", good, bytes(_rec(L.ExitEvent, 99)), good[:10], good]))
    assert len(out) == 2 and all(isinstance(e, E.Exit) for e in out)
    assert d.bad == 3


def test_accepts_bytearray():
    # the ring-buffer callback may hand over a ctypes buffer copy as bytearray
    buf = bytearray(bytes(_rec(L.ForkEvent, L.EV_FORK, child_pid=1, child_tid=1)))
    assert isinstance(Decoder().decode(buf), E.Fork)


def test_every_event_type_has_a_decoder():
    d = Decoder()
    types = {getattr(L, n) for n in dir(L) if n.startswith("EV_")}
    assert set(d._by_type) == types
    assert all(ctypes.sizeof(c) >= L.prefix_of(c).fmt.size for c in L.C_STRUCTS.values())
