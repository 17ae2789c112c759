"""The ptrace backend: the same events as the probes, for hosts or users without eBPF.

PtraceCapture.spawn forks the command behind the fork gate (gate.py), and a
tracer thread of its own attaches with PTRACE_SEIZE while the child waits on
the gate (so its exec and everything after it is seen), then owns every
waitpid of the traced tree until the last traced process is gone. Each stop
becomes events from tracer/model/events.py, queued for poll() like the
probes' ring buffer (a Capture, base.py: the pipeline consumes both alike),
with reads and writes aggregated per (process, fd) in userspace as the kernel
side does (fdagg.py), so a run looks the same whichever backend made it. The
queue is bounded: a full one holds the tracer thread, and so the stopped
tracees, until the consumer catches up (nothing is dropped).

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
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from ..errors import CaptureUnavailable
from ..model import events as E
from . import gate
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
MAX_BATCH = 4096  # events one poll() returns at most, as the probes' consumer
MAX_QUEUED = 4 * MAX_BATCH  # queued events beyond which the tracer thread waits for the consumer

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
    """A Capture (base.py) for commands it starts itself.

    Usage: pid = cap.spawn(exe, argv, env, cwd, tag); then cap.poll(100) -> [events]
    until cap.reap(pid) returns (wait status, exec errno digits).
    """

    name = "ptrace"
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
        self._cond = threading.Condition()
        self._queue: list[E.Event] = []
        self._thread: threading.Thread | None = None
        self._finished = True  # no tree being traced
        self._closing = False
        self._error: BaseException | None = None
        self._result: tuple[int, bytes] | None = None
        self._root = -1
        self._tasks: dict[int, _Task] = {}
        _check_seize()

    def lost(self) -> dict[str, int]:
        """A stopped tracee cannot outrun its tracer, so nothing is dropped; but 32-bit syscalls
        are not decoded, and count as lost under the probes' name for them. Every reason the
        probes count is there, so that a run's JSON is the same on both backends."""
        return {**dict.fromkeys(L.LOST_REASONS, 0), "compat_syscalls": self.compat_syscalls}

    def _gap(self, what: str, n: int = 1) -> None:
        self.gaps[what] = self.gaps.get(what, 0) + n

    # -- the Capture protocol (base.py) -----------------------------------------
    def trace(self, pid: int, tag: int) -> None:
        raise CaptureUnavailable("the ptrace backend follows only the commands it starts itself "
                                 "(spawn); tracing a running process needs eBPF")

    def untrace(self, pid: int) -> None:
        """Nothing to do: the seccomp filter cannot be removed, so every descendant
        is followed to its end (a detached one would get ENOSYS)."""

    def traced_pids(self) -> list[int]:
        with self._cond:
            finished = self._finished
        return [] if finished else sorted({self._tasks[t].tgid for t in _keys(self._tasks) if t in self._tasks})

    def decode(self, batch: list, decoder) -> list[E.Event]:
        return batch  # the tracer thread queues model events already

    def sweep(self, pids: set[int]) -> list[E.Event]:
        """Nothing left: the tracer thread flushed every fd counter as its tree ended."""
        return []

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def poll(self, timeout_ms: int) -> list[E.Event]:
        """Wait up to timeout_ms for events, then return MAX_BATCH of them at most.
        A failure of the tracer thread is raised here, once its events are taken."""
        with self._cond:
            if not self._queue and not self._finished:
                self._cond.wait(timeout_ms / 1000)
            return self._take()

    def drain_batches(self):
        """What is queued now, one bounded batch at a time."""
        while True:
            with self._cond:
                batch = self._take()
            if batch:
                yield batch
            if len(batch) < MAX_BATCH:
                return

    def _take(self) -> list[E.Event]:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._cond.notify_all()  # the tracer thread may wait for room
        if not batch and self._finished and self._error is not None:
            error, self._error = self._error, None
            raise error
        return batch

    def spawn(self, exe: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, tag: int,
              started: Callable[[int], None] | None = None) -> int:
        """Fork exe behind the gate, attach, and trace it (and every descendant)
        on a tracer thread; returns its pid once it is released. started(pid)
        runs (on the tracer thread) once it is attached, before it may exec."""
        K.libc()  # bind libc here: the child must not do it between fork and exec
        if not self._finished:
            raise CaptureUnavailable("this ptrace capture is tracing a command already")
        self.gaps, self.stops, self.processes, self.compat_syscalls = {}, 0, 0, 0  # per run
        self.seccomp_active = False
        self._queue, self._error, self._result, self._finished = [], None, None, False
        self._closing = False
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._trace_tree, args=(exe, argv, env, cwd, tag, started, ready),
            name="provtrace-ptrace", daemon=True)
        self._thread.start()
        ready.wait()
        with self._cond:
            if self._root < 0 and self._error is not None:  # it never got going
                error, self._error = self._error, None
                raise error
        return self._root

    def reap(self, pid: int) -> tuple[int, bytes] | None:
        """(wait status, exec errno digits) of pid once its whole tree is gone
        (every descendant is followed to its end), else None."""
        with self._cond:
            return self._result if self._finished and pid == self._root else None

    def abandon(self) -> None:
        """The consumer failed: kill the traced tree (stopped tracees would hang) and reap it."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for tid in _keys(self._tasks):  # wakes the tracer thread's waitpid; it kills the rest
            try:
                os.kill(tid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def close(self) -> None:
        if not self._finished:
            self.abandon()

    # -- the tracer thread ----------------------------------------------------------
    def _put(self, ev: E.Event) -> None:
        """Queue one event; a full queue holds the tracer (so the tracees) for the consumer."""
        with self._cond:
            while len(self._queue) >= MAX_QUEUED and not self._closing:
                self._cond.wait(0.5)
            self._queue.append(ev)
            if len(self._queue) >= MAX_BATCH:
                self._cond.notify_all()

    def _trace_tree(self, exe: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, tag: int,
                    started: Callable[[int], None] | None, ready: threading.Event) -> None:
        """Tracer thread: every ptrace request and waitpid of the tree happens here."""
        self._root = -1
        try:
            self._result = self._follow(exe, argv, env, cwd, tag, started, ready)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer by poll()
            self._error = e
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()
            ready.set()

    def _follow(self, exe: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, tag: int,
                started: Callable[[int], None] | None, ready: threading.Event) -> tuple[int, bytes]:
        self._emit, self._tag = self._put, tag
        self._info, self._mem = K.SyscallInfo(), K.Memory()
        self._agg = FdAggregator(self._put, tag)
        off = syscalls.switched_off()  # PROVTRACE_CAPTURE_OFF
        self._calls = SyscallFolder(self._put, self._agg, self._mem, tag, self.gaps, off)
        self._tasks = {}
        self._usage: dict[int, E.Usage | None] = {}  # tgid -> reading at its exit stop
        self._early: dict[int, int] = {}  # tid -> status reported before its parent's fork event
        self._root_status: int | None = None
        prog = (K.seccomp_program(traced_syscalls(off), MMAP, MAP_ANONYMOUS, IOCTL, (FIOCLEX, FIONCLEX))
                if self.use_seccomp else None)
        mode_r, mode_w = os.pipe2(os.O_CLOEXEC)
        self._mode_r = mode_r

        def install_filter() -> None:  # in the child, just before exec
            if prog is not None:
                os.write(mode_w, b"S" if K.install_seccomp(prog) == 0 else b"F")

        child = gate.fork_gated(argv, env, cwd, exe=exe, before_exec=install_filter)
        os.close(mode_w)
        try:
            self._attach(child.pid)
            if started:
                started(child.pid)
            self._root = child.pid
            K.resume(K.PTRACE_SYSCALL, child.pid)
            child.release()
            ready.set()
            self._loop()
            failed = child.exec_error()
        except BaseException:
            self._abort()
            raise
        finally:
            child.close()
            os.close(mode_r)
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
            if self._closing:  # the consumer gave up on this tree
                raise CaptureUnavailable("the traced command was abandoned by its consumer")
            try:
                tid, status = os.waitpid(-1, K.WALL)
            except ChildProcessError:
                log.warning("event=ptrace-echild live=%d: tracees vanished", len(self._tasks))
                self._gap("ptrace_tracees_vanished", len(self._tasks))
                break
            self.stops += 1
            self._dispatch(tid, status)
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


def _keys(tasks: dict[int, _Task]) -> list[int]:
    """The task ids now, read from another thread than the tracer's (which may
    change the dict meanwhile: then read again)."""
    while True:
        try:
            return list(tasks)
        except RuntimeError:
            continue


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
    pid = cap.spawn(true, ["true"], {"PATH": os.defpath}, "/", 1)
    while (done := cap.reap(pid)) is None:
        seen += cap.poll(100)
    for batch in cap.drain_batches():
        seen += batch
    status, failed = done
    if failed or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise CaptureUnavailable(f"a traced `true` did not run cleanly (status 0x{status:x})")
    if not any(isinstance(e, E.Exec) for e in seen):
        raise CaptureUnavailable("a traced `true` ran but its exec was not seen")
    mode = "seccomp-bpf filter" if cap.seccomp_active else "every syscall stops (no seccomp filter)"
    return f"traced `true`: {len(seen)} events in {cap.stops} stops; {mode}"
