"""Raw ring-buffer records -> events, in batches.

The ring-buffer callback only appends bytes to a list; decoding happens here,
off the callback. A record that is short or of unknown type is counted in
`Decoder.bad` and skipped: one bad record never stops the stream.

This is the consumer's hottest loop (one call per record, ~100,000 for a
20,000-file churn), so each record type has its own decoding function: one
precompiled unpack of its fixed fields, then the event built from them. The header comes out of the kernel as pid, tid, tag, ts_ns; events
put ts_ns first.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from collections.abc import Callable, Iterable

from ..model import events as E
from . import layouts as L

log = logging.getLogger(__name__)

_TYPE = struct.Struct("<I")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # signal->maxrss counts pages
# os.fsdecode on bytes is exactly this decode; calling it directly saves a
# Python-level call per string.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

Decode = Callable[[bytes], "E.Event"]


def _cstr(buf: bytes, off: int, length: int) -> str:
    """A NUL-terminated string of `length` bytes (NUL included) at off."""
    raw = buf[off: off + length - 1] if length > 1 else b""
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode(_FS_ENCODING, _FS_ERRORS)


def _layout(cls) -> tuple[Callable, dict[str, int]]:
    p = L.prefix_of(cls)
    return p.fmt.unpack_from, p.tail_offsets


def _fork() -> Decode:
    unpack, _ = _layout(L.ForkEvent)

    def dec(buf):
        _, pid, tid, tag, ts, cpid, ctid, uid, thr = unpack(buf)
        return E.Fork(ts, pid, tid, tag, cpid, ctid, uid, bool(thr))
    return dec


def _exec() -> Decode:
    unpack, tails = _layout(L.ExecEvent)
    off = tails["filename"]

    def dec(buf):
        _, pid, tid, tag, ts, old_tid, uid, flen, flags = unpack(buf)
        return E.Exec(ts, pid, tid, tag, old_tid, uid, _cstr(buf, off, flen),
                      bool(flags & L.EXEC_PRIVILEGED))
    return dec


def argv_from_region(region: bytes) -> tuple[str, ...]:
    """argv from the bytes between mm->arg_start and arg_end (or their first
    part): NUL-terminated arguments, empty ones included; a last argument
    without its NUL was cut and is kept as far as it goes."""
    if not region:
        return ()
    parts = region.split(b"\0")
    if region.endswith(b"\0"):
        parts.pop()
    return tuple(a.decode(_FS_ENCODING, _FS_ERRORS) for a in parts)


def _argv() -> Decode:
    unpack, tails = _layout(L.ArgvEvent)
    off = tails["args"]

    def dec(buf):
        _, pid, tid, tag, ts, _reserved, n, trunc, _pad = unpack(buf)
        return E.Argv(ts, pid, tid, tag, argv_from_region(buf[off: off + n]), bool(trunc))
    return dec


def _exit() -> Decode:
    unpack, _ = _layout(L.ExitEvent)

    def dec(buf):
        _, pid, tid, tag, ts, status, max_fd, utime, stime, maxrss, rchar, wchar = unpack(buf)
        usage = E.Usage(utime, stime, maxrss * PAGE_SIZE, rchar, wchar)
        return E.Exit(ts, pid, tid, tag, status, max_fd, usage)
    return dec


def _open() -> Decode:
    unpack, tails = _layout(L.OpenEvent)
    off = tails["path"]

    def dec(buf):
        _, pid, tid, tag, ts, fd, dirfd, flags, fmode, ino, dev, imode, plen, _pad = unpack(buf)
        return E.Open(ts, pid, tid, tag, fd, dirfd, flags, fmode, ino, dev, imode,
                             _cstr(buf, off, plen))
    return dec


def _fdio() -> Decode:
    unpack, _ = _layout(L.FdioEvent)

    def dec(buf):
        (_, pid, tid, tag, ts, fd, reason, nbr, nbw, nr, nw, ino, dev, imode, prot, flags,
         first) = unpack(buf)
        return E.FdIO(ts, pid, tid, tag, fd, reason, nbr, nbw, nr, nw, ino, dev, imode,
                             prot, flags, first)
    return dec


def _fdop() -> Decode:
    unpack, _ = _layout(L.FdopEvent)

    def dec(buf):
        _, pid, tid, tag, ts, op, oldfd, newfd, cloexec = unpack(buf)
        return E.FdOp(ts, pid, tid, tag, op, oldfd, newfd, bool(cloexec))
    return dec


def _chdir() -> Decode:
    unpack, tails = _layout(L.ChdirEvent)
    off = tails["path"]

    def dec(buf):
        _, pid, tid, tag, ts, fd, plen = unpack(buf)
        return E.Chdir(ts, pid, tid, tag, fd, _cstr(buf, off, plen) if plen else None)
    return dec


def _rename() -> Decode:
    unpack, tails = _layout(L.RenameEvent)
    old_off, new_off = tails["oldpath"], tails["newpath"]

    def dec(buf):
        _, pid, tid, tag, ts, odfd, ndfd, flags, olen, nlen, _pad = unpack(buf)
        return E.Rename(ts, pid, tid, tag, odfd, ndfd, flags, _cstr(buf, old_off, olen),
                               _cstr(buf, new_off, nlen))
    return dec


def _unlink() -> Decode:
    unpack, tails = _layout(L.UnlinkEvent)
    off = tails["path"]

    def dec(buf):
        _, pid, tid, tag, ts, dirfd, flags, plen, _pad = unpack(buf)
        return E.Unlink(ts, pid, tid, tag, dirfd, flags, _cstr(buf, off, plen))
    return dec


def _truncate() -> Decode:
    unpack, tails = _layout(L.TruncateEvent)
    off = tails["path"]

    def dec(buf):
        _, pid, tid, tag, ts, fd, plen, length = unpack(buf)
        return E.Truncate(ts, pid, tid, tag, fd, length,
                                 _cstr(buf, off, plen) if plen else None)
    return dec


def _net() -> Decode:
    unpack, tails = _layout(L.NetEvent)
    off = tails["addr"]

    def dec(buf):
        _, pid, tid, tag, ts, op, fd, ret, alen = unpack(buf)
        return E.Net(ts, pid, tid, tag, op, fd, ret, bytes(buf[off: off + alen]))
    return dec


def _iouring() -> Decode:
    unpack, _ = _layout(L.IouringEvent)

    def dec(buf):
        _, pid, tid, tag, ts, fd, flags = unpack(buf)
        return E.IoUring(ts, pid, tid, tag, fd, flags)
    return dec


def _link() -> Decode:
    unpack, tails = _layout(L.LinkEvent)
    old_off, new_off = tails["oldpath"], tails["newpath"]

    def dec(buf):
        _, pid, tid, tag, ts, op, odfd, ndfd, flags, olen, nlen = unpack(buf)
        return E.Link(ts, pid, tid, tag, op, odfd, ndfd, flags, _cstr(buf, old_off, olen),
                      _cstr(buf, new_off, nlen))
    return dec


def _mkdir() -> Decode:
    unpack, tails = _layout(L.MkdirEvent)
    off = tails["path"]

    def dec(buf):
        _, pid, tid, tag, ts, dirfd, mode, plen, _pad = unpack(buf)
        return E.Mkdir(ts, pid, tid, tag, dirfd, mode, _cstr(buf, off, plen))
    return dec


def path_from_names(region: bytes) -> str:
    """The absolute path of a resolved_event's names (leaf first, NUL-terminated)."""
    names = region.split(b"\0")
    if region.endswith(b"\0"):
        names.pop()
    return "/" + "/".join(n.decode(_FS_ENCODING, _FS_ERRORS) for n in reversed(names))


