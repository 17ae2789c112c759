"""RunRouter: the daemon's pipeline (tracer/pipeline/), on a thread of its own.

Every traced root (a kernel, a handed-over command) has a tag in the kernel's
traced map, inherited by its descendants; each decoded event carries it, and
the pipeline hands the event to that run's Tracker. Only this thread touches
Trackers; other threads add runs (seeded before they are added) and ask
for runs to be finished. What the router adds to the pipeline: its thread,
finish requests, writing refused ends again, and the watcher's snapshots.

A finish request waits a short grace period (the root's exit event may still
be in flight), then drains, sweeps the run's fd counters, stops tracing what
outlived the root and flushes: the run is released (its client answered).
The execution context, fingerprints and end record follow on the finisher's
thread (store/finisher.py).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from ..capture.base import Capture
from ..errors import StoreWriteError, TracerError
from ..pipeline.pipeline import Pipeline
from ..pipeline.run import Run
from ..privs import Creds
from ..store import finisher as F
from ..store import sqlite as S

log = logging.getLogger(__name__)

ERROR_BACKOFF_S = 0.2  # after an error in the loop, so a persistent one cannot spin
ERROR_LOG_EVERY_S = 60.0  # one log line per kind of error a minute (a full disk fails every flush)
RETRY_END_S = 1.0  # how often an end the store refused is written again
# How long one poll may block: short while a command run is live (its finish
# request waits for the router), long when only idle kernels are followed.
POLL_MS_BUSY, POLL_MS_IDLE = 40, 250
# A session's kernel may still be exiting when its end is reported; a
# command's client reports only after waitpid, so its exit is already queued.
SESSION_GRACE_S = 0.3
SNAPSHOT_EVERY_S = 0.2  # how often live sessions' reads, and writers of watched files, are noted for watch.py
_RECENT_WRITERS = 4096  # watched paths whose last traced writer is remembered

LiveRun = Run  # the daemon's name for a run it traces


# Why a command run is ended by a daemon on its way out (SIGTERM) while the
# command still runs: its client's report of the exit can no longer come.
DAEMON_STOPPED = "the daemon stopped while the command ran; ended by the daemon without its client's report"


@dataclass(eq=False)
class _Finish:
    live: LiveRun
    exit_code: int | None
    not_before: float
    reason: str | None = None  # why the daemon ends it itself (no report came), or None
    done: threading.Event = field(default_factory=threading.Event)
    asked: float = field(default_factory=time.monotonic)


class RunRouter:
    def __init__(self, capture: Capture, store: S.Store) -> None:
        self.capture = capture
        self.store = store
        self.pipeline = Pipeline(capture, store)
        self._lock = threading.Lock()
        self._finishing: list[_Finish] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self._logged: dict[str, float] = {}  # error kind -> when last logged
        # Ends the store refused (a full disk), written again until it takes them:
        # (run id, rid, end record); those runs stay open in the store meanwhile.
        self._unended: list[tuple[str, int, dict]] = []
        self._retried = 0.0
        self.finisher = F.Finisher(store, on_refused=self._refused)
        self._snapshot_at = 0.0
        # The input watcher's files (it replaces the set whole), and the last traced
        # write of each: path -> (run id, monotonic ns), kept by the router thread.
        self.watched: frozenset[str] = frozenset()
        self._writers: dict[str, tuple[str, int]] = {}

    @property
    def unrouted(self) -> int:
        return self.pipeline.unrouted

    # -- other threads --------------------------------------------------------------
    def start(self) -> None:
        self.finisher.start()
        self._thread = threading.Thread(target=self._run, name="provtrace-router", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.finisher.close()  # every released run's completion is written before we go
        try:
            self._retry_ends(None)
        except StoreWriteError as e:  # still full: the next start closes those runs
            log.error("event=router-stop-unwritten error=%r unended=%d", str(e), len(self._unended))

    def add(self, live: LiveRun) -> None:
        self.pipeline.add(live)
        if live.kind == "command":
            self.capture.wake()  # leave the idle poll: a command's client waits on its finish

    def finish(self, live: LiveRun, exit_code: int | None, reason: str | None = None) -> threading.Event:
        """Ends live. reason: why the daemon ends it without its client's report."""
        grace = SESSION_GRACE_S if live.kind == "session" else 0.0
        req = _Finish(live, exit_code, time.monotonic() + grace, reason)
        with self._lock:
            self._finishing.append(req)
        self.capture.wake()
        if self._thread is None or not self._thread.is_alive():
            self._finish_now(req)  # no router running (shutting down): do it here
        return req.done

    @property
    def live_runs(self) -> int:
        return len(self.pipeline.runs())

    # -- the router thread --------------------------------------------------------
    def _run(self) -> None:
        pipeline = self.pipeline
        while not self._stop.is_set():
            try:
                with self._lock:
                    busy = bool(self._finishing)
                # a command's client waits on its finish; a session's ended cell on its checkpoint
                busy = busy or any(r.kind == "command" or r.ended_cells for r in pipeline.runs())
                self._step(pipeline.step(POLL_MS_BUSY if busy else POLL_MS_IDLE))
                if pipeline.flush_due():
                    pipeline.flush()  # a failed batch is dropped, counted against its runs
                    self._retry_ends(time.monotonic())
            except (TracerError, OSError, sqlite3.Error) as e:
                # A broken invariant, a full disk, fds exhausted: log, count, go on.
                # The ring buffer keeps counting what it drops meanwhile.
                self._error(e)
                self._stop.wait(ERROR_BACKOFF_S)
        pipeline.drain()
        with self._lock:
            pending = list(self._finishing)
        for req in pending:
            self._finish_now(req)
        try:
            pipeline.flush()
            self._retry_ends(None)
        except StoreWriteError as e:  # still full at shutdown: the next start closes those runs
            log.error("event=router-stop-unwritten error=%r unended=%d", str(e), len(self._unended))

    def _snapshot(self, runs) -> None:
        """Sessions' reads, and who last wrote each watched file (runs that end
        are noted once more as they end, so a short command is never missed)."""
        watched = self.watched
        for live in runs:
            if live.kind == "session":
                live.snapshot_reads()
            if watched:
                self._note_writes(live, watched)

    def _note_writes(self, live: LiveRun, watched: frozenset[str]) -> None:
        with self._lock:
            for path, ns in live.last_writes(watched).items():
                if ns >= self._writers.get(path, ("", -1))[1]:
                    self._writers[path] = (live.run_id, ns)
            while len(self._writers) > _RECENT_WRITERS:
                self._writers.pop(next(iter(self._writers)))

    def last_writer(self, path: str) -> tuple[str, int] | None:
        """(run id, monotonic ns) of the last traced write to a watched path seen, or None."""
        with self._lock:
            return self._writers.get(path)

    def _error(self, e: Exception) -> None:
        """Counts every error; logs the first of each kind, then one a minute."""
        self.errors += 1
        kind = type(e).__name__
        now = time.monotonic()
        if now - self._logged.get(kind, -ERROR_LOG_EVERY_S) >= ERROR_LOG_EVERY_S:
            self._logged[kind] = now
            log.error("event=router-error count=%d error=%r", self.errors, str(e))

    def _retry_ends(self, now: float | None) -> None:
        """Writes again the ends the store refused (now None: at once, at shutdown)."""
        if not self._unended or (now is not None and now - self._retried < RETRY_END_S):
            return
        self._retried = now or time.monotonic()
        while self._unended:
            with self._lock:
                run_id, rid, end = self._unended[0]
            self.store.end_run(rid, end)  # StoreWriteError: still full, kept for the next try
            with self._lock:
                self._unended.pop(0)
            log.info("event=run-end-written-late run=%s", run_id)

    def _refused(self, job: F.Completion) -> None:
        """Finisher thread: an end the store refused, written again by _retry_ends."""
        with self._lock:
            self._unended.append((job.run_id, job.rid, job.end))

    def _step(self, runs: list[LiveRun]) -> None:
        """After each pipeline step: the watcher's snapshots, then finishes that are due."""
        now = time.monotonic()
        if now - self._snapshot_at >= SNAPSHOT_EVERY_S:
            self._snapshot_at = now
            self._snapshot(runs)
        with self._lock:
            due = [r for r in self._finishing if r.not_before <= now]
        for req in due:
            self._finish_now(req)

    def _finish_now(self, req: _Finish) -> None:
        live = req.live
        begun = time.monotonic()
        with self._lock:
            if req in self._finishing:
                self._finishing.remove(req)
        try:
            self.pipeline.finish(live)
            if self.watched:
                self._note_writes(live, self.watched)
            self._end(live, req.exit_code, req.reason)
            log.info("event=finish-timing run=%s waited_ms=%.1f finish_ms=%.1f", live.run_id,
                     1e3 * (begun - req.asked), 1e3 * (time.monotonic() - begun))
        except TracerError as e:  # a refused end is kept and written again (_retry_ends)
            self.errors += 1
            log.error("event=finish-failed run=%s error=%r", live.run_id, str(e))
        finally:
            req.done.set()

    def _end(self, live: LiveRun, exit_code: int | None, reason: str | None = None) -> None:
        """Releases the run; its completion (context, fingerprints, end) goes to the finisher."""
        # The kernel counts loss per reason for the whole daemon, not per traced
        # tree: what was lost while this run was live may belong to any run traced
        # then. The record says so (lost_scope), and the run is not called
        # complete, since nothing shows that its own events all arrived.
        lost = live.lost_since_open(self.capture)
        total = sum(lost.values())
        gaps = dict(live.tracker.gaps)
        end = {"exit_code": exit_code, "signal": None, "lost_events": total, "lost_by_reason": lost,
               "lost_scope": "daemon", "complete": total == 0, "gaps": gaps}
        if reason is not None:  # no report came: the exit status is the kernel's, if it was seen
            root_code = live.root.exit_code if live.root is not None else None
            end.update({"exit_code": root_code, "end_reason": reason,
                        "exit_code_from": "kernel" if root_code is not None else None,
                        "complete": end["complete"] and root_code is not None})
            gaps["daemon_stopped" if reason == DAEMON_STOPPED else "client_vanished"] = 1
        # fingerprints as the run's owner, never as root: a user's output may be a
        # symlink to, or a hard link of, a file only root may read
        creds = Creds.of_user(live.uid) if live.uid is not None else None
        job = live.completion(end, creds=creds, schema=_system_schema_policy())
        F.release(self.store, live.rid, job.end, job.released_us)
        self.finisher.submit(job)
        w = live.writer
        log.info("event=run-released run=%s kind=%s processes=%d files=%d", live.run_id, live.kind,
                 w.processes, w.files)


def _system_schema_policy():
    """The system config file's [schema] table: the daemon serves every user, so
    no one user's file decides what it reads (a bad file: the defaults)."""
    from .. import config  # noqa: PLC0415

    try:
        return config.load(config.config_files()[:1]).schema
    except config.ConfigError as e:
        log.warning("event=config-ignored error=%r", str(e))
        return config.SchemaPolicy()
