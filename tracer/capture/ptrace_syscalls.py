"""x86_64 syscalls the ptrace backend follows, and the events each becomes.

The set and the semantics mirror the probes (probes/files.bpf.c, net.bpf.c,
process.bpf.c): one stop at entry reads arguments, one at exit decides on the
return value; strings are read at exit, after the kernel used them, except
where the answer needs the state before the call (O_CREAT: did the file
exist?) or the memory is gone after it (execve). fork/clone/exit are not
syscall stops here: ptrace reports them as events (see ptrace.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from ..model import events as E
from . import layouts as L
from .fdagg import FdAggregator, fd_identity
from .ptrace_kernel import Memory
from .syscalls import NR_X86_64 as _NR
from .syscalls import off_syscalls

# x86_64 syscall numbers: the one table the probes' dispatch uses too (syscalls.py)
(READ, WRITE, OPEN, CLOSE, MMAP, PREAD64, PWRITE64, READV, WRITEV, DUP, DUP2, SENDFILE,
    CONNECT, ACCEPT, SENDTO, RECVFROM, SENDMSG, RECVMSG, BIND, EXECVE, FCNTL, TRUNCATE,
    FTRUNCATE, CHDIR, FCHDIR, RENAME, RMDIR, CREAT, UNLINK, OPENAT, UNLINKAT, RENAMEAT, SPLICE,
    ACCEPT4, DUP3, PREADV, PWRITEV, RENAMEAT2, EXECVEAT, COPY_FILE_RANGE, PREADV2, PWRITEV2,
    CLOSE_RANGE, OPENAT2, IOCTL) = (
    _NR[name] for name in (
        "read", "write", "open", "close", "mmap", "pread64", "pwrite64", "readv", "writev", "dup",
        "dup2", "sendfile", "connect", "accept", "sendto", "recvfrom", "sendmsg", "recvmsg",
        "bind", "execve", "fcntl", "truncate", "ftruncate", "chdir", "fchdir", "rename", "rmdir",
        "creat", "unlink", "openat", "unlinkat", "renameat", "splice", "accept4", "dup3", "preadv",
        "pwritev", "renameat2", "execveat", "copy_file_range", "preadv2", "pwritev2",
        "close_range", "openat2", "ioctl",
    ))

# issue 13, reads: directory listings (counted as reads of the directory) and io_uring
GETDENTS, GETDENTS64, IO_URING_SETUP = _NR["getdents"], _NR["getdents64"], _NR["io_uring_setup"]
# links and directories
LINK, LINKAT, SYMLINK, SYMLINKAT, MKDIR, MKDIRAT = (
    _NR[name] for name in ("link", "linkat", "symlink", "symlinkat", "mkdir", "mkdirat"))
LINK_CALLS = frozenset({LINK, LINKAT, SYMLINK, SYMLINKAT, MKDIR, MKDIRAT})

READS = frozenset({READ, READV, PREAD64, PREADV, PREADV2, RECVFROM, RECVMSG, GETDENTS, GETDENTS64})
WRITES = frozenset({WRITE, WRITEV, PWRITE64, PWRITEV, PWRITEV2, SENDTO, SENDMSG})
COPIES = frozenset({SENDFILE, COPY_FILE_RANGE, SPLICE})
OPENS = frozenset({OPEN, OPENAT, OPENAT2, CREAT})
PATH_CALLS = frozenset({CHDIR, FCHDIR, RENAME, RENAMEAT, RENAMEAT2, UNLINK, UNLINKAT, RMDIR,
                        TRUNCATE, FTRUNCATE}) | LINK_CALLS
NET_CALLS = frozenset({CONNECT, BIND, ACCEPT, ACCEPT4})
FD_CALLS = frozenset({CLOSE, CLOSE_RANGE, DUP, DUP2, DUP3, FCNTL, MMAP, IOCTL})
EXECS = frozenset({EXECVE, EXECVEAT})
TRACED = READS | WRITES | COPIES | OPENS | PATH_CALLS | NET_CALLS | FD_CALLS | EXECS | {IO_URING_SETUP}
# Failed opens recorded as attempted accesses (the probes' open_failed)
FAILED_OPEN_ERRNOS = frozenset({errno.ENOENT, errno.EACCES})


def traced_syscalls(off: frozenset[str]) -> frozenset[int]:
    """TRACED less the syscalls of recordings switched off (syscalls.OPTIONAL)."""
    return TRACED - {_NR[name] for name in off_syscalls(off)}

AT_FDCWD, AT_EMPTY_PATH, AT_REMOVEDIR = -100, 0x1000, 0x200
O_CREAT, O_EXCL, O_CLOEXEC = 0o100, 0o200, 0o2000000
MAP_SHARED, MAP_ANONYMOUS = 0x01, 0x20
F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC = 0, 2, 1030
FIONCLEX, FIOCLEX = 0x5450, 0x5451  # ioctl twins of F_SETFD (CPython's set_inheritable uses them)
CLOSE_RANGE_CLOEXEC = 1 << 2
EINPROGRESS = 115
S_IFMT, S_IFDIR, S_IFREG = 0o170000, 0o040000, 0o100000
O_TMPFILE = 0o20000000  # __O_TMPFILE
# Not a kernel bit: the ptrace backend cannot read f_mode, so it decides
# "created" itself and says so with this bit (the Tracker's created_mask).
CREATED_BIT = 1 << 20


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


class Pending:
    """A syscall between its entry and exit stops."""

    __slots__ = ("nr", "args", "path", "created")

    def __init__(self, nr: int, args: tuple[int, ...], path: bytes | None = None,
                 created: bool | None = None) -> None:
        self.nr = nr
        self.args = args
        self.path = path
        self.created = created


class SyscallFolder:
    """Turns one tracee syscall (entry, then exit) into provtrace events."""

    def __init__(self, emit: Callable[[E.Event], None], agg: FdAggregator, mem: Memory,
                 tag: int, gaps: dict[str, int], off: frozenset[str] = frozenset()) -> None:
        self.emit = emit
        self.failed_opens = "failed-opens" not in off  # syscalls.OPTIONAL
        self.agg = agg
        self.mem = mem
        self.tag = tag
        self.gaps = gaps
        self.exec_name: dict[int, str] = {}  # tid -> filename of its last execve attempt
        self._exits = {}
        for nrs, fn in ((READS, self._io), (WRITES, self._io), (COPIES, self._copy),
                        (OPENS, self._open), ((DUP, DUP2, DUP3), self._dup), ((FCNTL,), self._fcntl),
                        ((MMAP,), self._mmap), ((IOCTL,), self._ioctl), ((CHDIR, FCHDIR), self._chdir),
                        ((RENAME, RENAMEAT, RENAMEAT2), self._rename),
                        ((UNLINK, UNLINKAT, RMDIR), self._unlink),
                        ((TRUNCATE, FTRUNCATE), self._truncate), (NET_CALLS, self._net),
                        ((IO_URING_SETUP,), self._io_uring),
                        ((LINK, LINKAT, SYMLINK, SYMLINKAT), self._link),
                        ((MKDIR, MKDIRAT), self._mkdir)):
            for nr in nrs:
                self._exits[nr] = fn
        for nr in TRACED - traced_syscalls(off):  # switched off: not followed at all
            self._exits.pop(nr, None)

    def gap(self, what: str) -> None:
        self.gaps[what] = self.gaps.get(what, 0) + 1

    # -- entry ----------------------------------------------------------------------
    def entry(self, tid: int, tgid: int, nr: int, args: tuple[int, ...], ts: int) -> Pending | None:
        """Handle a syscall entry; a Pending when its exit stop is needed."""
        if nr in self._exits:
            if nr in OPENS:
                return self._open_entry(tid, nr, args)
            if nr == FCNTL and s32(args[1]) not in (F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC):
                return None
            if nr == MMAP and (args[3] & MAP_ANONYMOUS or s32(args[4]) < 0):
                return None
            if nr == IOCTL and args[1] & 0xFFFFFFFF not in (FIOCLEX, FIONCLEX):
                return None
            return Pending(nr, args)
        if nr == CLOSE:  # close() releases the fd even when it fails: flush at entry
            self.agg.flush(tgid, tid, s32(args[0]), L.FLUSH_CLOSE, ts)
        elif nr == CLOSE_RANGE:
            self._close_range(tid, tgid, args, ts)
        elif nr in EXECS:
            self._exec_entry(tid, tgid, nr, args, ts)
        return None

    def _open_entry(self, tid: int, nr: int, args: tuple[int, ...]) -> Pending:
        dirfd, path_at, flags = self._open_args(tid, nr, args)
        if not flags & O_CREAT:
            return Pending(nr, args)
        path = self.mem.cstr(tid, path_at)
        if flags & O_EXCL or path is None:
            return Pending(nr, args, path, True if flags & O_EXCL else None)
        return Pending(nr, args, path, not _exists_for(tid, dirfd, path))

    def _open_args(self, tid: int, nr: int, args: tuple[int, ...]) -> tuple[int, int, int]:
        """(dirfd, path address, flags) of any open flavour."""
        if nr == OPENAT:
            return s32(args[0]), args[1], args[2] & 0xFFFFFFFF
        if nr == OPEN:
            return AT_FDCWD, args[0], args[1] & 0xFFFFFFFF
        if nr == CREAT:
            return AT_FDCWD, args[0], 0o1101  # creat() == open(O_CREAT|O_WRONLY|O_TRUNC)
        flags = self.mem.u64(tid, args[2])  # openat2: struct open_how starts with u64 flags
        return s32(args[0]), args[1], (flags or 0) & 0xFFFFFFFF

    def _close_range(self, tid: int, tgid: int, args: tuple[int, ...], ts: int) -> None:
        first, last = args[0] & 0xFFFFFFFF, min(args[1] & 0xFFFFFFFF, 0x7FFFFFFF)
        if args[2] & CLOSE_RANGE_CLOEXEC:
            self.emit(E.FdOp(ts, tgid, tid, self.tag, L.FDOP_CLOEXEC_RANGE, first, last, True))
            return
        self.agg.flush_range(tgid, tid, first, last, L.FLUSH_CLOSE, ts)
        self.emit(E.FdOp(ts, tgid, tid, self.tag, L.FDOP_CLOSE_RANGE, first, last, False))

    def _exec_entry(self, tid: int, tgid: int, nr: int, args: tuple[int, ...], ts: int) -> None:
        """The exec'd name at entry (as the kernel's bprm->filename has it). argv
        is read at the exec stop, from the new image, as the probes do."""
        if nr == EXECVE:
            name = self.mem.cstr(tid, args[0])
        else:
            name = _execveat_name(self.mem.cstr(tid, args[1]), s32(args[0]), args[4])
        if name is None:
            self.gap("ptrace_unreadable_exec_name")
        else:
            self.exec_name[tid] = os.fsdecode(name)

    # -- exit -----------------------------------------------------------------------
    def exit(self, tid: int, tgid: int, pend: Pending, ret: int, ts: int) -> None:
        self._exits[pend.nr](tid, tgid, pend, ret, ts)

    def _io(self, tid, tgid, pend, ret, ts):
        if ret >= 0:
            self.agg.io(tgid, tid, s32(pend.args[0]), ret, pend.nr in WRITES, ts)

    def _copy(self, tid, tgid, pend, ret, ts):
        if ret >= 0:
            # sendfile(out, in, ...) names out first; copy_file_range and splice name in first
            fd_in, fd_out = ((pend.args[1], pend.args[0]) if pend.nr == SENDFILE
                             else (pend.args[0], pend.args[2]))
            self.agg.io(tgid, tid, s32(fd_in), ret, False, ts)
            self.agg.io(tgid, tid, s32(fd_out), ret, True, ts)

    def _open(self, tid, tgid, pend, ret, ts):
        if ret < 0:
            self._open_failed(tid, tgid, pend, ret, ts)
            return
        dirfd, path_at, flags = self._open_args(tid, pend.nr, pend.args)
        path = pend.path if pend.path is not None else self.mem.cstr(tid, path_at)
        ino, dev, imode = fd_identity(tid, ret)
        self.agg.flush(tgid, tid, ret, L.FLUSH_REPLACED, ts)
        if imode & S_IFMT != S_IFDIR:
            self.agg.opened(tgid, ret, ino, dev, imode, ts)
        if path is None:
            self.gap("ptrace_unreadable_path")
            return
        if pend.created is None and flags & O_CREAT:
            self.gap("ptrace_create_unknown")
        fmode = CREATED_BIT if pend.created else 0
        if imode & S_IFMT == S_IFREG and not flags & O_TMPFILE:
            self._resolve_open(tid, tgid, ret, dirfd, path, ts)
        self.emit(E.Open(ts, tgid, tid, self.tag, ret, dirfd, flags, fmode, ino, dev, imode,
                         os.fsdecode(path)))

    def _open_failed(self, tid, tgid, pend, ret, ts):
        """ENOENT or EACCES: an attempted access, as an Open with fd = -errno.
        Not de-duplicated here: the Tracker keeps one per (path, errno, cell)."""
        if not self.failed_opens or -ret not in FAILED_OPEN_ERRNOS:
            return
        dirfd, path_at, flags = self._open_args(tid, pend.nr, pend.args)
        path = pend.path if pend.path is not None else self.mem.cstr(tid, path_at)
        if path is None:
            self.gap("ptrace_unreadable_path")
            return
        self.emit(E.Open(ts, tgid, tid, self.tag, ret, dirfd, flags, 0, 0, 0, 0, os.fsdecode(path)))

    def _io_uring(self, tid, tgid, pend, ret, ts):
        if ret >= 0:  # io_uring_params (uapi): sq_entries, cq_entries, flags
            self.emit(E.IoUring(ts, tgid, tid, self.tag, ret, self.mem.u32(tid, pend.args[1] + 8) or 0))

    def _dup(self, tid, tgid, pend, ret, ts):
        if ret >= 0:
            cloexec = pend.nr == DUP3 and bool(pend.args[2] & O_CLOEXEC)
            self.agg.flush(tgid, tid, ret, L.FLUSH_REPLACED, ts)
            self.emit(E.FdOp(ts, tgid, tid, self.tag, L.FDOP_DUP, s32(pend.args[0]), ret, cloexec))

    def _fcntl(self, tid, tgid, pend, ret, ts):
        if ret < 0:
            return
        fd, cmd = s32(pend.args[0]), s32(pend.args[1])
        if cmd == F_SETFD:
            self.emit(E.FdOp(ts, tgid, tid, self.tag, L.FDOP_SETFD, fd, fd, bool(pend.args[2] & 1)))
            return
        self.agg.flush(tgid, tid, ret, L.FLUSH_REPLACED, ts)
        self.emit(E.FdOp(ts, tgid, tid, self.tag, L.FDOP_DUP, fd, ret, cmd == F_DUPFD_CLOEXEC))

    def _ioctl(self, tid, tgid, pend, ret, ts):
        if ret == 0:
            fd = s32(pend.args[0])
            cloexec = pend.args[1] & 0xFFFFFFFF == FIOCLEX
            self.emit(E.FdOp(ts, tgid, tid, self.tag, L.FDOP_SETFD, fd, fd, cloexec))

    def _mmap(self, tid, tgid, pend, ret, ts):
        if -4095 <= ret < 0:
            return
        a = self.agg.get(tgid, tid, s32(pend.args[4]), ts)
        a.map_prot |= pend.args[2] & 0xFFFFFFFF
        if pend.args[3] & MAP_SHARED:
            a.flags |= L.FDIO_MAP_SHARED

    def _chdir(self, tid, tgid, pend, ret, ts):
        if ret != 0:
            return
        if pend.nr == FCHDIR:
            self.emit(E.Chdir(ts, tgid, tid, self.tag, s32(pend.args[0]), None))
            return
        path = self.mem.cstr(tid, pend.args[0])
        if path is None:  # fall back to where it ended up
            self.gap("ptrace_unreadable_path")
            path = os.fsencode(os.readlink(f"/proc/{tid}/cwd"))
        self.emit(E.Chdir(ts, tgid, tid, self.tag, AT_FDCWD, os.fsdecode(path)))

    def _rename(self, tid, tgid, pend, ret, ts):
        if ret != 0:
            return
        a = pend.args
        odfd, old_at, ndfd, new_at, flags = ((AT_FDCWD, a[0], AT_FDCWD, a[1], 0) if pend.nr == RENAME
                                             else (s32(a[0]), a[1], s32(a[2]), a[3],
                                                   a[4] & 0xFFFFFFFF if pend.nr == RENAMEAT2 else 0))
        old, new = self.mem.cstr(tid, old_at), self.mem.cstr(tid, new_at)
        if old is None or new is None:
            self.gap("ptrace_unreadable_path")
            return
        self.emit(E.Rename(ts, tgid, tid, self.tag, odfd, ndfd, flags, os.fsdecode(old), os.fsdecode(new)))

    def _unlink(self, tid, tgid, pend, ret, ts):
        if ret != 0:
            return
        a = pend.args
        dirfd, at, flags = ((s32(a[0]), a[1], a[2] & 0xFFFFFFFF) if pend.nr == UNLINKAT
                            else (AT_FDCWD, a[0], AT_REMOVEDIR if pend.nr == RMDIR else 0))
        path = self.mem.cstr(tid, at)
        if path is None:
            self.gap("ptrace_unreadable_path")
            return
        self.emit(E.Unlink(ts, tgid, tid, self.tag, dirfd, flags, os.fsdecode(path)))

    def _truncate(self, tid, tgid, pend, ret, ts):
        if ret != 0:
            return
        length = pend.args[1] - (1 << 64) if pend.args[1] >> 63 else pend.args[1]
        if pend.nr == FTRUNCATE:
            self.emit(E.Truncate(ts, tgid, tid, self.tag, s32(pend.args[0]), length, None))
            return
        path = self.mem.cstr(tid, pend.args[0])
        if path is None:
            self.gap("ptrace_unreadable_path")
            return
        self.emit(E.Truncate(ts, tgid, tid, self.tag, AT_FDCWD, length, os.fsdecode(path)))

    def _net(self, tid, tgid, pend, ret, ts):
        op = {CONNECT: L.NET_CONNECT, BIND: L.NET_BIND}.get(pend.nr, L.NET_ACCEPT)
        if ret < 0 and not (op == L.NET_CONNECT and ret == -EINPROGRESS):
            return
        fd, addr_at, n = s32(pend.args[0]), pend.args[1], pend.args[2]
        if op == L.NET_ACCEPT:  # accept writes the peer's length through a pointer
            n = (self.mem.u32(tid, n) or 0) if n else 0
        addr = self.mem.read(tid, addr_at, min(n & 0xFFFFFFFF, L.PT_SOCKADDR_MAX)) if addr_at else b""
        self.emit(E.Net(ts, tgid, tid, self.tag, op, fd, ret, addr))

    def _link(self, tid, tgid, pend, ret, ts):
        if ret != 0:
            return
        a = pend.args
        op = L.LINK_SYMBOLIC if pend.nr in (SYMLINK, SYMLINKAT) else L.LINK_HARD
        odfd, old_at, ndfd, new_at, flags = {
            LINK: (AT_FDCWD, a[0], AT_FDCWD, a[1], 0),
            SYMLINK: (AT_FDCWD, a[0], AT_FDCWD, a[1], 0),
            LINKAT: (s32(a[0]), a[1], s32(a[2]), a[3], a[4] & 0xFFFFFFFF),
            SYMLINKAT: (AT_FDCWD, a[0], s32(a[1]), a[2], 0),
        }[pend.nr]
        old, new = self.mem.cstr(tid, old_at), self.mem.cstr(tid, new_at)
        if old is None or new is None:
            self.gap("ptrace_unreadable_path")
            return
        self.emit(E.Link(ts, tgid, tid, self.tag, op, odfd, ndfd, flags, os.fsdecode(old), os.fsdecode(new)))

    def _mkdir(self, tid, tgid, pend, ret, ts):
        if ret != 0:
            return
        a = pend.args
        dirfd, at, mode = (s32(a[0]), a[1], a[2]) if pend.nr == MKDIRAT else (AT_FDCWD, a[0], a[1])
        path = self.mem.cstr(tid, at)
        if path is None:
            self.gap("ptrace_unreadable_path")
            return
        self.emit(E.Mkdir(ts, tgid, tid, self.tag, dirfd, mode & 0xFFFFFFFF, os.fsdecode(path)))

    def _resolve_open(self, tid: int, tgid: int, fd: int, dirfd: int, path: bytes, ts: int) -> None:
        """The probes' EV_RESOLVED, by the same test: when the open did not reach
        its file by the names it gave (reached_as_named in files.bpf.c), the
        path the kernel reached (its /proc/TID/fd link), sent before the open."""
        try:
            reached = os.readlink(b"/proc/%d/fd/%d" % (tid, fd))
        except OSError:
            return
        if not reached.startswith(b"/"):
            return
        if reached.endswith(b" (deleted)"):
            reached = reached[: -len(b" (deleted)")]
        if _reached_as_named(tid, dirfd, path, reached):
            return
        # the probes walk at most PT_RESOLVE_DEPTH steps (mount crossings count too): deeper is cut
        cut = reached.count(b"/") > L.PT_RESOLVE_DEPTH
        self.emit(E.Resolved(ts, tgid, tid, self.tag, fd, None if cut else os.fsdecode(reached)))


def _reached_as_named(tid: int, dirfd: int, path: bytes, reached: bytes) -> bool:
    """Is reached's last name path's last component, and its folder the one
    named before it (for a bare name: the cwd or dirfd's folder)?"""
    given, got = path.split(b"/"), reached.split(b"/")
    if given[-1] != got[-1]:
        return False
    if len(given) == 2 and given[0] == b"":  # "/x"
        return True
    if len(given) >= 2:
        return given[-2] == got[-2]
    where = b"/proc/%d/cwd" % tid if dirfd == AT_FDCWD else b"/proc/%d/fd/%d" % (tid, dirfd)
    try:
        return os.path.dirname(reached) == os.readlink(where)
    except OSError:
        return False


def _execveat_name(path: bytes | None, dirfd: int, flags: int) -> bytes | None:
    """The name the kernel gives an execveat (bprm->filename), as sched_process_exec shows it."""
    if path is None:
        return None
    if path.startswith(b"/") or dirfd == AT_FDCWD:
        return path
    if not path and flags & AT_EMPTY_PATH:
        return b"/dev/fd/%d" % dirfd
    return b"/dev/fd/%d/%s" % (dirfd, path)


def _exists_for(tid: int, dirfd: int, path: bytes) -> bool:
    """Does path exist, as the tracee would resolve it now (its cwd or dirfd)?"""
    if not path.startswith(b"/"):
        base = b"/proc/%d/cwd" % tid if dirfd == AT_FDCWD else b"/proc/%d/fd/%d" % (tid, dirfd)
        path = base + b"/" + path
    try:
        os.stat(path)
    except OSError as e:
        # Missing (or a dangling symlink, which O_CREAT creates through): it will be created.
        return e.errno not in (errno.ENOENT, errno.ENOTDIR)
    return True
