"""`provtrace run`: trace one command and every descendant, from its first instruction.

Start-up without a race: the child is forked and blocks on a pipe; its pid
goes into the kernel's traced map; only then is it released to exec. So the
exec itself and everything after it is seen.
"""

from __future__ import annotations

import datetime as dt
import gc
import getpass
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from .capture import gate, sigstate
from .capture.decode import Decoder
from .clock import Clock
from .clock import us_to_iso as iso
from .errors import CommandNotFound, StoreWriteError, TracerError, UsageError
from .model.processes import Tracker
from .store import sqlite as S
from .store import finisher as F
from .store.writer import RunWriter, stdio_files

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.5
FLUSH_ROWS = 5000


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def _redactor():
    try:
        from .context.redact import redact_argv  # noqa: PLC0415
    except ImportError:
        return None
    return redact_argv


class TracedCommand:
    """One traced command run into one store. Call run(); it returns the exit code."""

    def __init__(self, argv: Sequence[str], *, store: S.Store, label: str | None = None,
                 cwd: str | None = None, env: Mapping[str, str] | None = None,
                 capture=None, on_finished: Callable[[int], None] | None = None,
                 gaps: Sequence[Mapping] = ()) -> None:
        if not argv:
            raise UsageError("no command given: provtrace run [OPTIONS] -- CMD [ARG...]")
        self.argv = list(argv)
        self.store = store
        self.label = label
        self.cwd = cwd or os.getcwd()
        self.env = dict(os.environ if env is None else env)
        self.capture = capture
        self.on_finished = on_finished
        self.gap_records = [dict(g) for g in gaps]  # known before the start: how capture is degraded
        self.run_id = new_run_id()
        self.rid: int | None = None  # None when the store could not take the run at all
        self.lost: dict[str, int] = {}
        # The store's last write error, when one failed: the command still ran
        # (untraced when even the run's start could not be written).
        self.store_error: str | None = None
        self.ran_untraced = False
        self.ended_in_store = False

    def run(self) -> int:
        exe = find_executable(self.argv[0], self.cwd, self.env)
        # what the child execs: argv[0] as given when it names a path (a #! script
        # sees the same $0 as untraced), else the PATH match, as execvp finds it
        self.exec_path = self.argv[0] if "/" in self.argv[0] else exe
        if self.capture is None:
            from .capture.ebpf import EbpfCapture  # noqa: PLC0415

            self.capture = EbpfCapture()
        cap = self.capture
        if not cap.created_mask:
            cap.calibrate_created_bit()
        clock = Clock()
        redact = _redactor()
        uid = os.getuid()
        started_us = time.time_ns() // 1000
        header = {"id": self.run_id, "kind": "command",
                  "backend": getattr(cap, "name", "ebpf"), "label": self.label,
                  "argv": redact(self.argv) if redact else self.argv, "cwd": self.cwd,
                  "host": socket.gethostname(), "user": _user(uid), "uid": uid,
                  "started": iso(started_us), "start_us": started_us, "exe": os.path.normpath(exe)}
        try:
            self.rid = self.store.new_run(self.run_id, header)
        except StoreWriteError as e:  # nothing can be recorded: the command still runs
            self.store_error, self.ran_untraced = str(e), True
            return run_untraced(self.argv, self.cwd, self.env, exe)
        for g in self.gap_records:
            self.store.append(self.rid, S.GAP, g)
        # the command inherits our stdout and stderr: files there are its log, not its data
        writer = RunWriter(self.store, self.rid, clock, redact, base_us=started_us, stdio=stdio_files())
        tracker = Tracker(writer, cap.created_mask)
        decoder = Decoder()
        tag = 1 + (self.rid % 0x7FFFFFFF)

        if getattr(cap, "owns_wait", False):  # ptrace: the backend owns fork, attach and waitpid
            lost_before: dict[str, int] = {}  # it counts per run
            status, failed = self._run_owned(cap, tracker, tag, uid)
        else:  # the probes count for as long as they are loaded, over every run they traced
            lost_before = cap.lost()
            status, failed = self._run_ebpf(cap, tracker, decoder, tag, uid)
        tracker.finish_all(Clock.now_mono_ns())
        self.lost = {k: v - lost_before.get(k, 0) for k, v in cap.lost().items()}
        lost_total = sum(self.lost.values())
        exit_code = sigstate.exit_code(status)
        if failed:
            writer.store.append(self.rid, S.GAP, {"what": "exec_failed", "errno": int(failed)})
        gaps = dict(tracker.gaps)
        if decoder.bad:
            gaps["undecodable_records"] = decoder.bad
        gaps.update(getattr(cap, "gaps", {}))
        released_us = time.time_ns() // 1000
        end = {"ended": iso(released_us), "exit_code": exit_code,
               "signal": status & 0x7F if os.WIFSIGNALED(status) else None,
               "lost_events": lost_total, "lost_by_reason": self.lost,
               "complete": lost_total == 0, "gaps": gaps,
               "processes": writer.processes, "files": writer.files}
        # Completed here, before the exit code is returned (docs/capture.md, "The
        # end of a run"), with the same guard as the daemon's finisher: a file
        # changed since the snapshot gets no hash.
        job = F.Completion(self.run_id, self.rid, end, released_us,
                           snapshots=F.snapshot(writer.touched.union(*writer.renamed_to.values())),
                           context=lambda: self._context(tracker, writer))
        try:
            F.complete(self.store, job)
            self.ended_in_store = True
        except StoreWriteError as e:  # the run stays open: recovery closes it, incomplete
            self.store_error = str(e)
        if failed:
            raise CommandNotFound(self.argv[0], os.strerror(int(failed)))
        if self.on_finished:
            self.on_finished(self.rid)
        return exit_code

    def _run_ebpf(self, cap, tracker: Tracker, decoder: Decoder, tag: int,
                  uid: int) -> tuple[int, bytes]:
        """Fork, hold the child until its pid is in the traced map, release, follow."""
        # Sampled before the fork: the child holds no GPU yet, and NVML's first
        # call (~50 ms) must not sit between the root's start time and its exec.
        self._gpu_samples = [_gpu_sample([])]
        with sigstate.Relay() as relay:  # before the fork: ^C must not stop us first
            go_r, go_w = os.pipe()
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:  # child: wait until traced, then exec
                try:
                    os.close(go_w)
                    os.close(err_r)
                    os.chdir(self.cwd)
                    gate.wait_for_release(go_r)  # exits, never execs, if we die before release
                    sigstate.restore_in_child()
                    os.execve(self.exec_path, self.argv, self.env)
                except OSError as e:
                    os.write(err_w, f"{e.errno}".encode())
                finally:
                    os._exit(127)
            relay.pid = pid
            os.close(go_r)
            os.close(err_w)
            tracker.add_root(pid, Clock.now_mono_ns(), self.argv, self.cwd, uid, tag=tag)
            cap.trace(pid, tag)
            gate.release(go_w)
            failed = os.read(err_r, 64)
            os.close(err_r)
            status = self._loop(pid, cap, tracker, decoder)
        self._gpu_samples.append(_gpu_sample(list(tracker.live)))
        for leftover in set(cap.traced_pids()) & set(tracker.live):  # outlived the command
            cap.untrace(leftover)
        tracker.handle_all(decoder.decode_all(cap.sweep(set(tracker.live) | {p.pid for p in tracker.exited})))
        return status, failed

    def _run_owned(self, cap, tracker: Tracker, tag: int, uid: int) -> tuple[int, bytes]:
        """A backend that forks and waits itself (ptrace): we hand it the model and a tick."""
        last_flush = [time.monotonic()]
        relay = sigstate.Relay()

        def started(pid: int) -> None:
            tracker.add_root(pid, Clock.now_mono_ns(), self.argv, self.cwd, uid, tag=tag)
            self._gpu_samples = [_gpu_sample([pid])]
            relay.pid = pid

        def tick() -> None:
            tracker.finish_exited()
            now = time.monotonic()
            if self.store.pending >= FLUSH_ROWS or now - last_flush[0] >= FLUSH_EVERY_S:
                self._flush()
                last_flush[0] = now

        with relay:
            status, failed = cap.run(self.exec_path, self.argv, self.env, self.cwd, tracker.handle,
                                     tag, started=started, tick=tick)
        self._gpu_samples.append(_gpu_sample(list(tracker.live)))
        return status, failed

    def _loop(self, pid: int, cap, tracker: Tracker, decoder: Decoder) -> int:
        last_flush = time.monotonic()
        status = None
        # The model keeps what it learns (processes, fd tables, per-path
        # accesses) until a process exits, so the cyclic GC keeps promoting
        # it and every full collection walks all of bcc, ctypes and the
        # modules loaded at start-up too. Frozen, those are skipped; thawed
        # when the command ends, so nothing stays out of collection.
        gc.freeze()
        try:
            while status is None:
                batch = cap.poll(100)  # bounded: memory does not grow with the event rate
                done, st = os.waitpid(pid, os.WNOHANG)
                apply_batch(batch, cap, tracker, decoder)
                if done:
                    status = st
                    for rest in cap.drain_batches():  # the root's exit is already in the ring buffer
                        apply_batch(rest, cap, tracker, decoder)
                now = time.monotonic()
                if self.store.pending >= FLUSH_ROWS or now - last_flush >= FLUSH_EVERY_S:
                    self._flush()
                    last_flush = now
        finally:
            gc.unfreeze()
        return status

    def _flush(self) -> None:
        """A flush that a full disk cannot stop: the store counts what it dropped."""
        try:
            self.store.flush()
        except StoreWriteError as e:
            self.store_error = str(e)

    @property
    def store_warning(self) -> str | None:
        """One line for the user when the store failed during this run, else None."""
        if self.store_error is None:
            return None
        if self.ran_untraced:
            return f"{self.store_error}; the command ran untraced"
        lost = self.store.lost_records.get(self.rid, 0) if self.rid is not None else 0
        if self.ended_in_store:
            return f"{self.store_error}; {lost} records lost, run {self.run_id} marked incomplete"
        return (f"{self.store_error}; run {self.run_id} was left open (the daemon, or the next "
                "run on this store, closes it as incomplete)")

    def _context(self, tracker: Tracker, writer: RunWriter) -> dict | None:
        """Execution context (issue 4); None without the context package."""
        try:
            from .context.collect import collect_run_context, gpu_accounting  # noqa: PLC0415
        except ImportError:
            return None
        touched, mapped, execd = (sorted(writer.touched), sorted(writer.mapped),
                                  sorted(writer.execd))
        try:
            ctx = collect_run_context(pids=list(tracker.live), touched_paths=touched,
                                      mapped_paths=mapped, exec_paths=execd, env=self.env,
                                      gpu_samples=[s for s in self._gpu_samples if s])
            ctx["gpu_accounting"] = gpu_accounting(sorted(writer.pids))
        except TracerError as e:
            ctx = {"error": str(e)}
        return ctx


