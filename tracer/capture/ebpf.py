"""The eBPF backend: the only module that imports bcc.

EbpfCapture compiles probes/*.bpf.c once (struct offsets from BTF passed as
-D defines), attaches them, and hands raw ring-buffer records to a consumer
in batches. The ring-buffer callback does one thing: append the bytes.

Attached are four raw tracepoints (sys_exit, sched_process_fork, _exec,
_exit); the syscall programs are loaded here and written into the dispatch
prog array by syscall number (syscalls.py). Nothing hooks sys_enter.

The sys_exit hook is attached only while something is traced: it costs
every syscall on the machine (~100 ns here), traced or not, so a daemon that
waits for work detaches it after IDLE_DETACH_S with an empty traced set, and
trace() attaches it again first (6-20 ms: the kernel flags every task for
syscall tracing). The sched hooks stay: fork, exec and exit are rare.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import re
import select
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

from ..errors import CaptureUnavailable, ProbeLoadError
from . import btf, features, gate, syscalls
from .layouts import LOST_REASONS

log = logging.getLogger(__name__)

# dispatch.bpf.c last: its sys_exit hook calls io_done from files.bpf.c
PROBE_FILES = ("process.bpf.c", "files.bpf.c", "net.bpf.c", "dispatch.bpf.c")
_DISPATCH_TABLE = b"sys_exit_progs"  # probes/dispatch.bpf.c
# The hook that comes and goes with the traced set; bcc attaches every
# RAW_TRACEPOINT_PROBE on load, this one as raw_tracepoint__sys_exit.
SWITCHED_HOOK = b"sys_exit"
# How long the traced set must stay empty before it is detached.
IDLE_DETACH_S = 2.0
# Most records one poll() or drain() hands over. The consumer takes at most
# this many, processes them, and comes back: its memory stays bounded however
# fast the traced commands produce. What it cannot keep up with waits in the
# ring buffer, and when that is full the probes drop and count it (lost()).
MAX_BATCH = 16384
# Where FMODE_CREATED has lived in struct file's f_mode: bit 20 up to 6.10,
# bit 21 after the 6.11 reshuffle. The calibration picks the right one.
_CREATED_CANDIDATES = (1 << 20, 1 << 21, 1 << 19, 1 << 22)


def probes_dir() -> Path:
    return Path(str(resources.files("provtrace.probes")))


def program_text() -> str:
    """The C program handed to bcc: the probe files, joined.

    bcc rewrites map method calls (traced.lookup) and generates tracepoint
    argument structs only in the main text, not in #included files. So
    common.h (maps and helpers) and the probe files are joined; the probe
    files' own #include "common.h" is then a no-op through its include guard.
    events.h holds types only and is found through -I.
    """
    d = probes_dir()
    return "\n".join((d / name).read_text() for name in ("common.h",) + PROBE_FILES)


@contextlib.contextmanager
def _verifier_log(out: list[str]):
    """Collect what bcc's C code writes to fd 2 (the verifier's log) into out[0].

    The text goes back to stderr afterwards, unchanged, so that nothing is
    hidden; the caller reads the verifier's verdict from it."""
    sys_err = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(sys_err, 2)
            os.close(sys_err)
            tmp.seek(0)
            data = tmp.read()
            out.append(data.decode(errors="replace"))
            if data:
                os.write(2, data)


