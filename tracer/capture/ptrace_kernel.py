"""The kernel interface of the ptrace backend: ptrace(2), process_vm_readv(2)
and seccomp(2), through ctypes on libc. x86_64 only.

Nothing here knows about events: it stops, resumes and reads tracees. Every
call that can race with a tracee's death (SIGKILL can end a tracee in any
stop) raises TraceeGone for ESRCH, which callers treat as "the exit report
is on its way", never as a failure.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

# -- ptrace requests and options (uapi linux/ptrace.h) -------------------------
PTRACE_CONT = 7
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E

O_TRACESYSGOOD, O_TRACEFORK, O_TRACEVFORK, O_TRACECLONE = 0x1, 0x2, 0x4, 0x8
O_TRACEEXEC, O_TRACEEXIT, O_TRACESECCOMP, O_EXITKILL = 0x10, 0x40, 0x80, 1 << 20
OPTIONS = (O_TRACESYSGOOD | O_TRACEFORK | O_TRACEVFORK | O_TRACECLONE | O_TRACEEXEC
           | O_TRACEEXIT | O_TRACESECCOMP | O_EXITKILL)

EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_EXEC = 1, 2, 3, 4
EVENT_EXIT, EVENT_SECCOMP, EVENT_STOP = 6, 7, 128

INFO_NONE, INFO_ENTRY, INFO_EXIT, INFO_SECCOMP = 0, 1, 2, 3
AUDIT_ARCH_X86_64 = 0xC000003E
# Not counted as lost 32-bit calls (as the probes, which see calls return):
# exit and exit_group never return; an exec is recorded by its own event.
IA32_UNCOUNTED = frozenset({1, 252, 11, 358})  # exit, exit_group, execve, execveat (i386)
WALL = 0x40000000  # __WALL: threads (clone children without SIGCHLD) too

# struct ptrace_syscall_info: op, pad[3], arch, ip, sp, then a union of
# entry/seccomp {nr, args[6]} and exit {rval, is_error}.
_INFO_HEAD = struct.Struct("<B3xI16x")
_INFO_CALL = struct.Struct("<24x7Q")
_INFO_RET = struct.Struct("<24xqB")
INFO_SIZE = 88

# -- seccomp (uapi linux/seccomp.h, linux/filter.h) ------------------------------
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_TRACE = 0x7FF00000
PR_SET_NO_NEW_PRIVS = 38
SYS_SECCOMP = 317
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_FILTER = struct.Struct("<HBBI")  # struct sock_filter


class TraceeGone(Exception):
    """The tracee died (ESRCH) between its report and our request."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # The interpreter's own symbols include libc's; find_library("c") would spawn
        # ldconfig, which must never happen in the forked child before exec.
        lib = ctypes.CDLL(None, use_errno=True)
        lib.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
        lib.ptrace.restype = ctypes.c_long
        lib.process_vm_readv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                                         ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong)
        lib.process_vm_readv.restype = ctypes.c_ssize_t
        lib.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong)
        lib.syscall.restype = ctypes.c_long
        _libc = lib
    return _libc


def ptrace(request: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    ret = libc().ptrace(request, pid, addr, data)
    if ret == -1:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise TraceeGone(pid)
        raise OSError(err, f"ptrace(0x{request:x}, pid {pid}): {os.strerror(err)}")
    return ret


def resume(request: int, tid: int, sig: int = 0) -> None:
    """PTRACE_CONT/SYSCALL/LISTEN; a tracee killed meanwhile is not an error."""
    try:
        ptrace(request, tid, 0, sig)
    except TraceeGone:
        pass


def event_msg(tid: int) -> int:
    out = ctypes.c_ulong(0)
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(out))
    return out.value


class SyscallInfo:
    """PTRACE_GET_SYSCALL_INFO into one reused buffer (kernel >= 5.3)."""

    __slots__ = ("_buf", "_addr")

    def __init__(self) -> None:
        self._buf = ctypes.create_string_buffer(INFO_SIZE)
        self._addr = ctypes.addressof(self._buf)

    def get(self, tid: int) -> tuple[int, int, tuple[int, ...]]:
        """(op, arch, payload): payload is (nr, a0..a5) at entry/seccomp,
        (rval, is_error) at exit, () otherwise."""
        ptrace(PTRACE_GET_SYSCALL_INFO, tid, INFO_SIZE, self._addr)
        raw = self._buf.raw
        op, arch = _INFO_HEAD.unpack_from(raw)
        if op in (INFO_ENTRY, INFO_SECCOMP):
            return op, arch, _INFO_CALL.unpack_from(raw)
        if op == INFO_EXIT:
            return op, arch, _INFO_RET.unpack_from(raw)
        return op, arch, ()


