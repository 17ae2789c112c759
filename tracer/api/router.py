"""RunRouter: the daemon's one consumer of the ring buffer.

Every traced root (a kernel, a handed-over command) has a tag in the kernel's
traced map, inherited by its descendants; each decoded event carries it, and
the router hands the event to that run's Tracker. Only this thread touches
Trackers; other threads add runs (seeded before they are added) and ask
for runs to be finished.

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
from collections import deque
from dataclasses import dataclass, field

from ..capture.decode import Decoder
from ..clock import Clock
from ..clock import us_to_iso as iso
from ..errors import StoreWriteError, TracerError
from ..model.paths import DATA, classify
from ..model.processes import Proc, Tracker
from ..privs import Creds
from ..store import sqlite as S
from ..runner import settle
from ..store import finisher as F
from ..store.writer import RunWriter

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.5
ERROR_BACKOFF_S = 0.2  # after an error in the loop, so a persistent one cannot spin
ERROR_LOG_EVERY_S = 60.0  # one log line per kind of error a minute (a full disk fails every flush)
RETRY_END_S = 1.0  # how often an end the store refused is written again
# How long one poll may block: short while a command run is live (its finish
# request waits for the router), long when only idle kernels are followed.
POLL_MS_BUSY, POLL_MS_IDLE = 40, 250
# A session's kernel may still be exiting when its end is reported; a
# command's client reports only after waitpid, so its exit is already queued.
SESSION_GRACE_S = 0.3
# A session's events wait this long before attribution: a kernel's busy/idle
# messages reach the IOPub watcher a little after the kernel acts, and an
# event attributed before its window is known would land in no cell.
HOLD_NS = 500_000_000
SNAPSHOT_EVERY_S = 0.2  # how often live sessions' reads, and writers of watched files, are noted for watch.py
_WRITES = frozenset(("write", "create", "truncate"))
_RECENT_WRITERS = 4096  # watched paths whose last traced writer is remembered


@dataclass(eq=False)
class LiveRun:
    run_id: str
    rid: int
    tag: int
    kind: str  # "session" | "command"
    tracker: Tracker
    writer: RunWriter
    policy: object
    decoder: Decoder | None = None
    kernel_pid: int | None = None
    root_pid: int | None = None
    uid: int | None = None  # the owner: whose credentials read its files
    root: Proc | None = None  # a command's root process: its exit status, when its client never reports
    root_start_ns: int = 0  # the root's start (ns since boot): a reused pid is not the root
    root_gone_at: float | None = None  # when the reaper first found the root gone (monotonic)
    env: dict[str, str] = field(default_factory=dict)
    gpu_samples: list = field(default_factory=list)
    lost_at_start: dict[str, int] = field(default_factory=dict)
    held: deque = field(default_factory=deque)  # session events waiting for their windows
    # A snapshot the router thread replaces whole (other threads only read it):
    # data file -> the cells that read it, less the session's own outputs
    reads: dict[str, frozenset[str]] = field(default_factory=dict)
    # Cells that ended, waiting until their events are attributed: (end, mono ns; cell
    # key), appended by other threads, taken by the router thread (checkpoint)
    ended_cells: deque = field(default_factory=deque)
    # The data files the cells already checkpointed read (path -> cells), which
    # their live processes no longer hold: still the session's inputs for watch.py
    checkpointed_reads: dict[str, set[str]] = field(default_factory=dict)

    def take(self, ev) -> None:
        if self.kind == "session":
            self.held.append(ev)
        else:
            self.tracker.handle(ev)

    def snapshot_reads(self) -> None:
        """Router thread: the data files a session's live processes read (and in
        which cells), for the input watcher (watch.py). A file it wrote is its output, not an input."""
        reads: dict[str, set[str]] = {p: set(c) for p, c in self.checkpointed_reads.items()}
        written = set(self.writer.written)
        for proc in list(self.tracker.live.values()):
            for fa in proc.files.values():
                if fa.access & _WRITES:
                    written.add(fa.path)
                elif "read" in fa.access and classify(fa.path) == DATA:
                    # a read in no known cell (kernel start-up, a late IOPub window)
                    # still makes the session a consumer: watched, with no cell
                    cells = reads.setdefault(fa.path, set())
                    if fa.cell is not None:
                        cells.add(fa.cell)
        self.reads = {p: frozenset(c) for p, c in reads.items() if p not in written}

    def last_writes(self, paths: frozenset[str]) -> dict[str, int]:
        """Router thread: path -> when (monotonic ns) this run last wrote it, for those
        of paths it wrote: finished processes (the writer's) and live ones."""
        out = {p: self.writer.written[p] for p in paths if p in self.writer.written}
        for proc in list(self.tracker.live.values()):
            for p in paths:
                fa = proc.files.get(p)
                if fa is not None and fa.access & _WRITES and fa.last_ns > out.get(p, -1):
                    out[p] = fa.last_ns
        return out

    def checkpoint(self, cutoff_ns: int) -> bool:
        """Router thread, after release(cutoff_ns): write what the live processes
        did in each cell that ended by cutoff_ns (its events are all attributed
        now), so a live session's finished cells are queryable while its kernel
        runs. Whether any cell was due."""
        due = False
        while self.ended_cells and self.ended_cells[0][0] <= cutoff_ns:
            _end_ns, cell = self.ended_cells.popleft()
            due = True
            for fa in self.tracker.checkpoint(cell):
                if "read" in fa.access and not fa.access & _WRITES and classify(fa.path) == DATA:
                    self.checkpointed_reads.setdefault(fa.path, set()).add(cell)
        return due

    def release(self, cutoff_ns: int | None = None) -> None:
        """Hand held events up to cutoff_ns (all, when None) to the Tracker."""
        held = self.held
        while held and (cutoff_ns is None or held[0].ts_ns <= cutoff_ns):
            self.tracker.handle(held.popleft())


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
    def __init__(self, capture, store: S.Store) -> None:
        self.capture = capture
        self.store = store
        self.decoder = Decoder()
        self.unrouted = 0
        self._by_tag: dict[int, LiveRun] = {}
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
        with self._lock:
            self._by_tag[live.tag] = live
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
        with self._lock:
            return len(self._by_tag)

    # -- the router thread --------------------------------------------------------
    def _run(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set():
            try:
                with self._lock:
                    busy = any(r.kind == "command" or r.ended_cells for r in self._by_tag.values()) \
                        or self._finishing
                self._step(self.capture.poll(POLL_MS_BUSY if busy else POLL_MS_IDLE))
                now = time.monotonic()
                if now - last_flush >= FLUSH_EVERY_S:
                    last_flush = now
                    self.store.flush()  # a failed batch is dropped, counted against its runs
                    self._retry_ends(now)
            except (TracerError, OSError, sqlite3.Error) as e:
                # A broken invariant, a full disk, fds exhausted: log, count, go on.
                # The ring buffer keeps counting what it drops meanwhile.
                self._error(e)
                self._stop.wait(ERROR_BACKOFF_S)
        for batch in self.capture.drain_batches():
            self._step(batch)
        with self._lock:
            pending = list(self._finishing)
        for req in pending:
            self._finish_now(req)
        try:
            self.store.flush()
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

    def _step(self, batch: list[bytes]) -> None:
        with self._lock:
            by_tag = dict(self._by_tag)
        for ev in self.decoder.decode_all(batch):
            live = by_tag.get(ev.tag)
            if live is None:
                self.unrouted += 1  # a run already finished; its stragglers
                continue
            live.take(ev)
        cutoff = Clock.now_mono_ns() - HOLD_NS
        for live in by_tag.values():
            live.release(cutoff)
            settle(self.capture, live.tracker, self.decoder)
        self._checkpoint(by_tag.values(), cutoff)
        now = time.monotonic()
        if now - self._snapshot_at >= SNAPSHOT_EVERY_S:
            self._snapshot_at = now
            self._snapshot(by_tag.values())
        with self._lock:
            due = [r for r in self._finishing if r.not_before <= now]
        for req in due:
            self._finish_now(req)

    def _checkpoint(self, runs, cutoff_ns: int) -> None:
        """Sessions' cells that ended by cutoff_ns: their live processes' records
        are written and flushed now, not at the next flush (within a second of the
        cell's end, HOLD_NS after it). A refused flush is counted like the loop's."""
        if not any([live.checkpoint(cutoff_ns) for live in runs if live.ended_cells]):
            return
        try:
            self.store.flush()
        except StoreWriteError as e:
            self._error(e)

    def _finish_now(self, req: _Finish) -> None:
        live = req.live
        begun = time.monotonic()
        with self._lock:
            if req in self._finishing:
                self._finishing.remove(req)
            self._by_tag.pop(live.tag, None)
        t = live.tracker
        try:
            for batch in self.capture.drain_batches():
                for ev in self.decoder.decode_all(batch):
                    target = live if ev.tag == live.tag else self._by_tag.get(ev.tag)
                    if target is not None:
                        target.take(ev)
            live.release()
            pids = set(t.live) | {p.pid for p in t.exited}
            for leftover in set(self.capture.traced_pids()) & set(t.live):  # outlived the root
                self.capture.untrace(leftover)
            for ev in self.decoder.decode_all(self.capture.sweep(pids)):
                t.handle(ev)
            t.finish_all(Clock.now_mono_ns())
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
        w = live.writer
        # The kernel counts loss per reason for the whole daemon, not per traced
        # tree: what was lost while this run was live may belong to any run traced
        # then. The record says so (lost_scope), and the run is not called
        # complete, since nothing shows that its own events all arrived.
        now_lost = self.capture.lost()
        lost = {k: v - live.lost_at_start.get(k, 0) for k, v in now_lost.items()}
        total = sum(lost.values())
        gaps = dict(live.tracker.gaps)
        released_us = time.time_ns() // 1000
        end = {"ended": iso(released_us), "exit_code": exit_code, "signal": None,
               "lost_events": total, "lost_by_reason": lost, "lost_scope": "daemon",
               "complete": total == 0, "gaps": gaps,
               "processes": w.processes, "files": w.files}
        if reason is not None:  # no report came: the exit status is the kernel's, if it was seen
            root_code = live.root.exit_code if live.root is not None else None
            end.update({"exit_code": root_code, "end_reason": reason,
                        "exit_code_from": "kernel" if root_code is not None else None,
                        "complete": end["complete"] and root_code is not None})
            gaps["daemon_stopped" if reason == DAEMON_STOPPED else "client_vanished"] = 1
        # as the run's owner, never as root: a user's output may be a symlink to, or a
        # hard link of, a file only root may read
        creds = Creds.of_user(live.uid) if live.uid is not None else None
        job = F.Completion(run_id=live.run_id, rid=live.rid, end=end, released_us=released_us,
                           snapshots=F.snapshot(w.touched.union(*w.renamed_to.values()), creds),
                           creds=creds, uid=live.uid, schema=_system_schema_policy(),
                           context=_context_of(live))
        F.release(self.store, live.rid, end, released_us)
        self.finisher.submit(job)
        log.info("event=run-released run=%s kind=%s processes=%d files=%d", live.run_id, live.kind,
                 w.processes, w.files)


def _context_of(live: LiveRun):
    """What collects live's execution context later, on the finisher's thread
    (from copies: the router's Tracker is no longer touched there)."""
    w = live.writer
    touched, mapped, execd, pids = sorted(w.touched), sorted(w.mapped), sorted(w.execd), sorted(w.pids)
    env, samples = dict(live.env), [s for s in live.gpu_samples if s]

    def collect() -> dict:
        from ..context.collect import collect_run_context, gpu_accounting  # noqa: PLC0415

        ctx = collect_run_context(pids=[], touched_paths=touched, mapped_paths=mapped, exec_paths=execd,
                                  env=env, gpu_samples=samples)
        ctx["gpu_accounting"] = gpu_accounting(pids)
        return ctx
    return collect


def _system_schema_policy():
    """The system config file's [schema] table: the daemon serves every user, so
    no one user's file decides what it reads (a bad file: the defaults)."""
    from .. import config  # noqa: PLC0415

    try:
        return config.load(config.config_files()[:1]).schema
    except config.ConfigError as e:
        log.warning("event=config-ignored error=%r", str(e))
        return config.SchemaPolicy()