def verifier_verdict(text: str) -> str:
    """The line in which the kernel's verifier gave its reason for refusing a program
    (the one before its 'processed N insns' summary), or '' when there is none."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("processed ") and " insns" in ln and i > 0:
            return lines[i - 1]
    return ""


def _with_verdict(e: Exception, text: str) -> str:
    verdict = verifier_verdict(text)
    return f"{e} (verifier: {verdict})" if verdict else str(e)


TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
# The tracepoints the probes attach to (raw), by tracefs category.
TRACEPOINTS = (("raw_syscalls", "sys_exit"), ("sched", "sched_process_fork"),
               ("sched", "sched_process_exec"), ("sched", "sched_process_exit"))


def tracepoint_fields(category: str, name: str, roots: tuple[str, ...] = TRACEFS_ROOTS) -> set[str] | None:
    """Field names of a tracepoint's record (tracefs format file); None when the
    tracepoint is missing or tracefs is not mounted."""
    for root in roots:
        try:
            with open(os.path.join(root, "events", category, name, "format")) as f:
                text = f.read()
        except OSError:
            continue
        return set(re.findall(r"field:[^;]*?(\w+)(?:\[\d*\])?;", text))
    return None


def exit_has_group_dead(roots: tuple[str, ...] = TRACEFS_ROOTS) -> bool:
    """Does sched_process_exit pass group_dead (newer kernels: 6.18 here)?

    The argument came with the record field of that name. Older kernels (6.12
    and before) have one argument: a raw tracepoint program that reads a
    second one is refused at attach (EINVAL), so the probe then reads
    whole-process death from task->signal->live instead."""
    return "group_dead" in (tracepoint_fields("sched", "sched_process_exit", roots) or set())


def cflags(offsets: dict[str, int], ringbuf_pages: int,
           off: frozenset[str] = frozenset()) -> list[str]:
    flags = [f"-I{probes_dir()}", f"-DRINGBUF_PAGES={ringbuf_pages}",
             f"-DPT_NR_SLOTS={syscalls.PROG_ARRAY_SIZE}"]
    if "failed-opens" in off:  # syscalls.OPTIONAL: compiled out of files.bpf.c
        flags.append("-DPT_NO_FAILED_OPENS=1")
    group_dead_arg = exit_has_group_dead()
    if group_dead_arg:
        flags.append("-DPT_EXIT_GROUP_DEAD_ARG=1")
    log.debug("event=feature sched_process_exit_group_dead=%s", "argument" if group_dead_arg else "signal_live")
    flags += [f"-DOFF_{name}={value}" for name, value in sorted(offsets.items())]
    # a resource figure this kernel's BTF lacks: -1, and the probe skips it
    flags += [f"-DOFF_{name}=-1" for name in sorted(btf.OPTIONAL - set(offsets))]
    return flags


class EbpfCapture:
    """Loaded probes plus a ring-buffer consumer.

    A Capture (base.py). Usage: cap = EbpfCapture(); cap.trace(pid, tag) (or
    pid = cap.spawn(...)); ... cap.decode(cap.poll(100), decoder) -> [events]
    """

    name = "ebpf"

    def __init__(self, ringbuf_pages: int = 4096) -> None:
        if os.geteuid() != 0:
            raise CaptureUnavailable("eBPF capture needs root (CAP_BPF and CAP_PERFMON); run as root or use a daemon")
        if platform.machine() != syscalls.ARCH:
            raise CaptureUnavailable(
                f"the eBPF probes know the {syscalls.ARCH} syscall numbers and registers only; "
                f"this machine is {platform.machine()}")
        try:
            from bcc import BPF  # noqa: PLC0415 - bcc is optional and heavy
        except ImportError as e:
            raise CaptureUnavailable(
                "bcc is not importable; install Debian's python3-bpfcc and use a venv made with "
                "--system-site-packages from /usr/bin/python3 (setup.sh does both)") from e
        features.require()  # names a missing ring buffer, tracepoint or BTF field
        offsets = btf.kernel_offsets()
        # recordings PROVTRACE_CAPTURE_OFF switches off (syscalls.OPTIONAL)
        self.switched_off = syscalls.switched_off()
        vlog: list[str] = []
        try:
            with _verifier_log(vlog):
                self._bpf = BPF(text=program_text().encode(),
                                cflags=cflags(offsets, ringbuf_pages, self.switched_off))
        except Exception as e:  # bcc raises bare Exception on compile/load failure
            raise ProbeLoadError(f"bcc could not compile or load the probes: {_with_verdict(e, vlog[0])}; "
                                 "run 'provtrace doctor'") from e
        try:
            self._fill_dispatch(BPF.RAW_TRACEPOINT)
        except ProbeLoadError:
            self._bpf.cleanup()
            raise
        self.gaps: dict[str, int] = {}  # the probes count their losses in lost() instead
        self._exec_errors: dict[int, bytes] = {}  # spawned pid -> exec errno digits (b"": it exec'd)
        self._pending: list[bytes] = []
        pending, append = self._pending, self._pending.append
        string_at = ctypes.string_at

        def _on_record(_ctx, data, size):  # the hot path: copy bytes, count, nothing else
            append(string_at(data, size))
            # A negative return ends this consume (libbpf leaves the rest in the ring).
            return -1 if len(pending) >= MAX_BATCH else 0

        self._cb = _on_record
        events = self._bpf[b"events"]
        events.open_ring_buffer(_on_record)
        # Our own epoll over the ring buffer's map fd (readable while records
        # wait, as in libbpf's poll) plus an eventfd, so that another thread
        # can cut a wait short with wake(): the daemon's router sleeps up to
        # 250 ms when idle, and a finish request should not wait that out.
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(events.map_fd, select.EPOLLIN)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._traced = self._bpf[b"traced"]
        self.created_mask = 0
        # Attach state changes and insertions into `traced` happen under one
        # lock: a detach must never slip between an attach and its insert.
        self._hooks_lock = threading.Lock()
        self._attached = True  # bcc attached it on load
        self._empty_since: float | None = None
        self._next_idle_check = 0.0
        with self._hooks_lock:
            self._detach_hooks()  # nothing is traced yet

    @property
    def attached(self) -> bool:
        """Whether the sys_exit hook is attached now."""
        return self._attached

    def _attach_hooks(self) -> None:
        if self._attached:
            return
        try:
            self._bpf.attach_raw_tracepoint(tp=SWITCHED_HOOK, fn_name=b"raw_tracepoint__" + SWITCHED_HOOK)
        except Exception as e:  # bcc raises bare Exception when the kernel refuses
            raise ProbeLoadError(f"could not attach raw tracepoint sys_exit: {e}") from e
        self._attached = True
        log.debug("event=hook-attached tp=sys_exit")

    def _detach_hooks(self) -> None:
        if SWITCHED_HOOK in self._bpf.raw_tracepoint_fds:
            self._bpf.detach_raw_tracepoint(tp=SWITCHED_HOOK)
        self._attached = False
        self._empty_since = None
        log.debug("event=hook-detached tp=sys_exit")

    def _detach_when_idle(self) -> None:
        """Detach the sys_exit hook once the traced set has been empty for IDLE_DETACH_S."""
        now = time.monotonic()
        if not self._attached or now < self._next_idle_check:
            return
        self._next_idle_check = now + 0.5
        with self._hooks_lock:
            if any(True for _ in self._traced.keys()):
                self._empty_since = None
            elif self._empty_since is None:
                self._empty_since = now
            elif now - self._empty_since >= IDLE_DETACH_S:
                self._detach_hooks()

    def _fill_dispatch(self, prog_type: int) -> None:
        """Load each syscall program and write it into its prog-array slots."""
        from bcc import libbcc  # noqa: PLC0415

        mod = self._bpf.module
        names = {libbcc.lib.bpf_function_name(mod, i).decode()
                 for i in range(libbcc.lib.bpf_num_functions(mod))}
        listed = set(syscalls.EXIT_PROGRAMS)
        unlisted = sorted(n for n in names - listed if n.startswith("sysexit_"))
        if unlisted:  # a program written but never dispatched would silently never run
            raise ProbeLoadError(f"syscall programs missing from syscalls.py: {', '.join(unlisted)}")
        slots = self._bpf[_DISPATCH_TABLE]
        for prog, nr in syscalls.slots(syscalls.EXIT_PROGRAMS, syscalls.off_syscalls(self.switched_off)):
            vlog: list[str] = []
            try:
                with _verifier_log(vlog):
                    fn = self._bpf.load_func(prog.encode(), prog_type)  # loaded once, cached by bcc
            except Exception as e:  # bcc raises bare Exception when the verifier refuses
                raise ProbeLoadError(f"probe program {prog} did not load: {_with_verdict(e, vlog[0])}") from e
            slots[ctypes.c_int(nr)] = ctypes.c_int(fn.fd)

    def dispatch_slots(self) -> dict[str, list[int]]:
        """Syscall numbers that have a program, read back from the kernel's prog array
        (keyed by side: only "exit" since nothing hooks sys_enter)."""
        slots = self._bpf[_DISPATCH_TABLE]
        out = []
        for nr in range(syscalls.PROG_ARRAY_SIZE):
            try:
                slots[ctypes.c_int(nr)]
            except KeyError:  # an empty slot
                continue
            out.append(nr)
        return {"exit": out}

    # -- the traced set -----------------------------------------------------
    def trace(self, pid: int, tag: int) -> None:
        """Follow pid (a tgid) and, from now on, every child it forks."""
        key = self._traced.Key(pid)
        val = self._traced.Leaf(tag, 0)
        with self._hooks_lock:
            self._attach_hooks()  # before the insert: its first syscall must be seen
            self._traced[key] = val
            self._empty_since = None

    def untrace(self, pid: int) -> None:
        try:
            del self._traced[self._traced.Key(pid)]
        except KeyError:
            pass

    def traced_pids(self) -> list[int]:
        return [k.value for k in self._traced.keys()]

    def spawn(self, exe: str, argv, env, cwd: str, tag: int, started=None) -> int:
        """Fork exe behind the gate, put it in the traced map, then release it:
        its exec and everything after it is seen. started(pid) runs before the release."""
        child = gate.fork_gated(argv, env, cwd, exe=exe)
        try:
            if started is not None:
                started(child.pid)
            self.trace(child.pid, tag)
            child.release()
        except BaseException:
            child.close()  # never released: it exits without running anything
            os.waitpid(child.pid, 0)
            raise
        self._exec_errors[child.pid] = child.exec_error()  # returns once it exec'd (or failed to)
        return child.pid

    def reap(self, pid: int) -> tuple[int, bytes] | None:
        """(wait status, exec errno digits) once spawned pid has exited, else None."""
        done, status = os.waitpid(pid, os.WNOHANG)
        return (status, self._exec_errors.pop(pid, b"")) if done else None

    def abandon(self) -> None:
        """The consumer failed: the commands run on (untraced once we are gone)."""

    # -- consuming ----------------------------------------------------------
    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms, then return what is available, MAX_BATCH records at most.

        The probes wake this poll only every PT_WAKE_EVERY records per CPU
        (probes/common.h), so it usually sleeps the whole timeout; the consume
        after it takes the records that arrived without a wakeup.
        """
        for fd, _mask in self._epoll.poll(timeout_ms / 1000):
            if fd == self._wake_fd:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:  # another poll took it first
                    pass
        self._bpf.ring_buffer_consume()
        self._detach_when_idle()
        return self.take()

    def wake(self) -> None:
        """End a poll() in progress in another thread now (safe from any thread)."""
        os.eventfd_write(self._wake_fd, 1)

    def drain(self) -> list[bytes]:
        """What is already submitted, without waiting: MAX_BATCH records at most
        (drain_batches() for all of it, a bounded batch at a time)."""
        self._bpf.ring_buffer_consume()
        return self.take()

    def drain_batches(self):
        """Everything already submitted, one bounded batch at a time; ends at
        the first batch short of MAX_BATCH (the ring had caught up)."""
        while True:
            batch = self.drain()
            if batch:
                yield batch
            if len(batch) < MAX_BATCH:
                return

    def take(self) -> list[bytes]:
        out = self._pending[:]
        del self._pending[:]
        return out

    def decode(self, batch: list[bytes], decoder) -> list:
        """A batch of wire records as model events (decoder counts what it could not decode)."""
        return decoder.decode_all(batch)

    def sweep(self, pids: set[int]) -> list:
        """Turn leftover aggregation entries of `pids` into FLUSH_SWEEP events (E.FdIO).

        The kernel sweeps fds below PT_FLUSH_FDS at exec and exit; an entry
        above that, or of a process still alive when tracing stops, ends here.
        """
        from ..model import events as E  # noqa: PLC0415
        from .layouts import FLUSH_SWEEP  # noqa: PLC0415

        agg = self._bpf[b"agg"]
        out = []
        for k, v in list(agg.items()):
            if k.pid not in pids:
                continue
            out.append(E.FdIO(
                ts_ns=v.first_ts_ns, pid=k.pid, tid=k.pid, tag=0, fd=k.fd, reason=FLUSH_SWEEP,
                bytes_read=v.bytes_read, bytes_written=v.bytes_written, nreads=v.nreads,
                nwrites=v.nwrites, ino=v.ino, dev=v.dev, imode=v.imode, map_prot=v.map_prot,
                flags=v.flags, first_ts_ns=v.first_ts_ns))
            try:
                del agg[k]
            except KeyError:
                pass
        return out + self._sweep_folds(pids)

    def _sweep_folds(self, pids: set[int]) -> list:
        """Fold entries (repeated opens, probes/common.h) of `pids` still in
        the kernel, as the FLUSH_FOLDED events (E.FdIO) it would have sent."""
        from ..model import events as E  # noqa: PLC0415
        from .layouts import FDIO_FOLDED, FDIO_SEEN_OPEN, FLUSH_FOLDED  # noqa: PLC0415

        fold = self._bpf[b"fold"]
        out = []
        for k, v in list(fold.items()):
            if k.pid not in pids:
                continue
            if v.nopens:  # fd carries the count of folded opens; the time is the last one's
                out.append(E.FdIO(
                    ts_ns=v.last_ts_ns, pid=k.pid, tid=k.pid, tag=0, fd=v.nopens, reason=FLUSH_FOLDED,
                    bytes_read=v.bytes_read, bytes_written=v.bytes_written, nreads=v.nreads,
                    nwrites=v.nwrites, ino=v.ino, dev=v.dev, imode=v.imode, map_prot=v.map_prot,
                    flags=v.flags | FDIO_FOLDED | FDIO_SEEN_OPEN, first_ts_ns=v.first_ts_ns))
            try:
                del fold[k]
            except KeyError:
                pass
        return out

    def lost(self) -> dict[str, int]:
        """Per-reason counts of events the kernel could not deliver (all CPUs)."""
        table = self._bpf[b"lost"]
        out = {}
        for i, name in enumerate(LOST_REASONS):
            out[name] = int(sum(table[ctypes.c_int(i)]))
        return out

    # -- calibration ----------------------------------------------------------
    def calibrate_created_bit(self, tag: int = 0xFFFFFFFF) -> int:
        """Find FMODE_CREATED by opening a new file and an existing one, traced.

        FMODE_CREATED is a macro (absent from BTF) that moved between kernel
        versions, so the probes report f_mode raw and this decides the bit.
        """
        from ..model import events as E  # noqa: PLC0415
        from .decode import Decoder  # noqa: PLC0415

        me = os.getpid()
        tmpdir = tempfile.mkdtemp(prefix="provtrace-cal-")
        new_path = os.path.join(tmpdir, "new")
        self.trace(me, tag)
        try:
            fd = os.open(new_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            fd = os.open(new_path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        finally:
            self.untrace(me)
            os.unlink(new_path)
            os.rmdir(tmpdir)
        opens = [e for e in Decoder().decode_all(self.drain())
                 if isinstance(e, E.Open) and e.path == new_path]
        if len(opens) != 2:
            raise ProbeLoadError(f"calibration saw {len(opens)} of 2 opens of {new_path}")
        created, existing = opens[0].fmode, opens[1].fmode
        for bit in _CREATED_CANDIDATES:
            if created & bit and not existing & bit:
                self.created_mask = bit
                log.debug("calibrated FMODE_CREATED bit=0x%x", bit)
                return bit
        raise ProbeLoadError(
            f"could not find FMODE_CREATED: f_mode new=0x{created:x} existing=0x{existing:x}")

    def close(self) -> None:
        self._epoll.close()
        os.close(self._wake_fd)
        self._bpf.cleanup()
