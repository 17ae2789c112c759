"""Raw ring-buffer records -> event dataclasses, in batches.

The ring-buffer callback only appends bytes to a list; decoding happens here,
off the callback. A record that is short or of unknown type is counted in
`Decoder.bad` and skipped: one bad record never stops the stream.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Iterator

from ..model import events as E
from . import layouts as L

log = logging.getLogger(__name__)

_HDR = struct.Struct("<IIIIQ")


def _cstr(buf: bytes, off: int, length: int) -> str:
    """A NUL-terminated string of `length` bytes (NUL included) at off."""
    raw = buf[off: off + max(length - 1, 0)]
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return os.fsdecode(raw)


class Decoder:
    def __init__(self) -> None:
        self.bad = 0
        self._p = {t: L.prefix_of(cls) for t, cls in (
            (L.EV_FORK, L.ForkEvent), (L.EV_EXEC, L.ExecEvent), (L.EV_EXEC_ARGV, L.ArgvEvent),
            (L.EV_EXIT, L.ExitEvent), (L.EV_OPEN, L.OpenEvent), (L.EV_FDIO, L.FdioEvent),
            (L.EV_FDOP, L.FdopEvent), (L.EV_CHDIR, L.ChdirEvent), (L.EV_RENAME, L.RenameEvent),
            (L.EV_UNLINK, L.UnlinkEvent), (L.EV_TRUNCATE, L.TruncateEvent), (L.EV_NET, L.NetEvent))}

    def decode_all(self, records: Iterable[bytes]) -> Iterator[E.Event]:
        for rec in records:
            ev = self.decode(rec)
            if ev is not None:
                yield ev

    def decode(self, buf: bytes) -> E.Event | None:
        if len(buf) < _HDR.size:
            self.bad += 1
            return None
        etype = _HDR.unpack_from(buf)[0]
        p = self._p.get(etype)
        if p is None or len(buf) < p.fmt.size:
            self.bad += 1
            log.debug("bad record type=%s len=%d", etype, len(buf))
            return None
        v = p.fmt.unpack_from(buf)
        # v[0] is the type; header fields follow: pid, tid, tag, ts_ns
        _, pid, tid, tag, ts = v[:5]
        f = v[5:]
        t = p.tail_offsets
        if etype == L.EV_FDIO:
            return E.FdIO(ts, pid, tid, tag, *f)
        if etype == L.EV_OPEN:
            fd, dirfd, flags, fmode, ino, dev, imode, plen, _ = f
            return E.Open(ts, pid, tid, tag, fd, dirfd, flags, fmode, ino, dev, imode,
                          _cstr(buf, t["path"], plen))
        if etype == L.EV_FORK:
            cpid, ctid, uid, thr = f
            return E.Fork(ts, pid, tid, tag, cpid, ctid, uid, bool(thr))
        if etype == L.EV_EXEC:
            old_tid, uid, flen, _ = f
            return E.Exec(ts, pid, tid, tag, old_tid, uid, _cstr(buf, t["filename"], flen))
        if etype == L.EV_EXEC_ARGV:
            argc, n, trunc, _ = f
            raw = buf[t["args"]: t["args"] + n]
            args = tuple(os.fsdecode(a) for a in raw.split(b"\0")[:argc])
            return E.Argv(ts, pid, tid, tag, args, bool(trunc))
        if etype == L.EV_EXIT:
            return E.Exit(ts, pid, tid, tag, f[0], f[1])
        if etype == L.EV_FDOP:
            op, oldfd, newfd, cloexec = f
            return E.FdOp(ts, pid, tid, tag, op, oldfd, newfd, bool(cloexec))
        if etype == L.EV_CHDIR:
            fd, plen = f
            return E.Chdir(ts, pid, tid, tag, fd, _cstr(buf, t["path"], plen) if plen else None)
        if etype == L.EV_RENAME:
            odfd, ndfd, flags, olen, nlen, _ = f
            return E.Rename(ts, pid, tid, tag, odfd, ndfd, flags,
                            _cstr(buf, t["oldpath"], olen), _cstr(buf, t["newpath"], nlen))
        if etype == L.EV_UNLINK:
            dirfd, flags, plen, _ = f
            return E.Unlink(ts, pid, tid, tag, dirfd, flags, _cstr(buf, t["path"], plen))
        if etype == L.EV_TRUNCATE:
            fd, plen, length = f
            return E.Truncate(ts, pid, tid, tag, fd, length,
                              _cstr(buf, t["path"], plen) if plen else None)
        if etype == L.EV_NET:
            op, fd, ret, alen = f
            off = t["addr"]
            return E.Net(ts, pid, tid, tag, op, fd, ret, bytes(buf[off: off + alen]))
        self.bad += 1
        return None
