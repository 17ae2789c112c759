"""`provtrace run`: trace one command and every descendant, from its first instruction.

Start-up without a race: the child is forked and blocks on a pipe; its pid
goes into the kernel's traced map; only then is it released to exec. So the
exec itself and everything after it is seen (Capture.spawn, gate.py).

The driver is the pipeline (pipeline.py) with one command Run, stepped on
this thread until the capture reaps the command's root.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from ..capture import sigstate
from ..capture.base import Capture, calibrated
from ..clock import Clock
from ..errors import CommandNotFound, StoreWriteError, UsageError
from ..model import events as E
from ..store import sqlite as S
from ..store.writer import stdio_files
from .pipeline import POLL_MS, Pipeline
from .run import Run, gpu_sample, header, new_run_id, redacted, user_name

log = logging.getLogger(__name__)


class TracedCommand:
    """One traced command run into one store. Call run(); it returns the exit code."""

    def __init__(self, argv: Sequence[str], *, store: S.Store, label: str | None = None,
                 cwd: str | None = None, env: Mapping[str, str] | None = None,
                 capture: Capture | None = None, on_finished: Callable[[int], None] | None = None,
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
        self.exec_path = ""
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
        self.capture = cap = calibrated(self.capture)
        uid = os.getuid()
        hdr = header(self.run_id, "command", cap.name, label=self.label, argv=redacted(self.argv),
                     cwd=self.cwd, user=user_name(uid), uid=uid, started_us=time.time_ns() // 1000,
                     exe=os.path.normpath(exe))
        try:
            # the command inherits our stdout and stderr: files there are its log, not its data
            run = Run.open(self.store, cap, hdr, clock=Clock(), stdio=stdio_files())
        except StoreWriteError as e:  # nothing can be recorded: the command still runs
            self.store_error, self.ran_untraced = str(e), True
            return run_untraced(self.argv, self.cwd, self.env, exe)
        self.rid = run.rid
        run.env = self.env
        for g in self.gap_records:
            self.store.append(self.rid, S.GAP, g)
        pipeline = Pipeline(cap, self.store)
        try:
            status, failed = self._follow(pipeline, run, uid)
        except BaseException:
            cap.abandon()  # a stopped tree must not wait for a consumer that is gone
            raise
        run.gpu_samples.append(gpu_sample(list(run.tracker.live)))
        pipeline.finish(run)
        self.lost = run.lost_since_open(cap)
        lost_total = sum(self.lost.values())
        exit_code = E.exit_code(status)
        if failed:
            self.store.append(self.rid, S.GAP, {"what": "exec_failed", "errno": int(failed)})
        gaps = dict(run.tracker.gaps)
        if pipeline.decoder.bad:
            gaps["undecodable_records"] = pipeline.decoder.bad
        gaps.update(cap.gaps)
        try:
            run.complete(self.store, {
                "exit_code": exit_code, "signal": status & 0x7F if os.WIFSIGNALED(status) else None,
                "lost_events": lost_total, "lost_by_reason": self.lost,
                "complete": lost_total == 0, "gaps": gaps}, context_pids=list(run.tracker.live))
            self.ended_in_store = True
        except StoreWriteError as e:  # the run stays open: recovery closes it, incomplete
            self.store_error = str(e)
        if failed:
            raise CommandNotFound(self.argv[0], os.strerror(int(failed)))
        if self.on_finished:
            self.on_finished(self.rid)
        return exit_code

    def _follow(self, pipeline: Pipeline, run: Run, uid: int) -> tuple[int, bytes]:
        """Start the command behind the fork gate, traced under the run's tag, and
        follow it until it is reaped: (wait status, exec errno digits)."""
        cap = pipeline.capture
        pipeline.add(run)
        # Sampled before the fork: the child holds no GPU yet, and NVML's first
        # call (~50 ms) must not sit between the root's start time and its exec.
        run.gpu_samples.append(gpu_sample([]))
        with sigstate.Relay() as relay:  # before the fork: ^C must not stop us first

            def started(pid: int) -> None:  # before it may exec
                relay.pid = pid
                run.root = run.tracker.add_root(pid, Clock.now_mono_ns(), self.argv, self.cwd, uid,
                                                tag=run.tag)

            pid = cap.spawn(self.exec_path, self.argv, self.env, self.cwd, run.tag, started)
            # The model keeps what it learns (processes, fd tables, per-path
            # accesses) until a process exits, so the cyclic GC keeps promoting
            # it and every full collection walks all of bcc, ctypes and the
            # modules loaded at start-up too. Frozen, those are skipped; thawed
            # when the command ends, so nothing stays out of collection.
            gc.freeze()
            try:
                while True:
                    pipeline.step(POLL_MS)
                    done = cap.reap(pid)
                    if done is not None:
                        pipeline.drain()  # the root's exit is already in the capture
                        return done
                    if pipeline.flush_due():
                        self._flush(pipeline)
            finally:
                gc.unfreeze()

    def _flush(self, pipeline: Pipeline) -> None:
        """A flush that a full disk cannot stop: the store counts what it dropped."""
        try:
            pipeline.flush()
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
    return E.exit_code(status)
