"""RunWriter: the Tracker's sink. Finished processes, accesses, renames,
sockets and pipes become chained records of one run.

Record bodies are compact JSON arrays (see BODY_* below); a file record is
about 60 bytes of body plus its hash. Times are stored as wall-clock UTC
microseconds, converted from CLOCK_MONOTONIC once, here, by the shared Clock.
"""

from __future__ import annotations

import os
import stat

from ..clock import Clock
from ..model.paths import SYSTEM, classify
from ..model.processes import DirRec, FileAccess, LinkRec, NetRec, Proc, RenameRec, Sink
from . import sqlite as S

ACCESS_BITS = {"read": 1, "write": 2, "create": 4, "truncate": 8, "delete": 16, "exec": 32, "map": 64}
ACCESS_ORDER = ("read", "write", "create", "truncate", "delete", "exec", "map")

# BODY_FILE:   [pid, access_bits, bytes_read, bytes_written, first, last, cell, kind_code(, extra)]
#              extra, only when there is any: {"via": [the other names it was opened by
#              (symlinks)], "dir": 1 when the path is a directory (read by listing it)}
# BODY_LINK:   [pid, time, cell, op, target]   (p1 = new name, p2 = the file, or None)
# BODY_DIR:    [pid, time, cell, op]           (p1 = the directory)
# BODY_RENAME: [pid, time, cell]               (p1 = to, p2 = from)
# BODY_NET:    [pid, op, family, address, port, time, cell]
# Times in these bodies are microseconds since the run's start_us (in its
# start record), which keeps a file record near 40 bytes.
_WRITE_BITS = ACCESS_BITS["write"] | ACCESS_BITS["create"] | ACCESS_BITS["truncate"]
KIND_CODES = {"data": "d", "library": "l", "system": "s", "temp": "t"}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
# BODY_PIPE:   [ino, writer_pids, reader_pids]
# BODY_ATTEMPT (in a process body's "attempts"): [path, errno, write, time, cell, exe or
#              None when it is the process's exe]


def stdio_files(pid: int | str = "self") -> frozenset[str]:
    """The regular files a process's stdout and stderr are (`provtrace run -- CMD > log`):
    what the traced command was handed to write its output to, not a file it made.
    Its children inherit them; the writer codes them as system (a config rule
    can say otherwise at query time)."""
    out = set()
    for fd in (1, 2):
        try:
            if stat.S_ISREG(os.stat(f"/proc/{pid}/fd/{fd}").st_mode):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/") and not target.endswith(" (deleted)"):
                    out.add(target)
        except OSError:
            continue  # closed, gone, or not ours to see: nothing to exclude
    return frozenset(out)


def bits_of(access: set[str]) -> int:
    return sum(map(ACCESS_BITS.__getitem__, access))


def access_of(bits: int) -> list[str]:
    return [a for a in ACCESS_ORDER if bits & ACCESS_BITS[a]]


