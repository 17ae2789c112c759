"""The ptrace backend: the same events as the probes, for hosts or users without eBPF.

PtraceCapture forks the command, attaches with PTRACE_SEIZE while the child
waits on a pipe (so its exec and everything after it is seen), then owns every
waitpid of the traced tree until the last traced process is gone. Each stop
becomes events from tracer/model/events.py handed to `emit` (the Tracker),
with reads and writes aggregated per (process, fd) in userspace as the kernel
side does (fdagg.py), so a run looks the same whichever backend made it.

Speed: a seccomp-bpf filter installed in the child just before exec makes
only the syscalls of ptrace_syscalls.TRACED (less those PROVTRACE_CAPTURE_OFF
switches off) stop (and mmap only for files),
as `strace --seccomp-bpf` does; without it (seccomp refused) every syscall
stops twice. Filters are inherited and cannot be removed, which is why a run
follows every descendant to its end instead of detaching: a detached process
would get ENOSYS from the filter. PTRACE_O_EXITKILL kills the tree if
provtrace itself dies.

Limits: x86_64 only (i386 and x32 syscalls are not decoded: they count as
lost `compat_syscalls`, as the probes count them: once per call, execs and
the exits that never return left out); waitpid(-1) also reaps
children of this process that are not tracees, so the tracer must not share
its process with other child-owning code; "create" is decided by checking, at an O_CREAT open's entry, whether
the file existed (a file made by someone else between entry and exit counts
as created by the tracee).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from ..errors import CaptureUnavailable
from ..model import events as E
from . import gate, sigstate
from . import layouts as L
from . import ptrace_kernel as K
from .decode import argv_from_region
from .fdagg import FdAggregator
from . import syscalls
from .procusage import proc_usage
from .ptrace_syscalls import (CREATED_BIT, EXECS, FIOCLEX, FIONCLEX, IOCTL, MAP_ANONYMOUS, MMAP,
                              Pending, SyscallFolder, traced_syscalls)

log = logging.getLogger(__name__)

_SYSCALL_STOP = signal.SIGTRAP | 0x80
_GROUP_STOP_SIGS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
TICK_EVERY_STOPS = 256

Emit = Callable[[E.Event], None]


class _Task:
    """One traced thread."""

    __slots__ = ("tid", "tgid", "pending", "in_call", "pre_exec")

    def __init__(self, tid: int, tgid: int, pre_exec: bool = False) -> None:
        self.tid = tid
        self.tgid = tgid
        self.pending: Pending | None = None
        self.in_call = False  # between a syscall's entry and exit stops
        self.pre_exec = pre_exec  # the root before its exec: our own child code, not recorded


class PtraceCapture:
    """Usage: status, exec_errno = PtraceCapture().run(exe, argv, env, cwd, tracker.handle, tag)"""

    name = "ptrace"
    owns_wait = True  # the runner must not waitpid: every wait belongs to the tracer
    created_mask = CREATED_BIT

    def __init__(self, *, seccomp: bool = True) -> None:
        if platform.machine() != "x86_64":
            raise CaptureUnavailable(f"the ptrace backend decodes x86_64 syscalls only; this is "
                                     f"{platform.machine()} (use eBPF as root)")
        self.use_seccomp = seccomp
        self.seccomp_active = False
        self.gaps: dict[str, int] = {}
        self.stops = 0
        self.processes = 0
        self.compat_syscalls = 0
        _check_seize()

    def lost(self) -> dict[str, int]:
        """A stopped tracee cannot outrun its tracer, so nothing is dropped; but 32-bit syscalls
        are not decoded, and count as lost under the probes' name for them. Every reason the
        probes count is there, so that a run's JSON is the same on both backends."""
        return {**dict.fromkeys(L.LOST_REASONS, 0), "compat_syscalls": self.compat_syscalls}

    def close(self) -> None:
        return None

    def _gap(self, what: str, n: int = 1) -> None:
        self.gaps[what] = self.gaps.get(what, 0) + n

    # -- running ------------------------------------------------------------------
    def run(self, exe: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, emit: Emit,
            tag: int, *, started: Callable[[int], None] | None = None,
            tick: Callable[[], None] | None = None) -> tuple[int, bytes]:
        """Trace exe until every traced process is gone.

        Returns (wait status of the command, errno digits if its exec failed).
        started(pid) runs once the child is attached, before it may exec.
        """
        K.libc()  # bind libc here: the child must not do it between fork and exec
        self.gaps, self.stops, self.processes, self.compat_syscalls = {}, 0, 0, 0  # per run
        self.seccomp_active = False
        self._emit, self._tag, self._tick = emit, tag, tick or (lambda: None)
        self._info, self._mem = K.SyscallInfo(), K.Memory()
        self._agg = FdAggregator(emit, tag)
        off = syscalls.switched_off()  # PROVTRACE_CAPTURE_OFF
        self._calls = SyscallFolder(emit, self._agg, self._mem, tag, self.gaps, off)
        self._tasks: dict[int, _Task] = {}
        self._usage: dict[int, E.Usage | None] = {}  # tgid -> reading at its exit stop
        self._early: dict[int, int] = {}  # tid -> status reported before its parent's fork event
        self._root_status: int | None = None
        prog = (K.seccomp_program(traced_syscalls(off), MMAP, MAP_ANONYMOUS, IOCTL, (FIOCLEX, FIONCLEX))
                if self.use_seccomp else None)
        pid, go_w, err_r, self._mode_r = _spawn(exe, argv, env, cwd, prog)
        try:
            self._attach(pid)
            self._root = pid
            if started:
                started(pid)
            K.resume(K.PTRACE_SYSCALL, pid)
            gate.release(go_w)
            go_w = -1
            self._loop()
            failed = os.read(err_r, 64)
        except BaseException:
            self._abort()
            raise
        finally:
            for fd in (go_w, err_r, self._mode_r):
                if fd >= 0:
                    os.close(fd)
        if self._mem.failures:
            self.gaps["ptrace_unreadable_memory"] = self._mem.failures
        return self._root_status if self._root_status is not None else 255 << 8, failed

    def _attach(self, pid: int) -> None:
        try:
            K.ptrace(K.PTRACE_SEIZE, pid, 0, K.OPTIONS)
            K.ptrace(K.PTRACE_INTERRUPT, pid)
        except (OSError, K.TraceeGone) as e:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise CaptureUnavailable(
                f"ptrace cannot attach to its own child here ({e}); a seccomp policy, yama "
                f"ptrace_scope=3 or a container may forbid it (see 'provtrace doctor')") from e
        _, status = os.waitpid(pid, K.WALL)
        if not os.WIFSTOPPED(status):
            raise CaptureUnavailable(f"the traced child ended before it could be released "
                                     f"(wait status 0x{status:x})")
        self._tasks[pid] = _Task(pid, pid, pre_exec=True)

    def _abort(self) -> None:
        """The tracer failed: kill the traced tree (stopped tracees would hang) and reap it."""
        log.error("event=ptrace-abort live=%d: killing the traced processes", len(self._tasks))
        for tid in list(self._tasks):
            try:
                os.kill(tid, signal.SIGKILL)
            except ProcessLookupError:
                self._tasks.pop(tid, None)
        while self._tasks:
            try:
                tid, status = os.waitpid(-1, K.WALL)
            except ChildProcessError:
                return
            if os.WIFSTOPPED(status):  # PTRACE_EVENT_EXIT stop on the way out: let it die
                K.resume(K.PTRACE_CONT, tid)
            else:
                self._tasks.pop(tid, None)

    def _loop(self) -> None:
        while self._tasks:
            try:
                tid, status = os.waitpid(-1, K.WALL)
            except ChildProcessError:
                log.warning("event=ptrace-echild live=%d: tracees vanished", len(self._tasks))
                self._gap("ptrace_tracees_vanished", len(self._tasks))
                break
            self.stops += 1
            self._dispatch(tid, status)
            if not self.stops % TICK_EVERY_STOPS:
                self._tick()
        self._agg.flush_all(L.FLUSH_SWEEP, time.monotonic_ns())

    def _dispatch(self, tid: int, status: int) -> None:
        task = self._tasks.get(tid)
        if task is None:  # a new tracee ahead of its parent's fork event, or not ours at all
            self._early[tid] = status
            return
        if os.WIFSTOPPED(status):
            try:
                self._stopped(task, status)
            except K.TraceeGone:
                pass  # killed while stopped: its exit report follows
        else:
            self._gone(task, status)

    def _req(self, task: _Task) -> int:
        return K.PTRACE_SYSCALL if task.in_call or not self.seccomp_active else K.PTRACE_CONT

    def _stopped(self, task: _Task, status: int) -> None:
        sig, event = os.WSTOPSIG(status), status >> 16
        if sig == _SYSCALL_STOP:
            self._syscall_stop(task)
            return
        if event == 0:  # signal-delivery-stop: deliver it, never swallow it
            K.resume(self._req(task), task.tid, sig)
            return
        if event == K.EVENT_SECCOMP:
            self._seccomp_stop(task)
            return
        if event in (K.EVENT_FORK, K.EVENT_VFORK, K.EVENT_CLONE):
            self._fork(task, event)
        elif event == K.EVENT_EXEC:
            task = self._exec(task)
        elif event == K.EVENT_EXIT:
            # still whole at this stop: the latest thread's reading covers the group
            self._usage[task.tgid] = proc_usage(task.tgid)
        elif event == K.EVENT_STOP and sig in _GROUP_STOP_SIGS:
            # group-stop (job control): stay stopped until SIGCONT, but keep reporting
            K.resume(K.PTRACE_LISTEN, task.tid)
            return
        K.resume(self._req(task), task.tid)

    # -- syscalls -------------------------------------------------------------------
    def _syscall_stop(self, task: _Task) -> None:
        op, arch, p = self._info.get(task.tid)
        if op == K.INFO_ENTRY:
            task.in_call = True
            task.pending = self._entry(task, arch, p)
        elif op == K.INFO_EXIT:
            pend, task.pending, task.in_call = task.pending, None, False
            if pend is not None:
                self._calls.exit(task.tid, task.tgid, pend, p[0], time.monotonic_ns())
        K.resume(self._req(task), task.tid)

    def _seccomp_stop(self, task: _Task) -> None:
        if not task.in_call:  # in stepping mode the entry stop came first and was handled
            op, arch, p = self._info.get(task.tid)
            task.pending = self._entry(task, arch, p)
            task.in_call = task.pending is not None
        K.resume(self._req(task), task.tid)

    def _entry(self, task: _Task, arch: int, p: tuple[int, ...]) -> Pending | None:
        nr = p[0]
        if arch != K.AUDIT_ARCH_X86_64 or nr & 0x40000000:  # i386 or x32: other numbers, not decoded
            if nr not in K.IA32_UNCOUNTED:  # counted as the probes count them
                self.compat_syscalls += 1
            return None
        if task.pre_exec:
            if nr not in EXECS:
                return None
            task.pre_exec = False
            self.seccomp_active = self._filter_installed()
        return self._calls.entry(task.tid, task.tgid, nr, p[1:], time.monotonic_ns())

    def _filter_installed(self) -> bool:
        """Did the child install the filter? It wrote S or F just before exec."""
        os.set_blocking(self._mode_r, False)
        try:
            said = os.read(self._mode_r, 1)
        except BlockingIOError:
            said = b""
        if self.use_seccomp and said != b"S":
            log.info("event=ptrace-no-seccomp: every syscall stops (slower)")
            self._gap("ptrace_without_seccomp")
        return said == b"S"

    # -- processes --------------------------------------------------------------------
    def _fork(self, task: _Task, event: int) -> None:
        child = K.event_msg(task.tid)
        tgid, uid = _status_ids(child)
        if tgid is None:
            self._gap("ptrace_child_status_unreadable")
        is_thread = event == K.EVENT_CLONE and tgid == task.tgid
        self._tasks[child] = _Task(child, task.tgid if is_thread else child)
        self._emit(E.Fork(time.monotonic_ns(), task.tgid, task.tid, self._tag,
                          task.tgid if is_thread else child, child, uid or 0, is_thread))
        held = self._early.pop(child, None)
        if held is not None:
            self._dispatch(child, held)

    def _exec(self, task: _Task) -> _Task:
        tgid = task.tid  # after exec the thread reports under the process id
        old = K.event_msg(tgid)
        if old != tgid:  # exec from a non-leader thread: it takes over the leader's id
            moved = self._tasks.pop(old, None)
            if moved is not None:
                moved.tid, moved.tgid = tgid, tgid
                self._tasks[tgid] = task = moved
        name = self._calls.exec_name.pop(old, None)
        if name is None:  # its string was unreadable: name what runs now instead
            self._gap("ptrace_exec_name_from_proc")
            try:
                name = os.readlink(f"/proc/{tgid}/exe")
            except OSError:
                return task  # killed inside exec: its exit report follows
        now = time.monotonic_ns()
        self._agg.flush_process(tgid, tgid, L.FLUSH_EXEC, now)
        uid = _status_ids(tgid)[1]
        self._emit(self._new_argv(tgid, now))
        self._emit(E.Exec(now, tgid, tgid, self._tag, old, uid or 0, name))
        return task

    def _new_argv(self, tgid: int, now: int) -> E.Argv:
        """argv of the image just started, as the probes read it at
        sched_process_exec: its first PT_ARGV_MAX bytes of arg_start..arg_end."""
        try:
            with open(f"/proc/{tgid}/cmdline", "rb") as f:
                region = f.read(L.PT_ARGV_MAX + 1)
        except OSError:
            return E.Argv(now, tgid, tgid, self._tag, (), True)  # the model records the gap
        cut = len(region) > L.PT_ARGV_MAX
        return E.Argv(now, tgid, tgid, self._tag, argv_from_region(region[:L.PT_ARGV_MAX]), cut)

    def _gone(self, task: _Task, status: int) -> None:
        del self._tasks[task.tid]
        self._calls.exec_name.pop(task.tid, None)
        if task.tid != task.tgid:
            return  # a thread; the process ends with its leader, reported last by the kernel
        now = time.monotonic_ns()
        self._agg.flush_process(task.tgid, task.tid, L.FLUSH_EXIT, now)
        self._emit(E.Exit(now, task.tgid, task.tid, self._tag, status, 0,
                          self._usage.pop(task.tgid, None)))
        self.processes += 1
        if task.tgid == self._root:
            self._root_status = status
        self._tick()