def _resolved() -> Decode:
    unpack, tails = _layout(L.ResolvedEvent)
    off = tails["names"]

    def dec(buf):
        _, pid, tid, tag, ts, fd, n, trunc, _pad = unpack(buf)
        path = None if trunc else path_from_names(bytes(buf[off: off + n]))
        return E.Resolved(ts, pid, tid, tag, fd, path)
    return dec


_MAKERS = {L.EV_FORK: _fork, L.EV_EXEC: _exec, L.EV_EXEC_ARGV: _argv, L.EV_EXIT: _exit,
           L.EV_OPEN: _open, L.EV_FDIO: _fdio, L.EV_FDOP: _fdop, L.EV_CHDIR: _chdir,
           L.EV_RENAME: _rename, L.EV_UNLINK: _unlink, L.EV_TRUNCATE: _truncate, L.EV_NET: _net,
           L.EV_IOURING: _iouring, L.EV_LINK: _link, L.EV_MKDIR: _mkdir, L.EV_RESOLVED: _resolved}


class Decoder:
    def __init__(self) -> None:
        self.bad = 0
        self._by_type: dict[int, Decode] = {t: make() for t, make in _MAKERS.items()}

    def decode_all(self, records: Iterable[bytes]) -> list[E.Event]:
        """The events of records, in order; bad records are counted and left out."""
        out: list[E.Event] = []
        append = out.append
        by_type = self._by_type
        type_of = _TYPE.unpack_from
        for rec in records:
            # A record too short for its type's fixed fields fails its unpack
            # (struct.error); an unknown type has no decoder (KeyError).
            try:
                append(by_type[type_of(rec)[0]](rec))
            except (KeyError, struct.error):
                self._bad(rec)
        return out

    def decode(self, buf: bytes) -> E.Event | None:
        out = self.decode_all((buf,))
        return out[0] if out else None

    def _bad(self, buf: bytes) -> None:
        self.bad += 1
        etype = _TYPE.unpack_from(buf)[0] if len(buf) >= _TYPE.size else None
        log.debug("bad record type=%s len=%d", etype, len(buf))