class Memory:
    """Reads a tracee's memory with process_vm_readv, page by page.

    process_vm_readv never splits an iovec element, so a string that runs up
    to an unmapped page would fail whole if asked for in one piece; one
    element per page returns every readable page before the hole.
    """

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, max_bytes: int = 8192) -> None:
        self._buf = ctypes.create_string_buffer(max_bytes)
        self._max = max_bytes
        self._local = _IoVec(ctypes.addressof(self._buf), 0)
        self._remote = (_IoVec * (max_bytes // self.PAGE + 2))()
        self.failures = 0

    def read(self, tid: int, addr: int, size: int) -> bytes:
        size = min(size, self._max)
        if not addr or size <= 0:
            return b""
        n, a, end = 0, addr, addr + size
        while a < end:
            step = min(end, (a // self.PAGE + 1) * self.PAGE) - a
            self._remote[n].base, self._remote[n].len = a, step
            a += step
            n += 1
        self._local.len = size
        got = libc().process_vm_readv(tid, ctypes.byref(self._local), 1,
                                      ctypes.byref(self._remote), n, 0)
        if got < 0:
            self.failures += 1
            return b""
        return self._buf.raw[:got]

    def cstr(self, tid: int, addr: int, limit: int = 4096) -> bytes | None:
        """The NUL-terminated string at addr (at most limit bytes with the NUL);
        None when unreadable, the first limit-1 bytes when unterminated."""
        raw = self.read(tid, addr, limit)
        if not raw:
            return None
        nul = raw.find(b"\0")
        return raw[:nul] if nul >= 0 else raw[: limit - 1]

    def u64(self, tid: int, addr: int) -> int | None:
        raw = self.read(tid, addr, 8)
        return int.from_bytes(raw, "little") if len(raw) == 8 else None

    def u32(self, tid: int, addr: int) -> int | None:
        raw = self.read(tid, addr, 4)
        return int.from_bytes(raw, "little") if len(raw) == 4 else None


def seccomp_program(traced_nrs: frozenset[int], mmap_nr: int, map_anonymous: int,
                    ioctl_nr: int, ioctl_cmds: tuple[int, ...]) -> bytes:
    """A classic-BPF filter: SECCOMP_RET_TRACE for traced_nrs, ALLOW for the rest.

    Two calls stop only in their interesting form: mmap when it maps a file
    (MAP_ANONYMOUS clear; malloc's maps are most mmaps) and ioctl for
    ioctl_cmds (FIOCLEX/FIONCLEX, not tty chatter). Foreign ABIs (i386, x32)
    always stop, so the tracer counts them as a gap instead of missing them.
    """
    arg_lo = lambda i: 16 + 8 * i  # noqa: E731 - seccomp_data.args[i], low word (little-endian)
    ins: list[tuple[int, int | str, int | str, int]] = [
        (_LD_W_ABS, 0, 0, 4), (_JEQ_K, "nr", 0, AUDIT_ARCH_X86_64), (_RET_K, 0, 0, SECCOMP_RET_TRACE),
        "nr", (_LD_W_ABS, 0, 0, 0), (_JGE_K, "trace", 0, 0x40000000),
        (_JEQ_K, "mmap", 0, mmap_nr), (_JEQ_K, "ioctl", 0, ioctl_nr)]
    ins += [(_JEQ_K, "trace", 0, nr) for nr in sorted(traced_nrs - {mmap_nr, ioctl_nr})]
    ins += [(_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            "mmap", (_LD_W_ABS, 0, 0, arg_lo(3)), (_JSET_K, "allow", "trace", map_anonymous),
            "ioctl", (_LD_W_ABS, 0, 0, arg_lo(1))]
    ins += [(_JEQ_K, "trace", 0, cmd) for cmd in ioctl_cmds]
    ins += ["allow", (_RET_K, 0, 0, SECCOMP_RET_ALLOW), "trace", (_RET_K, 0, 0, SECCOMP_RET_TRACE)]
    return _assemble(ins)


def _assemble(ins: list) -> bytes:
    """Resolve string labels (forward jumps only, as classic BPF requires) and pack."""
    labels, code = {}, []
    for item in ins:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)
    out = []
    for i, (op, jt, jf, k) in enumerate(code):
        jt, jf = (labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf))
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ValueError(f"seccomp filter jump out of range at {i}")
        out.append(_FILTER.pack(op, jt, jf, k))
    return b"".join(out)


def install_seccomp(program: bytes) -> int:
    """Install a filter on the calling thread (and its future children).
    Returns 0 or an errno. Called in the forked child, just before exec."""
    lib = libc()
    if os.geteuid() != 0 and lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return ctypes.get_errno()
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // _FILTER.size, ctypes.addressof(buf))
    if lib.syscall(ctypes.c_long(SYS_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                   ctypes.c_long(0), ctypes.byref(prog)) != 0:
        return ctypes.get_errno()
    return 0
