"""Processes, their fd tables and cwd, folded from decoded events.

Tracker turns the event stream into records: one Proc per process (threads
fold in), one FileAccess per (process, path), renames, sockets, and pipe
edges. It tolerates what live tracing throws at it: events of a pid it has
not seen fork (seeded from /proc when still alive), exit before exec, pid
reuse (a process is identified by pid and start time), and stale fd entries
(the kernel reports inode identity with every I/O record; a mismatch means
the table is out of date and the entry is re-resolved instead of trusted).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from . import events as E
from .links import O_TMPFILE, DirRec, LinkFolding, LinkRec
from .paths import _norm as _normalize  # resolve() of an absolute path, one call less
from .paths import resolve

log = logging.getLogger(__name__)

AT_FDCWD = -100
O_ACCMODE, O_RDONLY, O_CREAT, O_TRUNC, O_CLOEXEC = 0o3, 0o0, 0o100, 0o1000, 0o2000000
AT_REMOVEDIR = 0x200
PROT_WRITE, PROT_EXEC = 0x2, 0x4
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
_FD_GONE = (E.FLUSH_CLOSE, E.FLUSH_REPLACED)  # the fd no longer names what it named
# Names kept per process for folded I/O (Proc.paths_by_inode), most recent
# opens. The kernel's fold slots (16 a process) turn over far sooner, and it
# sends an entry before the open that evicts it, so only a folded fd kept open
# across thousands of other files' opens can miss its name (a recorded gap).
_FOLDED_NAMES = 4096


class FdEntry(NamedTuple):
    """One fd table slot. A NamedTuple (immutable, built cheaply): one is made per open."""

    path: str | None
    kind: str  # file | dir | pipe | socket | device | unknown
    ino: int = 0
    dev: int = 0
    cloexec: bool = False
    flags: int = 0


@dataclass(slots=True)
class FileAccess:
    path: str
    access: set[str] = field(default_factory=set)
    bytes_read: int = 0
    bytes_written: int = 0
    first_ns: int = 0
    last_ns: int = 0
    exe: str | None = None
    cell: str | None = None
    mapped_exec: bool = False
    directory: bool = False  # a directory, read by listing it (getdents)
    via: set[str] | None = None  # other names it was opened by (symlinks): `path` is the file reached


@dataclass(slots=True)
class Attempt:
    """An open that failed with ENOENT or EACCES: what a process tried to reach.
    Not an access: it stays out of `files` and lineage (provtrace show --attempts)."""

    path: str
    errno: int
    write: bool  # asked for writing or creating
    first_ns: int
    exe: str | None
    cell: str | None


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int | None
    start_ns: int
    tag: int = 0
    uid: int | None = None
    exe: str | None = None
    argv: list[str] = field(default_factory=list)
    cwd: str | None = None
    start_cwd: str | None = None
    end_ns: int | None = None
    status: int | None = None
    cell: str | None = None
    fds: dict[int, FdEntry] = field(default_factory=dict)
    files: dict[str, FileAccess] = field(default_factory=dict)
    pending_argv: tuple[str, ...] | None = None
    seeded_from_proc: bool = False
    privileged: bool = False  # exec'd a program that gained privileges: not followed after
    attempts: dict[tuple[str, int, str | None], Attempt] = field(default_factory=dict)
    usage: E.Usage | None = None  # kernel accounting at exit
    # (dev, ino) -> the path its last open named: I/O through folded opens
    # (E.FDIO_FOLDED, which sent no Open) is told by the file's identity only
    paths_by_inode: OrderedDict[tuple[int, int], str] = field(default_factory=OrderedDict)

    @property
    def exit_code(self) -> int | None:
        """Shell convention: the exit code, or 128+N when killed by signal N."""
        return None if self.status is None else E.exit_code(self.status)

    @property
    def signal(self) -> int | None:
        if self.status is None:
            return None
        return (self.status & 0x7F) or None

    def access(self, path: str, ts_ns: int, cell: str | None = None) -> FileAccess:
        """The (path, cell) entry; cell defaults to the process's own cell.

        Only a process whose actions follow cells (a notebook kernel) passes
        another cell: its entries are then one per (path, cell)."""
        if cell is None:
            cell = self.cell
        key = path if cell == self.cell else (path, cell)
        fa = self.files.get(key)
        if fa is None:
            fa = self.files[key] = FileAccess(path, first_ns=ts_ns, last_ns=ts_ns,
                                              exe=self.exe, cell=cell)
        else:
            if ts_ns > fa.last_ns:
                fa.last_ns = ts_ns
            fa.exe = self.exe
        return fa


@dataclass(frozen=True, slots=True)
class RenameRec:
    pid: int
    src: str
    dst: str
    ts_ns: int
    cell: str | None


@dataclass(frozen=True, slots=True)
class NetRec:
    pid: int
    op: str
    family: str
    address: str
    port: int | None
    ts_ns: int
    cell: str | None


class Sink:
    """Where finished records go (the store writer implements this)."""

    def on_process(self, proc: Proc) -> None: ...
    def on_files(self, proc: Proc, files: list[FileAccess]) -> None: ...
    def on_rename(self, rec: RenameRec) -> None: ...
    def on_net(self, rec: NetRec) -> None: ...
    def on_pipe(self, key: tuple[int, int], writers: set[int], readers: set[int]) -> None: ...
    def on_link(self, rec: LinkRec) -> None: ...
    def on_dir(self, rec: DirRec) -> None: ...


class CellPolicy:
    """Which notebook cell an action belongs to. The default: none, ever.

    A process keeps the cell it was started in; a notebook session overrides
    these for its kernels, whose actions belong to whichever cell was running
    when (and on which thread) they happened.
    """

    def child_cell(self, parent: "Proc", tid: int, ts_ns: int) -> str | None:
        return parent.cell

    def action_cell(self, p: "Proc", tid: int, ts_ns: int) -> str | None:
        return p.cell

    def thread_started(self, p: "Proc", tid: int, ts_ns: int) -> None:
        return None


NO_CELLS = CellPolicy()


class Tracker(LinkFolding):
    """Folds events into records. Not thread-safe: one consumer loop owns it."""

    def __init__(self, sink: Sink, created_mask: int, cells: CellPolicy = NO_CELLS) -> None:
        self.sink = sink
        self.created_mask = created_mask
        self.cells = cells
        # The base policy's action cell is always the process's own: asking it
        # is a call per file access (one per record on small-file workloads).
        self._own_cells = type(cells) is CellPolicy
        self.live: dict[int, Proc] = {}
        self.threads: dict[int, int] = {}
        self.exited: list[Proc] = []
        self._exited_by_pid: dict[int, Proc] = {}  # until finished: late flushes find them
        self.needs_sweep: set[int] = set()
        self.pipes: dict[tuple[int, int], tuple[set[int], set[int]]] = {}
        self.bound: dict[tuple[int, int], str] = {}
        self.gaps: dict[str, int] = {}
        self._handlers = {
            E.Fork: self._fork, E.Exec: self._exec, E.Argv: self._argv, E.Exit: self._exit,
            E.Open: self._open, E.FdIO: self._fdio, E.FdOp: self._fdop, E.Chdir: self._chdir,
            E.Rename: self._rename, E.Unlink: self._unlink, E.Truncate: self._truncate,
            E.Net: self._net, E.IoUring: self._iouring,
            **self._link_handlers(),
        }

    # -- entry points -----------------------------------------------------------
    def add_root(self, pid: int, ts_ns: int, argv: list[str], cwd: str, uid: int,
                 tag: int = 0, cell: str | None = None, ppid: int | None = None) -> Proc:
        """A process we start ourselves: its cwd and argv are known before exec.
        ppid: its parent as it sees it (getppid), when that is not this process
        (the daemon traces a child its client forked)."""
        p = Proc(pid=pid, ppid=os.getpid() if ppid is None else ppid, start_ns=ts_ns, tag=tag, uid=uid,
                 argv=list(argv), cwd=cwd, start_cwd=cwd, cell=cell)
        for fd in (0, 1, 2):
            p.fds[fd] = self._fd_from_proc(pid, fd) or FdEntry(None, "unknown")
        self.live[pid] = p
        return p

    def attach(self, pid: int, tag: int = 0, cell: str | None = None) -> Proc:
        """A process already running when tracing began: seed it from /proc."""
        p = self._seed(pid, _now_ns(), tag)
        p.cell = cell
        return p

    def handle(self, ev: E.Event) -> None:
        h = self._handlers.get(type(ev))
        if h is None:
            self._gap("unknown_event")
            return
        h(ev)

    def handle_all(self, events: Iterable[E.Event]) -> None:
        """handle() for each event, with one call per event instead of two."""
        handlers = self._handlers
        for ev in events:
            h = handlers.get(type(ev))
            if h is None:
                self._gap("unknown_event")
            else:
                h(ev)

    def finish_exited(self) -> None:
        """Hand exited processes (and their file accesses) to the sink."""
        for p in self.exited:
            self.sink.on_process(p)
        self.exited.clear()
        self._exited_by_pid.clear()

    def checkpoint(self, cell: str) -> list[FileAccess]:
        """A finished cell of a live session: hand what the live processes did in
        `cell` so far to the sink (on_files) and forget it, so that the records
        written at their exit carry only what came after (I/O on a file the
        cell left open): nothing is written twice. Returns what was handed over.

        Not on the per-event path: called once per cell end, after the cell's
        events have been attributed (the daemon's router holds them for that)."""
        handed: list[FileAccess] = []
        for p in self.live.values():
            keys = [key for key, fa in p.files.items() if fa.cell == cell]
            if keys:
                files = [p.files.pop(key) for key in keys]
                self.sink.on_files(p, files)
                handed += files
        return handed

    def finish_all(self, end_ns: int) -> None:
        """End of tracing: everything still alive is written with no end time."""
        self.finish_exited()
        for p in list(self.live.values()):
            self.sink.on_process(p)
        self.live.clear()
        for key, (w, r) in self.pipes.items():
            if w and r:
                self.sink.on_pipe(key, w, r)
        self.pipes.clear()

    # -- helpers ------------------------------------------------------------------
    def _gap(self, what: str) -> None:
        self.gaps[what] = self.gaps.get(what, 0) + 1

    def _access(self, p: Proc, path: str, ev: E.Event, ts_ns: int | None = None) -> FileAccess:
        ts_ns = ev.ts_ns if ts_ns is None else ts_ns
        if self._own_cells:
            return p.access(path, ts_ns)
        return p.access(path, ts_ns, self.cells.action_cell(p, ev.tid, ts_ns))

    def _proc(self, pid: int, tid: int, ts_ns: int, tag: int) -> Proc:
        p = self.live.get(pid)
        if p is None:
            owner = self.threads.get(tid)
            if owner is not None and owner in self.live:
                return self.live[owner]
            p = self._seed(pid, ts_ns, tag)
        return p

    def _seed(self, pid: int, ts_ns: int, tag: int) -> Proc:
        """A pid seen without its fork: take what /proc still knows."""
        p = Proc(pid=pid, ppid=None, start_ns=ts_ns, tag=tag, seeded_from_proc=True)
        base = f"/proc/{pid}"
        try:
            p.cwd = p.start_cwd = os.readlink(f"{base}/cwd")
            p.exe = os.readlink(f"{base}/exe")
            with open(f"{base}/cmdline", "rb") as f:
                p.argv = [os.fsdecode(a) for a in f.read().split(b"\0") if a]
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("PPid:"):
                        p.ppid = int(line.split()[1])
                    elif line.startswith("Uid:"):
                        p.uid = int(line.split()[1])
            for name in os.listdir(f"{base}/fd"):
                entry = self._fd_from_proc(pid, int(name))
                if entry:
                    p.fds[int(name)] = entry
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH, errno.EACCES):
                raise
            self._gap("process_gone_before_seen")
        self.live[pid] = p
        return p

    @staticmethod
    def _fd_from_proc(pid: int, fd: int) -> FdEntry | None:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return None
        dev = _kdev(st.st_dev)
        if target.startswith("pipe:"):
            return FdEntry(None, "pipe", st.st_ino, dev)
        if target.startswith("socket:"):
            return FdEntry(None, "socket", st.st_ino, dev)
        if target.startswith("anon_inode:"):  # eventfd, epoll, timerfd...: no file behind it
            return FdEntry(None, "anon", st.st_ino, dev)
        if not target.startswith("/"):
            return FdEntry(None, "unknown", st.st_ino, dev)
        if target.endswith(" (deleted)") and not os.path.exists(target):
            target = target[: -len(" (deleted)")]
        return FdEntry(target, _kind_of_mode(st.st_mode), st.st_ino, dev)

    def _resolve_at(self, p: Proc, dirfd: int, path: str) -> str | None:
        if path.startswith("/"):
            return _normalize(path)
        if dirfd == AT_FDCWD:
            base = p.cwd
        else:
            entry = p.fds.get(dirfd)
            base = entry.path if entry else None
        out = resolve(base, path)
        if out is None:
            self._gap("unresolved_relative_path")
        return out

    # -- handlers -------------------------------------------------------------------
    def _fork(self, ev: E.Fork) -> None:
        parent = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        if ev.is_thread:
            self.threads[ev.child_tid] = parent.pid
            self.cells.thread_started(parent, ev.child_tid, ev.ts_ns)
            return
        old = self.live.pop(ev.child_pid, None)
        if old is not None:  # pid reuse, or a stale seed: close out the old one
            self.exited.append(old)
        cell = self.cells.child_cell(parent, ev.tid, ev.ts_ns)
        child = Proc(pid=ev.child_pid, ppid=parent.pid, start_ns=ev.ts_ns, tag=ev.tag, uid=ev.uid,
                     exe=parent.exe, argv=list(parent.argv), cwd=parent.cwd,
                     start_cwd=parent.cwd, cell=cell, fds=dict(parent.fds))
        self.live[child.pid] = child

    def _argv(self, ev: E.Argv) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        p.pending_argv = ev.argv
        if ev.truncated:
            self._gap("argv_truncated")

    def _exec(self, ev: E.Exec) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        self.threads.pop(ev.old_tid, None)
        path = self._resolve_at(p, AT_FDCWD, ev.filename)
        if ev.filename.startswith("/dev/fd/"):  # fexecve / execveat(AT_EMPTY_PATH)
            entry = p.fds.get(_int(ev.filename[8:]))
            path = entry.path if entry else path
        if p.pending_argv is not None:
            p.argv = list(p.pending_argv)
            p.pending_argv = None
        p.uid = ev.uid
        p.start_cwd = p.cwd
        if ev.privileged:
            p.privileged = True
            self._gap("privileged_exec_not_followed")
        exe = path
        if path:
            self._access(p, path, ev).access.add("exec")
            exe = self._interpreters(p, path, ev)
        p.exe = exe
        for fa in p.files.values():
            fa.exe = fa.exe or exe
        p.fds = {fd: e for fd, e in p.fds.items() if not e.cloexec}

    def _interpreters(self, p: Proc, path: str, ev: E.Exec) -> str:
        """The binary that really runs for an exec of path: a #! script's
        interpreter, itself maybe a script, as deep as the kernel follows
        (each level recorded as exec'd)."""
        seen = {path}
        for _ in range(_INTERP_DEPTH):
            interp = _shebang(path)
            if interp is None:
                break
            nxt = self._resolve_at(p, AT_FDCWD, interp)
            if nxt is None or nxt in seen:
                break
            seen.add(nxt)
            path = nxt
            self._access(p, path, ev).access.add("exec")
        return path

    def _exit(self, ev: E.Exit) -> None:
        p = self.live.pop(ev.pid, None)
        if p is None:
            self._gap("exit_of_unknown_process")
            return
        p.status = ev.status
        p.end_ns = ev.ts_ns
        p.usage = ev.usage
        if ev.max_fd >= E.PT_FLUSH_FDS:
            self.needs_sweep.add(ev.pid)
        self.exited.append(p)
        self._exited_by_pid[p.pid] = p

    def _open(self, ev: E.Open) -> None:
        p = self.live.get(ev.pid) or self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        if ev.fd < 0:
            self._attempt(p, ev)
            return
        path = self._resolve_at(p, ev.dirfd, ev.path)
        kind = _KIND_OF_FMT.get(ev.imode & _S_IFMT) or _kind_of_mode(ev.imode)
        flags = ev.flags
        if flags & O_TMPFILE == O_TMPFILE:  # no name until a linkat gives it one
            p.fds[ev.fd] = FdEntry(None, "tmpfile", ev.ino, ev.dev, bool(flags & O_CLOEXEC), flags)
            return
        used = None
        if self._resolved:
            path, used = self._through_link(ev, path)
        p.fds[ev.fd] = FdEntry(path, kind, ev.ino, ev.dev, bool(flags & O_CLOEXEC), flags)
        if kind == "dir" or path is None:
            return
        if kind == "file":
            self._name_inode(p, (ev.dev, ev.ino), path)
        fa = p.access(path, ev.ts_ns) if self._own_cells else self._access(p, path, ev)
        if used is not None:
            if fa.via is None:
                fa.via = set()
            fa.via.add(used)
        if ev.fmode & self.created_mask:
            fa.access.add("create")
        elif flags & O_TRUNC and flags & O_ACCMODE != O_RDONLY and kind == "file":
            fa.access.add("truncate")

    def _attempt(self, p: Proc, ev: E.Open) -> None:
        """A failed open (fd = -errno): one Attempt per (path, errno, cell) of the process."""
        path = self._resolve_at(p, ev.dirfd, ev.path)
        if path is None:
            return
        cell = p.cell if self._own_cells else self.cells.action_cell(p, ev.tid, ev.ts_ns)
        key = (path, -ev.fd, cell)
        if key not in p.attempts:
            write = ev.flags & O_ACCMODE != O_RDONLY or bool(ev.flags & (O_CREAT | O_TRUNC))
            p.attempts[key] = Attempt(path, -ev.fd, write, ev.ts_ns, p.exe, cell)

    def _iouring(self, ev: E.IoUring) -> None:
        """An io_uring: its file I/O is invisible to both backends, so the run says so."""
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        self._gap(f"io_uring used by pid {p.pid}: its file I/O was not traced")

    def _fdio(self, ev: E.FdIO) -> None:
        p = self.live.get(ev.pid) or self._exited_by_pid.get(ev.pid)
        if p is None:
            p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        if ev.flags & E.FDIO_FOLDED:
            self._folded_io(p, ev)
            return
        entry = p.fds.get(ev.fd)
        if entry is not None and ev.ino and entry.ino and (entry.ino != ev.ino or entry.dev != ev.dev):
            self._gap("stale_fd_entry")
            entry = None
        if entry is None:
            entry = self._fd_from_proc(p.pid, ev.fd)
            if entry is not None and ev.ino and (entry.ino != ev.ino):
                entry = None
            if entry is None:
                entry = FdEntry(None, _kind_of_mode(ev.imode), ev.ino, ev.dev)
            p.fds[ev.fd] = entry
        if entry.kind == "pipe" or (entry.path is None and stat.S_ISFIFO(ev.imode)):
            w, r = self.pipes.setdefault((ev.dev, ev.ino), (set(), set()))
            if ev.nwrites:
                w.add(p.pid)
            if ev.nreads:
                r.add(p.pid)
        elif entry.path is not None and entry.kind in ("file", "device", "dir"):  # dir: getdents
            self._count_io(p, entry.path, entry.kind == "dir", ev)
        elif entry.path is None and entry.kind not in ("socket", "pipe", "anon", "tmpfile") and (ev.nreads or ev.nwrites):
            log.debug("event=io-on-unknown-fd pid=%d fd=%d kind=%s imode=%o", p.pid, ev.fd, entry.kind, ev.imode)
            self._gap("io_on_unknown_fd")
        if ev.reason in _FD_GONE:
            p.fds.pop(ev.fd, None)

    def _count_io(self, p: Proc, path: str, directory: bool, ev: E.FdIO) -> None:
        """Add one FdIO's counts to the process's access of path."""
        ts_ns = ev.first_ts_ns or ev.ts_ns
        fa = p.access(path, ts_ns) if self._own_cells else self._access(p, path, ev, ts_ns)
        if ev.ts_ns > fa.last_ns:
            fa.last_ns = ev.ts_ns
        if ev.nreads:
            fa.access.add("read")
            fa.bytes_read += ev.bytes_read
            fa.directory = directory
        if ev.nwrites:
            fa.access.add("write")
            fa.bytes_written += ev.bytes_written
        if ev.map_prot:
            fa.access.add("map")
            if ev.map_prot & PROT_EXEC:
                fa.mapped_exec = True
            if ev.map_prot & PROT_WRITE and ev.flags & E.FDIO_MAP_SHARED:
                fa.access.add("write")

    @staticmethod
    def _name_inode(p: Proc, key: tuple[int, int], path: str) -> None:
        """Remember path as key's name, newest last, keeping at most _FOLDED_NAMES."""
        names = p.paths_by_inode  # an OrderedDict: dropping the oldest is O(1), as a dict's is not
        names[key] = path
        names.move_to_end(key)
        if len(names) > _FOLDED_NAMES:
            names.popitem(last=False)

    def _folded_io(self, p: Proc, ev: E.FdIO) -> None:
        """I/O through opens the kernel folded into an earlier open of the same
        file (docs/capture.md): no fd of ours names it, its (dev, ino) does.
        The fd table is left alone: ev.fd is a count (FLUSH_FOLDED) or an fd
        the model never saw opened."""
        path = p.paths_by_inode.get((ev.dev, ev.ino))
        if path is None:
            if ev.nreads or ev.nwrites:
                self._gap("io_on_unknown_fd")
            return
        self._count_io(p, path, False, ev)

    def _fdop(self, ev: E.FdOp) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        if ev.op == E.FDOP_DUP:
            src = p.fds.get(ev.oldfd) or self._fd_from_proc(p.pid, ev.oldfd)
            if src is None:
                p.fds.pop(ev.newfd, None)
            else:
                p.fds[ev.newfd] = src._replace(cloexec=ev.cloexec)
        elif ev.op == E.FDOP_SETFD:
            e = p.fds.get(ev.oldfd)
            if e is not None:
                p.fds[ev.oldfd] = e._replace(cloexec=ev.cloexec)
        elif ev.op in (E.FDOP_CLOSE_RANGE, E.FDOP_CLOEXEC_RANGE):
            for fd in [fd for fd in p.fds if ev.oldfd <= fd <= ev.newfd]:
                if ev.op == E.FDOP_CLOSE_RANGE:
                    del p.fds[fd]
                else:
                    p.fds[fd] = p.fds[fd]._replace(cloexec=True)

    def _chdir(self, ev: E.Chdir) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        if ev.fd == AT_FDCWD and ev.path is not None:
            p.cwd = self._resolve_at(p, AT_FDCWD, ev.path)
        else:
            entry = p.fds.get(ev.fd)
            p.cwd = entry.path if entry else None
            if p.cwd is None:
                self._gap("fchdir_to_unknown_fd")

    def _rename(self, ev: E.Rename) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        src = self._resolve_at(p, ev.olddirfd, ev.old)
        dst = self._resolve_at(p, ev.newdirfd, ev.new)
        if src is None or dst is None:
            return
        self.sink.on_rename(RenameRec(p.pid, src, dst, ev.ts_ns, self.cells.action_cell(p, ev.tid, ev.ts_ns)))
        # Open fds now name the file by its new path (directories move their contents).
        prefix = src + "/"
        for q in self.live.values():
            for fd, e in q.fds.items():
                if e.path == src:
                    q.fds[fd] = e._replace(path=dst)
                elif e.path and e.path.startswith(prefix):
                    q.fds[fd] = e._replace(path=dst + e.path[len(src):])

    def _unlink(self, ev: E.Unlink) -> None:
        if ev.flags & AT_REMOVEDIR:
            self._rmdir(ev)
            return
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        path = self._resolve_at(p, ev.dirfd, ev.path)
        if path is not None:
            self._access(p, path, ev).access.add("delete")

    def _truncate(self, ev: E.Truncate) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        if ev.path is not None:
            path = self._resolve_at(p, AT_FDCWD, ev.path)
        else:
            entry = p.fds.get(ev.fd)
            path = entry.path if entry else None
        if path is not None:
            self._access(p, path, ev).access.add("truncate")

    def _net(self, ev: E.Net) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        op = {E.NET_CONNECT: "connect", E.NET_ACCEPT: "accept", E.NET_BIND: "bind"}.get(ev.op)
        family, address, port = parse_sockaddr(ev.addr)
        if op == "bind" and family:
            self.bound[(p.pid, ev.fd)] = family
        if op == "accept" and family is None:
            family = self.bound.get((p.pid, ev.fd))
        if op is None or family is None:
            self._gap("unparsed_sockaddr")
            return
        self.sink.on_net(NetRec(p.pid, op, family, address, port, ev.ts_ns,
                                    self.cells.action_cell(p, ev.tid, ev.ts_ns)))


