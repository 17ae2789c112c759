"""The compiled decoder (capture/_decode.c) against the Python decoders: the
same events, field for field and type for type, and the same bad-record count,
for every record type, for records cut short, for names that are not UTF-8,
and for arbitrary bytes. setup.sh builds the extension, so a missing one fails
here rather than skipping."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provtrace.tracer.capture import decode
from provtrace.tracer.capture import layouts as L
from provtrace.tracer.capture.decode import Decoder

from .test_decode import _put, _rec, _with_path


def both(records) -> tuple[list[str], int]:
    """reprs of what each decoder makes of records (repr tells True from 1), and its bad count."""
    out = []
    for compiled in (True, False):
        d = Decoder(compiled=compiled)
        evs = d.decode_all(list(records))
        out.append(([repr(e) for e in evs], d.bad))
    assert out[0] == out[1]
    return out[0]


def test_the_extension_is_built():
    assert decode.COMPILED, "capture/_decode.c is not built: run bash setup.sh (needs gcc, python3-dev)"
    assert Decoder().compiled


def _typical() -> list[bytes]:
    u64 = (1 << 63) + 5
    return [
        bytes(_rec(L.ForkEvent, L.EV_FORK, child_pid=11, child_tid=12, uid=1000, is_thread=0)),
        bytes(_rec(L.ForkEvent, L.EV_FORK, child_pid=11, child_tid=13, uid=0, is_thread=5)),
        _with_path(L.ExecEvent, L.EV_EXEC, "filename", "filename_len", b"/usr/bin/sudo",
                   old_tid=9, uid=0, flags=L.EXEC_PRIVILEGED),
        _with_path(L.ExecEvent, L.EV_EXEC, "filename", "filename_len", b"/bin/true", flags=0x6),
        _with_path(L.OpenEvent, L.EV_OPEN, "path", "path_len", b"/data/\xff\xfe.csv",
                   fd=3, dirfd=-100, flags=0o2000001, fmode=0x100000, ino=u64, dev=(8 << 20) | 1,
                   imode=0o100644),
        _with_path(L.OpenEvent, L.EV_OPEN, "path", "path_len", b"missing", fd=-2, dirfd=7),
        _with_path(L.OpenEvent, L.EV_OPEN, "path", "path_len", b"", fd=4),  # length 1: ""
        bytes(_rec(L.FdioEvent, L.EV_FDIO, fd=-1, reason=L.FLUSH_SWEEP, bytes_read=u64,
                   bytes_written=7, nreads=1, nwrites=2, ino=3, dev=4, imode=0o10644,
                   map_prot=5, flags=L.FDIO_MAP_SHARED, first_ts_ns=u64)),
        # repeated opens folded in the kernel: fd is the count of opens
        bytes(_rec(L.FdioEvent, L.EV_FDIO, fd=99_999, reason=L.FLUSH_FOLDED, bytes_read=299_997,
                   nreads=99_999, ino=u64, dev=(8 << 20) | 1, imode=0o100644,
                   flags=L.FDIO_FOLDED | L.FDIO_SEEN_OPEN, first_ts_ns=5)),
        bytes(_rec(L.FdopEvent, L.EV_FDOP, op=L.FDOP_DUP, oldfd=1, newfd=-9, cloexec=1)),
        _with_path(L.ChdirEvent, L.EV_CHDIR, "path", "path_len", b"sub/dir", fd=-100),
        bytes(_rec(L.ChdirEvent, L.EV_CHDIR, fd=5, path_len=0))[: L.ChdirEvent.path.offset],
        _with_path(L.UnlinkEvent, L.EV_UNLINK, "path", "path_len", b"gone.txt", dirfd=-100, flags=0x200),
        _with_path(L.TruncateEvent, L.EV_TRUNCATE, "path", "path_len", b"/t", fd=-1, length=-3),
        bytes(_rec(L.TruncateEvent, L.EV_TRUNCATE, fd=4, path_len=0, length=1 << 40))[: L.TruncateEvent.path.offset],
        bytes(_rec(L.IouringEvent, L.EV_IOURING, fd=8, flags=3)),
        _with_path(L.MkdirEvent, L.EV_MKDIR, "path", "path_len", b"newdir", dirfd=-100, mode=0o755),
        _two_paths(L.RenameEvent, L.EV_RENAME, b"a.tmp", b"a.txt", olddirfd=-100, newdirfd=3, flags=1),
        _two_paths(L.LinkEvent, L.EV_LINK, b"target", b"/l/name", op=L.LINK_SYMBOLIC, olddirfd=-100,
                   newdirfd=-100, flags=0),
        # the types left to Python: they still come out in order
        bytes(_rec(L.ExitEvent, L.EV_EXIT, exit_code=256, max_fd=70, utime_ns=1, stime_ns=2,
                   maxrss_pages=3, rchar=4, wchar=5)),
        _with_path(L.ArgvEvent, L.EV_EXEC_ARGV, "args", "len", b"ls\0-l\0", truncated=0),
        _with_path(L.ResolvedEvent, L.EV_RESOLVED, "names", "len", b"leaf\0dir\0", fd=3),
        _with_path(L.NetEvent, L.EV_NET, "addr", "addr_len", b"\x02\x00\x00\x50\x7f\x00\x00\x01",
                   op=L.NET_CONNECT, fd=3, ret=0),
    ]


def _two_paths(cls, etype, old: bytes, new: bytes, **fields) -> bytes:
    obj = _rec(cls, etype, old_len=len(old) + 1, new_len=len(new) + 1, **fields)
    _put(obj, "oldpath", old)
    _put(obj, "newpath", new)
    return bytes(obj)


def test_every_record_type_decodes_the_same():
    reprs, bad = both(_typical())
    assert bad == 0 and len(reprs) == len(_typical())
    assert "True" in reprs[1] and "privileged=True" in reprs[2] and "privileged=False" in reprs[3]


def test_strings_cut_at_nul_or_at_the_record_end():
    obj = _rec(L.OpenEvent, L.EV_OPEN, fd=3, path_len=200)
    _put(obj, "path", b"/a\0b")
    cut = bytes(obj)[: L.OpenEvent.path.offset + 30]  # path_len says more than is there
    short = bytes(obj)[: L.OpenEvent.path.offset]  # no string bytes at all
    reprs, bad = both([bytes(obj), cut, short])
    assert bad == 0 and all("path='/a'" in r for r in reprs[:2]) and "path=''" in reprs[2]


def test_bad_records_are_counted_the_same():
    fork = bytes(_rec(L.ForkEvent, L.EV_FORK, child_pid=1))
    unknown = struct.pack("<I", 99) + bytes(40)
    huge_type = struct.pack("<I", 4000) + bytes(40)
    reprs, bad = both([b"", b"\x01\x00", fork[:-1], unknown, huge_type, fork])
    assert bad == 5 and len(reprs) == 1


def test_records_other_than_bytes_and_any_iterable():
    fork = bytes(_rec(L.ForkEvent, L.EV_FORK, child_pid=1, is_thread=1))
    reprs, bad = both([bytearray(fork), memoryview(fork), fork])
    assert bad == 0 and len(set(reprs)) == 1
    assert Decoder(compiled=True).decode_all(iter([fork])) == Decoder(compiled=False).decode_all([fork])


_TYPES = sorted({t for t in decode._MAKERS} | {0, 13, 63, 64})


@settings(max_examples=300, deadline=None)
@given(etype=st.sampled_from(_TYPES), body=st.binary(max_size=300))
def test_arbitrary_bytes_decode_the_same(etype, body):
    """Whatever the ring buffer holds: same events, same bad count, no crash."""
    both([struct.pack("<I", etype) + body])


def test_compiled_decoder_refused_when_not_built(monkeypatch):
    monkeypatch.setattr(decode, "COMPILED", False)
    with pytest.raises(RuntimeError, match="not built"):
        Decoder(compiled=True)
    assert Decoder().compiled is False


def test_plans_cover_every_field_from_the_layouts():
    """A field added to an event must be found in its layout, or plan_of fails."""
    for cls, layout in decode._PLANNED.values():
        _, min_len, steps = decode.plan_of(cls, layout)
        assert [s[3] for s in steps] == [f for f in cls.__dataclass_fields__]
        assert min_len == L.prefix_of(layout).fmt.size
    assert ctypes.sizeof(L.EventHdr) == 24
