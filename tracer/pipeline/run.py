"""One traced run's lifecycle, the same for every driver.

- Run.open: the run's row in the store (store.new_run), its tag, its
  RunWriter and Tracker. The tag goes into the capture's traced set with the
  run's root; every descendant inherits it, so the pipeline routes by it.
- Run.stop (after the pipeline drained the capture): stop following what
  outlived the root, sweep the fd counters the capture still holds, finish
  every process.
- Run.completion, the completion step: the execution context, fingerprints
  of what the run touched, then the end record, as a store.finisher
  Completion whose files are stat'ed now (the run's release). The daemon
  queues it on its finisher (off the client's critical path); the standalone
  drivers write it at once (Run.complete). Either way a file that changed
  before it was hashed gets no hash (store/finisher.py).

Three ids name one run: run_id (the user's), rid (the store's row), tag (the
kernel's u32, tag_of(rid)).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..capture.base import Capture
from ..clock import Clock
from ..clock import us_to_iso as iso
from ..model.paths import DATA, classify
from ..model.processes import NO_CELLS, Proc, Tracker
from ..privs import Creds
from ..store import finisher as F
from ..store import sqlite as S
from ..store.schema import SchemaPolicy
from ..store.writer import RunWriter

log = logging.getLogger(__name__)

_WRITES = frozenset(("write", "create", "truncate"))


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def tag_of(rid: int) -> int:
    """The kernel's tag of the run in row rid: a non-zero u32 (0 is "no run")."""
    return 1 + (rid % 0x7FFFFFFF)


def redactor():
    """The argv redaction of the context package, None without it."""
    try:
        from ..context.redact import redact_argv  # noqa: PLC0415
    except ImportError:
        return None
    return redact_argv


def redacted(argv: list[str]) -> list[str]:
    redact = redactor()
    return redact(argv) if redact else argv