def find_executable(argv0: str, cwd: str, env: Mapping[str, str]) -> str:
    """The file argv0 names, as execve will run it; CommandNotFound otherwise."""
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) else os.path.join(cwd, argv0)
        if not os.path.exists(path):
            raise CommandNotFound(argv0, "no such file")
        if not os.access(path, os.X_OK):
            raise CommandNotFound(argv0, "permission denied (not executable)")
        return path
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if not found:
        raise CommandNotFound(argv0, "command not found in PATH")
    return found


def run_untraced(argv: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None,
                 exe: str | None = None) -> int:
    """Runs argv without tracing and returns its exit code (128+N when killed by
    signal N): what `provtrace run` does when nothing can be recorded, so the
    user's command still runs. ^C goes to the command, as when traced."""
    cwd = cwd or os.getcwd()
    env = dict(os.environ if env is None else env)
    exe = exe or find_executable(argv[0], cwd, env)
    with sigstate.Relay() as relay:
        try:
            proc = subprocess.Popen(list(argv), executable=argv[0] if "/" in argv[0] else exe,
                                    cwd=cwd, env=env, preexec_fn=sigstate.restore_in_child)
        except OSError as e:
            raise CommandNotFound(argv[0], e.strerror or str(e)) from None
        relay.pid = proc.pid
        _, status = os.waitpid(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return sigstate.exit_code(status)


def apply_batch(batch: list[bytes], cap, tracker: Tracker, decoder: Decoder) -> None:
    """Decode one batch from the ring buffer into the tracker, then settle it."""
    tracker.handle_all(decoder.decode_all(batch))
    settle(cap, tracker, decoder)


def settle(cap, tracker: Tracker, decoder: Decoder) -> None:
    """Sweep fd counters the kernel left to userspace (fds above PT_FLUSH_FDS of
    exited processes), then hand exited processes to the sink."""
    if tracker.needs_sweep:
        tracker.handle_all(decoder.decode_all(cap.sweep(tracker.needs_sweep)))
        tracker.needs_sweep.clear()
    tracker.finish_exited()


def _gpu_sample(pids: list[int]) -> dict | None:
    """GPU state and holders among pids (NVML); None without the context package."""
    try:
        from .context.collect import gpu_sample  # noqa: PLC0415
    except ImportError:
        return None
    return gpu_sample(pids)


def _user(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415

        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return getpass.getuser()