def _check_seize() -> None:
    """Fail early, before a run is recorded, where ptrace is forbidden (yama, seccomp, containers)."""
    K.libc()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.read(r, 1)  # EOF when the parent is done
        finally:
            os._exit(0)
    os.close(r)
    try:
        K.ptrace(K.PTRACE_SEIZE, pid, 0, 0)
        err = None
    except (OSError, K.TraceeGone) as e:
        err = e
    finally:
        os.close(w)
        os.waitpid(pid, 0)
    if err is not None:
        raise CaptureUnavailable(f"ptrace is not allowed here ({err}): a seccomp policy, yama "
                                 f"ptrace_scope or a container forbids it (see 'provtrace doctor')")


def _spawn(exe: str, argv: Sequence[str], env: Mapping[str, str], cwd: str,
           prog: bytes | None) -> tuple[int, int, int, int]:
    """Fork the command; it waits on a pipe, installs the filter, then execs.

    Returns (pid, go pipe write end, exec-error read end, seccomp-mode read end).
    """
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    mode_r, mode_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish work until exec
        try:
            for fd in (go_w, err_r, mode_r):
                os.close(fd)
            os.chdir(cwd)
            gate.wait_for_release(go_r)  # exits, never execs, if the tracer dies before release
            sigstate.restore_in_child()  # provtrace's own signal state, not Python's
            if prog is not None:
                os.write(mode_w, b"S" if K.install_seccomp(prog) == 0 else b"F")
            os.execve(exe, list(argv), dict(env))
        except OSError as e:
            os.write(err_w, f"{e.errno}".encode())
        finally:
            os._exit(127)
    for fd in (go_r, err_w, mode_w):
        os.close(fd)
    return pid, go_w, err_r, mode_r


def _status_ids(tid: int) -> tuple[int | None, int | None]:
    """(tgid, real uid) from /proc/TID/status; Nones when it is gone."""
    tgid = uid = None
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    tgid = int(line.split()[1])
                elif line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
                    break
    except (OSError, ValueError):
        return None, None
    return tgid, uid


def self_test() -> str:
    """Trace `true` end to end; the detail line for `provtrace doctor`.

    Raises CaptureUnavailable with the reason when ptrace does not work here.
    """
    true = shutil.which("true") or "/bin/true"
    seen: list[E.Event] = []
    cap = PtraceCapture()
    status, failed = cap.run(true, ["true"], {"PATH": os.defpath}, "/", seen.append, 1)
    if failed or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise CaptureUnavailable(f"a traced `true` did not run cleanly (status 0x{status:x})")
    if not any(isinstance(e, E.Exec) for e in seen):
        raise CaptureUnavailable("a traced `true` ran but its exec was not seen")
    mode = "seccomp-bpf filter" if cap.seccomp_active else "every syscall stops (no seccomp filter)"
    return f"traced `true`: {len(seen)} events in {cap.stops} stops; {mode}"