def user_name(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415

        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return getpass.getuser()


def gpu_sample(pids: list[int]) -> dict | None:
    """GPU state and holders among pids (NVML); None without the context package."""
    try:
        from ..context.collect import gpu_sample as sample  # noqa: PLC0415
    except ImportError:
        return None
    return sample(pids)


def header(run_id: str, kind: str, backend: str, *, label: str | None, argv: list[str],
           cwd: str | None, user: str | None, uid: int, started_us: int, **extra) -> dict:
    """A run's header record, for every kind: the common fields, then the kind's own (extra)."""
    return {"id": run_id, "kind": kind, "backend": backend, "label": label, "argv": argv,
            "cwd": cwd, "host": socket.gethostname(), "user": user, "uid": uid,
            "started": iso(started_us), "start_us": started_us, **extra}


@dataclass(eq=False)
class Run:
    run_id: str
    rid: int
    tag: int
    kind: str  # "command" | "notebook" | "session"
    tracker: Tracker
    writer: RunWriter
    policy: object
    # A daemon's session holds its events a while (pipeline.HOLD_NS) so that the
    # IOPub windows, which arrive late from another thread, can catch up
    hold: bool = False
    kernel_pid: int | None = None
    root_pid: int | None = None
    uid: int | None = None  # the owner: whose credentials read its files
    root: Proc | None = None  # a command's root process: its exit status, when its client never reports
    root_start_ns: int = 0  # the root's start (ns since boot): a reused pid is not the root
    root_gone_at: float | None = None  # when the reaper first found the root gone (monotonic)
    env: dict[str, str] = field(default_factory=dict)
    gpu_samples: list = field(default_factory=list)
    lost_at_start: dict[str, int] = field(default_factory=dict)
    held: deque = field(default_factory=deque)  # events waiting for their windows
    # A snapshot the pipeline's thread replaces whole (other threads only read it):
    # data file -> the cells that read it, less the session's own outputs
    reads: dict[str, frozenset[str]] = field(default_factory=dict)
    # Cells that ended, waiting until their events are attributed: (end, mono ns; cell
    # key), appended by other threads, taken by the pipeline's thread (checkpoint)
    ended_cells: deque = field(default_factory=deque)
    # The data files the cells already checkpointed read (path -> cells), which
    # their live processes no longer hold: still the session's inputs for watch.py
    checkpointed_reads: dict[str, set[str]] = field(default_factory=dict)
    # More context after the run's own (a notebook's per-cell context): (run, store)
    more_context: Callable[[Run, S.Store], None] | None = None
    end_record: dict | None = None  # the end record, once complete() made it

    # -- open ----------------------------------------------------------------------------
    @classmethod
    def open(cls, store: S.Store, capture: Capture, hdr: dict, policy=NO_CELLS, *, clock: Clock,
             stdio: frozenset[str] = frozenset()) -> Run:
        """The run's row (StoreWriteError when the store cannot take it), tag, writer and tracker."""
        run_id, kind = hdr["id"], hdr["kind"]
        rid = store.new_run(run_id, hdr)
        writer = RunWriter(store, rid, clock, redactor(), base_us=hdr["start_us"], stdio=stdio)
        tracker = Tracker(writer, capture.created_mask, cells=policy)
        return cls(run_id=run_id, rid=rid, tag=tag_of(rid), kind=kind, tracker=tracker, writer=writer,
                   policy=policy, hold=kind == "session", lost_at_start=capture.lost(), uid=hdr.get("uid"))

    # -- the pipeline's thread -------------------------------------------------------------
    def take(self, events: list) -> None:
        """This run's events, in order: held (a session's), or handed to its Tracker."""
        if self.hold:
            self.held.extend(events)
        else:
            self.tracker.handle_all(events)

    def release(self, cutoff_ns: int | None = None) -> None:
        """Hand held events up to cutoff_ns (all, when None) to the Tracker."""
        held = self.held
        while held and (cutoff_ns is None or held[0].ts_ns <= cutoff_ns):
            self.tracker.handle(held.popleft())

    def settle(self, capture: Capture) -> None:
        """Sweep fd counters the kernel left to userspace (fds above PT_FLUSH_FDS of
        exited processes), then hand exited processes to the writer."""
        t = self.tracker
        if t.needs_sweep:
            t.handle_all(capture.sweep(t.needs_sweep))
            t.needs_sweep.clear()
        t.finish_exited()

    def stop(self, capture: Capture) -> None:
        """Once the capture is drained: stop following what outlived the root,
        sweep what the capture still counts, and finish every process."""
        self.release()
        t = self.tracker
        pids = set(t.live) | {p.pid for p in t.exited}
        for leftover in set(capture.traced_pids()) & set(t.live):  # outlived the root
            capture.untrace(leftover)
        t.handle_all(capture.sweep(pids))
        t.finish_all(Clock.now_mono_ns())

    def checkpoint(self, cutoff_ns: int) -> bool:
        """After release(cutoff_ns): write what the live processes did in each cell
        that ended by cutoff_ns (its events are all attributed now), so a live
        session's finished cells are queryable while its kernel runs. Whether
        any cell was due."""
        due = False
        while self.ended_cells and self.ended_cells[0][0] <= cutoff_ns:
            _end_ns, cell = self.ended_cells.popleft()
            due = True
            for fa in self.tracker.checkpoint(cell):
                if "read" in fa.access and not fa.access & _WRITES and classify(fa.path) == DATA:
                    self.checkpointed_reads.setdefault(fa.path, set()).add(cell)
        return due

    def lost_since_open(self, capture: Capture) -> dict[str, int]:
        """What the capture lost while this run was open, by reason."""
        return {k: v - self.lost_at_start.get(k, 0) for k, v in capture.lost().items()}

    # -- the completion step ---------------------------------------------------------------
    def completion(self, end: dict, *, context_pids: list[int] | None = None,
                   creds: Creds | None = None, schema: SchemaPolicy | None = None) -> F.Completion:
        """The run's completion, as of now (its release): the end record
        ({ended, **end, processes, files}, also kept in end_record), each file
        to fingerprint stat'ed now as creds (None: as us), and what collects
        the context later from copies (the Tracker is not touched again).

        end: the kind's own fields (exit code, losses, gaps...)."""
        w = self.writer
        released_us = time.time_ns() // 1000
        self.end_record = {"ended": iso(released_us), **end, "processes": w.processes, "files": w.files}
        return F.Completion(run_id=self.run_id, rid=self.rid, end=self.end_record,
                            released_us=released_us,
                            snapshots=F.snapshot(w.touched.union(*w.renamed_to.values()), creds),
                            creds=creds, uid=self.uid, schema=schema,
                            context=self._context_collector(list(context_pids or [])),
                            more_context=self.more_context and (lambda store: self.more_context(self, store)))

    def complete(self, store: S.Store, end: dict, *, context_pids: list[int] | None = None,
                 creds: Creds | None = None, schema: SchemaPolicy | None = None) -> dict:
        """The completion, written now: context, guarded fingerprints, the end
        record, which it returns (StoreWriteError when the store refuses it)."""
        F.complete(store, self.completion(end, context_pids=context_pids, creds=creds, schema=schema))
        return self.end_record

    def _context_collector(self, pids: list[int]) -> Callable[[], dict | None]:
        """What collects the execution context (issue 4): None from it without
        the context package."""
        w = self.writer
        touched, mapped, execd, owners = sorted(w.touched), sorted(w.mapped), sorted(w.execd), sorted(w.pids)
        env, samples = dict(self.env), [s for s in self.gpu_samples if s]

        def collect() -> dict | None:
            try:
                from ..context.collect import collect_run_context, gpu_accounting  # noqa: PLC0415
            except ImportError:
                return None
            ctx = collect_run_context(pids=pids, touched_paths=touched, mapped_paths=mapped,
                                      exec_paths=execd, env=env, gpu_samples=samples)
            ctx["gpu_accounting"] = gpu_accounting(owners)
            return ctx
        return collect

    # -- what the daemon's watcher reads (watch.py) ------------------------------------------
    def snapshot_reads(self) -> None:
        """The data files a session's live processes read (and in which cells), for
        the input watcher. A file it wrote is its output, not an input."""
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
        """path -> when (monotonic ns) this run last wrote it, for those of paths
        it wrote: finished processes (the writer's) and live ones."""
        out = {p: self.writer.written[p] for p in paths if p in self.writer.written}
        for proc in list(self.tracker.live.values()):
            for p in paths:
                fa = proc.files.get(p)
                if fa is not None and fa.access & _WRITES and fa.last_ns > out.get(p, -1):
                    out[p] = fa.last_ns
        return out