class RunWriter(Sink):
    def __init__(self, store: S.Store, rid: int, clock: Clock, redact_argv=None,
                 base_us: int = 0, stdio: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.stdio = stdio  # the run's captured stdout/stderr files (stdio_files)
        self.base_us = base_us
        self.rid = rid
        self.clock = clock
        self.redact_argv = redact_argv or (lambda argv: list(argv))
        self.processes = 0
        self.files = 0
        self.pids: set[int] = set()  # every process written: NVML accounting is asked by pid
        # what the run touched, mapped and exec'd: the context collector's input
        self.touched: set[str] = set()
        self.mapped: set[str] = set()
        self.execd: set[str] = set()
        # the same per notebook cell: cell id -> (touched, mapped, execd)
        self.by_cell: dict[str, tuple[set[str], set[str], set[str]]] = {}
        # rename targets by cell (None outside cells): files the run produced
        # under a name it never opened, which fingerprints must still cover
        self.renamed_to: dict[str | None, set[str]] = {}
        # path -> when (monotonic ns) a finished process of the run last wrote it:
        # the daemon's input watcher names the run that changed a watched file
        self.written: dict[str, int] = {}

    def us(self, mono_ns: int | None) -> int | None:
        return None if mono_ns is None else (mono_ns + self.clock.offset_ns) // 1000

    def rel(self, mono_ns: int | None) -> int | None:
        us = self.us(mono_ns)
        return None if us is None else us - self.base_us

    def on_process(self, p: Proc) -> None:
        body = {
            "pid": p.pid, "ppid": p.ppid, "exe": p.exe, "argv": self.redact_argv(p.argv),
            "cwd": p.start_cwd, "uid": p.uid, "started_us": self.us(p.start_ns),
            "ended_us": self.us(p.end_ns), "exit_code": p.exit_code, "signal": p.signal,
            "cell": p.cell,
        }
        if p.seeded_from_proc:
            body["seeded_from_proc"] = True
        if p.privileged:
            body["privileged"] = True
        if p.attempts:  # BODY_ATTEMPT each (failed opens; issue 13)
            body["attempts"] = [[a.path, a.errno, int(a.write), self.rel(a.first_ns), a.cell,
                                 None if a.exe == p.exe else a.exe]
                                for a in p.attempts.values()]
        if p.usage is not None:  # [utime_ns, stime_ns, maxrss_bytes, rchar, wchar]
            u = p.usage
            body["usage"] = [u.utime_ns, u.stime_ns, u.maxrss_bytes, u.rchar_bytes, u.wchar_bytes]
        self.store.append(self.rid, S.PROCESS, body)
        self.processes += 1
        self.pids.add(p.pid)
        self.store.append_many(self.rid, S.FILE, [self._file_record(p.pid, fa) for fa in p.files.values()])
        self.files += len(p.files)

    def on_files(self, p: Proc, files: list[FileAccess]) -> None:
        """File records of a process still alive (a finished cell's, Tracker.checkpoint):
        the same records as at its exit; its process record comes when it exits."""
        self.store.append_many(self.rid, S.FILE, [self._file_record(p.pid, fa) for fa in files])
        self.files += len(files)

    def _file_record(self, pid: int, fa: FileAccess) -> tuple[str, str, str | None]:
        """(body, p1, p2) of one FILE record; notes the path for the context collector.

        Called once per (process, path): tens of thousands of times on a
        small-file workload, hence the times converted inline (as rel())."""
        path, access, off, base = fa.path, fa.access, self.clock.offset_ns, self.base_us
        bits = bits_of(access)
        kind = KIND_CODES[SYSTEM if path in self.stdio else classify(path, mapped_exec=fa.mapped_exec)]
        first, last = (fa.first_ns + off) // 1000 - base, (fa.last_ns + off) // 1000 - base
        if fa.cell is None and not fa.via and not fa.directory:
            # the common body, written as dumps() writes it, without building the list
            body = f'[{pid},{bits},{fa.bytes_read},{fa.bytes_written},{first},{last},null,"{kind}"]'
        else:
            extra = {**({"via": sorted(fa.via)} if fa.via else {}), **({"dir": 1} if fa.directory else {})}
            body = S.dumps([pid, bits, fa.bytes_read, fa.bytes_written, first, last, fa.cell, kind,
                            *((extra,) if extra else ())])
        self._note(self.touched, self.mapped, self.execd, path, access)
        if bits & _WRITE_BITS and fa.last_ns > self.written.get(path, -1):
            self.written[path] = fa.last_ns
        if fa.cell is not None:
            self._note(*self.by_cell.setdefault(fa.cell, (set(), set(), set())), path, access)
        return body, path, fa.exe

    @staticmethod
    def _note(touched: set[str], mapped: set[str], execd: set[str], path: str, access: set[str]) -> None:
        touched.add(path)
        if "map" in access:
            mapped.add(path)
        if "exec" in access:
            execd.add(path)

    def on_rename(self, rec: RenameRec) -> None:
        self.store.append(self.rid, S.RENAME, [rec.pid, self.rel(rec.ts_ns), rec.cell],
                          p1=rec.dst, p2=rec.src)
        self.renamed_to.setdefault(rec.cell, set()).add(rec.dst)

    def on_link(self, rec: LinkRec) -> None:
        self.store.append(self.rid, S.LINK, [rec.pid, self.rel(rec.ts_ns), rec.cell, rec.op, rec.target],
                          p1=rec.dst, p2=rec.src)

    def on_dir(self, rec: DirRec) -> None:
        self.store.append(self.rid, S.DIR, [rec.pid, self.rel(rec.ts_ns), rec.cell, rec.op], p1=rec.path)

    def on_net(self, rec: NetRec) -> None:
        self.store.append(self.rid, S.NET, [rec.pid, rec.op, rec.family, rec.address, rec.port,
                                            self.rel(rec.ts_ns), rec.cell])

    def on_pipe(self, key: tuple[int, int], writers: set[int], readers: set[int]) -> None:
        self.store.append(self.rid, S.PIPE, [key[1], sorted(writers), sorted(readers)])