def parse_sockaddr(raw: bytes) -> tuple[str | None, str, int | None]:
    """(family, address, port) of a raw sockaddr; family None when unknown."""
    if len(raw) < 2:
        return None, "", None
    fam = int.from_bytes(raw[:2], "little")
    if fam == AF_INET and len(raw) >= 8:
        return "inet", ".".join(str(b) for b in raw[4:8]), int.from_bytes(raw[2:4], "big")
    if fam == AF_INET6 and len(raw) >= 24:
        import ipaddress  # noqa: PLC0415 - rare path

        return "inet6", str(ipaddress.IPv6Address(raw[8:24])), int.from_bytes(raw[2:4], "big")
    if fam == AF_UNIX:
        body = raw[2:]
        if body[:1] == b"\0":  # abstract namespace
            return "unix", "@" + os.fsdecode(body[1:].rstrip(b"\0")), None
        return "unix", os.fsdecode(body.split(b"\0", 1)[0]), None
    return None, "", None


_S_IFMT = 0o170000  # stat.S_IFMT(mode) is mode & this
_KIND_OF_FMT = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFIFO: "pipe",
                stat.S_IFSOCK: "socket", stat.S_IFCHR: "device", stat.S_IFBLK: "device"}


def _kind_of_mode(mode: int) -> str:
    fmt = stat.S_IFMT(mode)
    kind = _KIND_OF_FMT.get(fmt)
    if kind is not None:
        return kind
    if mode and not fmt:  # anon inodes (eventfd, epoll, timerfd) have no type bits
        return "anon"
    return "unknown"


def _kdev(st_dev: int) -> int:
    """Userspace dev_t -> the kernel's internal (major << 20 | minor) encoding."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


# binfmt_script may run a script as another script's interpreter; exec gives
# up with ELOOP past this many levels (fs/exec.c, search_binary_handler).
_INTERP_DEPTH = 5


def _shebang(path: str) -> str | None:
    """The interpreter of a script, from its '#!' line; None for binaries."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip()
    return os.fsdecode(line.split()[0]) if line else None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def _now_ns() -> int:
    import time  # noqa: PLC0415

    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
