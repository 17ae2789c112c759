"""Raw ring-buffer records -> events, in batches.

The ring-buffer callback only appends bytes to a list; decoding happens here,
off the callback. A record that is short or of unknown type is counted in
`Decoder.bad` and skipped: one bad record never stops the stream.

This is the consumer's hottest loop (one call per record, ~100,000 for a
20,000-file churn). It runs compiled when the extension capture/_decode.c is
built (setup.sh builds it): a plan per record type, made here from the ctypes
layouts and the event dataclasses, tells it which bytes fill which field, and
it writes them straight into a new event's slots. Without the extension, or
for the rare types without a plan (exit, argv, net, resolved), each record
type has its own Python decoding function: one precompiled unpack of its
fixed fields, then the event built from them. Both make the same events
(tests/unit/test_decode_compiled.py). The header comes out of the kernel as
pid, tid, tag, ts_ns; events put ts_ns first.
"""

from __future__ import annotations

import ctypes as C
import dataclasses
import logging
import os
import struct
import sys
from collections.abc import Callable, Iterable

from ..model import events as E
from . import layouts as L

log = logging.getLogger(__name__)

try:
    from . import _decode as _compiled
except ImportError:  # not built (no compiler when installed): the Python decoders do it all
    _compiled = None

COMPILED = _compiled is not None

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


# -- plans for the compiled decoder (capture/_decode.c) ----------------------------
# Step kinds, as enumerated in _decode.c.
_K_U32, _K_I32, _K_U64, _K_I64, _K_BOOL, _K_MASK, _K_CSTR, _K_OPT_CSTR = range(8)
_INT_KINDS = {C.c_uint32: _K_U32, C.c_int32: _K_I32, C.c_uint64: _K_U64, C.c_int64: _K_I64}
# An event's string field -> the layout's (length field, bytes field).
_STRINGS = {"filename": ("filename_len", "filename"), "path": ("path_len", "path"),
            "old": ("old_len", "oldpath"), "new": ("new_len", "newpath")}
# The record types the compiled decoder builds itself: every frequent one.
_PLANNED = {L.EV_FORK: (E.Fork, L.ForkEvent), L.EV_EXEC: (E.Exec, L.ExecEvent),
            L.EV_OPEN: (E.Open, L.OpenEvent), L.EV_FDIO: (E.FdIO, L.FdioEvent),
            L.EV_FDOP: (E.FdOp, L.FdopEvent), L.EV_CHDIR: (E.Chdir, L.ChdirEvent),
            L.EV_RENAME: (E.Rename, L.RenameEvent), L.EV_UNLINK: (E.Unlink, L.UnlinkEvent),
            L.EV_TRUNCATE: (E.Truncate, L.TruncateEvent), L.EV_IOURING: (E.IoUring, L.IouringEvent),
            L.EV_LINK: (E.Link, L.LinkEvent), L.EV_MKDIR: (E.Mkdir, L.MkdirEvent)}


def _fields_at(layout) -> dict[str, tuple[int, type]]:
    """Every field of a layout (the header's flattened in) -> (byte offset, ctype)."""
    out: dict[str, tuple[int, type]] = {}

    def walk(lay, base: int) -> None:
        for name, ctype in lay._fields_:
            off = base + getattr(lay, name).offset
            if isinstance(ctype, type) and issubclass(ctype, C.Structure):
                walk(ctype, off)
            else:
                out[name] = (off, ctype)
    walk(layout, 0)
    return out


def plan_of(event_cls: type, layout) -> tuple[type, int, tuple]:
    """(class, shortest valid record, steps): one step per dataclass field, in
    order, naming where its value is in the record. The same rules as the
    Python decoders above: a bool is a nonzero u32, Exec.privileged a flag bit,
    a `str | None` is None when its length is 0."""
    if hasattr(event_cls, "__post_init__"):  # the compiled decoder fills slots, it runs no __init__
        raise TypeError(f"{event_cls.__name__} has __post_init__: the compiled decoder would skip it")
    at = _fields_at(layout)
    steps = []
    for f in dataclasses.fields(event_cls):
        if event_cls is E.Exec and f.name == "privileged":
            steps.append((_K_MASK, at["flags"][0], L.EXEC_PRIVILEGED, f.name))
        elif f.name in _STRINGS and f.type in ("str", "str | None"):
            length, tail = _STRINGS[f.name]
            kind = _K_CSTR if f.type == "str" else _K_OPT_CSTR
            steps.append((kind, at[length][0], at[tail][0], f.name))
        else:
            off, ctype = at[f.name]
            steps.append((_K_BOOL if f.type == "bool" else _INT_KINDS[ctype], off, 0, f.name))
    return event_cls, L.prefix_of(layout).fmt.size, tuple(steps)


_plans = None


def _compiled_plans():
    global _plans
    if _plans is None:
        _plans = _compiled.compile({t: plan_of(cls, lay) for t, (cls, lay) in _PLANNED.items()})
    return _plans


class Decoder:
    """compiled: None uses the extension when it is built; False never; True
    insists (RuntimeError when it is not built)."""

    def __init__(self, compiled: bool | None = None) -> None:
        self.bad = 0
        self._by_type: dict[int, Decode] = {t: make() for t, make in _MAKERS.items()}
        if compiled and not COMPILED:
            raise RuntimeError("the compiled decoder (capture/_decode.c) is not built; run setup.sh")
        self.compiled = COMPILED if compiled is None else compiled
        self._plans = _compiled_plans() if self.compiled else None

    def decode_all(self, records: Iterable[bytes]) -> list[E.Event]:
        """The events of records, in order; bad records are counted and left out."""
        if self._plans is not None:
            return _compiled.decode_all(self._plans, records, self._slow)
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

    def _slow(self, rec: bytes) -> E.Event | None:
        """One record the compiled decoder left to Python; None when it is bad."""
        try:
            return self._by_type[_TYPE.unpack_from(rec)[0]](rec)
        except (KeyError, struct.error):
            self._bad(rec)
            return None

    def decode(self, buf: bytes) -> E.Event | None:
        out = self.decode_all((buf,))
        return out[0] if out else None

    def _bad(self, buf: bytes) -> None:
        self.bad += 1
        etype = _TYPE.unpack_from(buf)[0] if len(buf) >= _TYPE.size else None
        log.debug("bad record type=%s len=%d", etype, len(buf))
