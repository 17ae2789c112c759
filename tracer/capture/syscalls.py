"""Which probe program handles which syscall, by x86_64 syscall number.

The probes hook one raw syscall tracepoint, raw_syscalls:sys_exit, and
tail-call into one program per kind of syscall through a BPF_PROG_ARRAY
indexed by syscall number (probes/dispatch.bpf.c). This module is the index:
program name -> the syscalls it serves. Nothing runs at sys_enter: each hook
there would cost every syscall on the machine.

The numbers are the x86_64 table (asm/unistd_64.h); they are ABI, so they do
not change between kernels. Other architectures number syscalls differently
and pass arguments in other registers: the eBPF backend refuses to start there
(ARCH). 32-bit (ia32) syscalls of a traced process arrive with other numbers;
the probes recognise them by the task's TS_COMPAT bit, skip them and count
them under the `compat_syscalls` lost reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

ARCH = "x86_64"

# Every array slot above the highest number is empty: a tail call there falls
# through, so x32 syscalls (bit 30 set) are never dispatched.
PROG_ARRAY_SIZE = 512

NR_X86_64: dict[str, int] = {
    "read": 0, "write": 1, "open": 2, "close": 3, "mmap": 9, "ioctl": 16,
    "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20,
    "dup": 32, "dup2": 33, "sendfile": 40, "connect": 42, "accept": 43,
    "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "bind": 49,
    "execve": 59, "fcntl": 72, "truncate": 76, "ftruncate": 77,
    "chdir": 80, "fchdir": 81, "rename": 82, "rmdir": 84, "creat": 85, "unlink": 87,
    "openat": 257, "unlinkat": 263, "renameat": 264, "splice": 275, "accept4": 288,
    "dup3": 292, "preadv": 295, "pwritev": 296, "renameat2": 316, "execveat": 322,
    "copy_file_range": 326, "preadv2": 327, "pwritev2": 328,
    "close_range": 436, "openat2": 437,
    # issue 13, reads: directory listings and io_uring
    "getdents": 78, "getdents64": 217, "io_uring_setup": 425,
    # links and directories
    "mkdir": 83, "link": 86, "symlink": 88, "mkdirat": 258, "linkat": 265, "symlinkat": 266,
}

# Counted by the dispatcher itself, without a tail call: the most frequent
# syscalls of all, so the cheapest path (probes/dispatch.bpf.c).
INLINE: tuple[str, ...] = ("read", "write")

# Numbered for the ptrace backend, but no syscall program of the probes: an
# exec is recorded at sched_process_exec, argv included.
NOT_DISPATCHED: tuple[str, ...] = ("execve", "execveat")

# Programs tail-called at sys_exit; they read their arguments from the saved
# user registers, which the kernel leaves as the caller set them.
EXIT_PROGRAMS: dict[str, tuple[str, ...]] = {
    "sysexit_open": ("open",),
    "sysexit_openat": ("openat",),
    "sysexit_creat": ("creat",),
    "sysexit_openat2": ("openat2",),
    "sysexit_read": ("readv", "pread64", "preadv", "preadv2", "recvfrom", "recvmsg",
                     "getdents", "getdents64"),
    "sysexit_write": ("writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg"),
    "sysexit_sendfile": ("sendfile",),
    "sysexit_copy": ("copy_file_range", "splice"),
    "sysexit_mmap": ("mmap",),
    "sysexit_close": ("close",),
    "sysexit_close_range": ("close_range",),
    "sysexit_dup": ("dup", "dup2"),
    "sysexit_dup3": ("dup3",),
    "sysexit_fcntl": ("fcntl",),
    "sysexit_ioctl": ("ioctl",),
    "sysexit_chdir": ("chdir",),
    "sysexit_fchdir": ("fchdir",),
    "sysexit_rename": ("rename",),
    "sysexit_renameat": ("renameat",),
    "sysexit_renameat2": ("renameat2",),
    "sysexit_unlink": ("unlink",),
    "sysexit_unlinkat": ("unlinkat",),
    "sysexit_rmdir": ("rmdir",),
    "sysexit_truncate": ("truncate",),
    "sysexit_ftruncate": ("ftruncate",),
    "sysexit_connect": ("connect",),
    "sysexit_bind": ("bind",),
    "sysexit_accept": ("accept", "accept4"),
    "sysexit_io_uring_setup": ("io_uring_setup",),
    # links and directories
    "sysexit_link": ("link",),
    "sysexit_linkat": ("linkat",),
    "sysexit_symlink": ("symlink",),
    "sysexit_symlinkat": ("symlinkat",),
    "sysexit_mkdir": ("mkdir",),
    "sysexit_mkdirat": ("mkdirat",),
}

# Recording that can be switched off, for measuring what it costs against
# before in one bench run (docs/benchmarks.md): PROVTRACE_CAPTURE_OFF is a
# comma-separated list of these names. Both backends honour it.
CAPTURE_OFF_ENV = "PROVTRACE_CAPTURE_OFF"
OPTIONAL: dict[str, tuple[str, ...]] = {
    "dir-reads": ("getdents", "getdents64"),  # these syscalls are not followed
    "failed-opens": (),  # opens that fail are not recorded (the open syscalls still are)
}


def switched_off(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The OPTIONAL recordings that PROVTRACE_CAPTURE_OFF switches off; unknown names are ignored."""
    raw = (os.environ if env is None else env).get(CAPTURE_OFF_ENV, "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    unknown = names - OPTIONAL.keys()
    if unknown:
        log.warning("%s: ignoring unknown %s (known: %s)", CAPTURE_OFF_ENV,
                    ", ".join(sorted(unknown)), ", ".join(OPTIONAL))
    return frozenset(names & OPTIONAL.keys())


def off_syscalls(off: frozenset[str]) -> frozenset[str]:
    """Syscall names not followed when the recordings in `off` are switched off."""
    return frozenset(name for what in off for name in OPTIONAL[what])


def slots(programs: dict[str, tuple[str, ...]],
          skip: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
    """(program, syscall number) pairs to write into a prog array, `skip`ped names left out."""
    return [(prog, NR_X86_64[name]) for prog, names in programs.items() for name in names
            if name not in skip]
