"""The end of a run, off the critical path: context, fingerprints, the end record.

A traced command's user waits for its process tree to exit and its records
to be stored, not for its outputs to be hashed. So a run ends in two steps:

- release (release()): the tree has exited, its records are drained and
  flushed. Each file to fingerprint is stat'ed now, as the run's owner
  (snapshot()), and a RUN_RELEASED record says the exit status and that the
  rest is pending. The client is answered here.
- completion (a Completion, on the Finisher's worker thread): the execution
  context, the fingerprints and the end record, in that order. Until the end
  is written the run is "finishing".

The fingerprints must describe the version the run produced, not a later
one: each file is hashed, then stat'ed again, and both must match its
release-time snapshot (device, inode, size, mtime, ctime). A file that
changed (or vanished, or was replaced) in between keeps no hash: its record
keeps the snapshot's size, mtime and inode, `sha256: null`,
`changed_before_hash: true`, and the run gets a `changed_before_hash` gap
naming it. ctime moves on every write and metadata change, so a rewrite that
restores the old mtime and size is caught too (within the file system's
timestamp granularity).

One worker, a bounded queue, first in first out: the order of ends is the
order of releases. close() finishes every queued completion before it
returns (the daemon's SIGTERM). An end the store refuses (a full disk) goes
to on_refused, whose owner writes it again later (the router's retries).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from ..clock import us_to_iso as iso
from ..errors import StoreWriteError, TracerError
from ..model.paths import classify, display
from ..privs import Creds, PrivilegeError, acting_as
from . import sqlite as S
from .fingerprint import FINGERPRINTED_KINDS, _kind_of, _reason, record_fingerprints
from .schema import SchemaPolicy

log = logging.getLogger(__name__)

MAX_QUEUED = 256  # completions waiting; a release beyond it waits for room (backpressure)
CHANGED = "changed_before_hash"
CHANGED_WHY = "changed before it could be hashed (after the run ended)"
GAP_PATHS_MAX = 100  # paths named in the gap record; the count covers them all
# Tests only: a file; while it exists, completions wait to start, so a test
# can act between a run's release and its fingerprints, deterministically.
TEST_HOLD_ENV = "PROVTRACE_TEST_HOLD_COMPLETIONS"
_TEST_HOLD_POLL_S = 0.05


class Snapshot(NamedTuple):
    """A path's lstat at release: what its fingerprint must still match."""
    mode: int
    dev: int
    ino: int
    size_bytes: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Snapshot:
        return cls(st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# path -> its snapshot, or why it could not be stat'ed at release ("vanished", ...)
Snapshots = dict[str, "Snapshot | str"]


def snapshot(paths: Iterable[str], creds: Creds | None = None,
             kinds: tuple[str, ...] | None = FINGERPRINTED_KINDS) -> Snapshots:
    """lstat of each path to fingerprint, now, as creds (None: as this process)."""
    wanted = sorted({p for p in paths if kinds is None or classify(p) in kinds})
    if creds is None:
        return {p: _lstat(p) for p in wanted}
    try:
        with acting_as(creds):
            return {p: _lstat(p) for p in wanted}
    except PrivilegeError as e:
        return {p: f"not read as its owner: {e}" for p in wanted}


def _lstat(path: str) -> Snapshot | str:
    try:
        return Snapshot.of(os.lstat(path))
    except OSError as e:
        return _reason(e)


@dataclass(eq=False)
class Completion:
    """What is left of a released run: written by Finisher (or complete())."""
    run_id: str
    rid: int
    end: dict  # the end record, as known at release (exit status, loss, gaps)
    released_us: int
    snapshots: Snapshots = field(default_factory=dict)
    creds: Creds | None = None  # whose file-system view reads the files
    uid: int | None = None  # the owner, for queries that wait on their own runs
    schema: SchemaPolicy | None = None  # None: the config file's
    context: Callable[[], dict | None] | None = None  # collects the CONTEXT record's body
    # writes more context records after it (a notebook's per-cell context)
    more_context: Callable[[S.Store], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)


def release(store: S.Store, rid: int, end: dict, released_us: int) -> None:
    """The run's process tree is gone and its records are flushed: say so in
    the store (a direct reader sees the run finishing, with its exit status).
    A flush the store refuses is counted against the run; its end says so."""
    store.append(rid, S.RUN_RELEASED, {"released": iso(released_us), "exit_code": end.get("exit_code"),
                                       "signal": end.get("signal"), "pending": ["context", "fingerprints"]})
    try:
        store.flush()
    except StoreWriteError as e:
        log.error("event=release-unwritten rid=%d error=%r", rid, str(e))


def complete(store: S.Store, job: Completion) -> None:
    """Context, guarded fingerprints, the end. StoreWriteError when the end is refused."""
    t0 = time.monotonic()
    if job.context is not None:
        try:
            ctx = job.context()
        except TracerError as e:
            ctx = {"error": str(e)}
        if ctx is not None:  # None: nothing to collect it with (no context package)
            store.append(job.rid, S.CONTEXT, ctx)
    if job.more_context is not None:
        job.more_context(store)
    changed: list[str] = []

    def check(path: str, fp: dict) -> dict:
        return guard(path, fp, job.snapshots.get(path, "not seen at the run's end"), job.creds, changed)

    record_fingerprints(store, job.rid, job.snapshots, kinds=None, creds=job.creds, schema=job.schema,
                        at_us=job.released_us, check=check)
    if changed:
        store.append(job.rid, S.GAP, {"what": CHANGED, "count": len(changed),
                                      "paths": [display(p) for p in changed[:GAP_PATHS_MAX]]})
        log.warning("event=changed-before-hash run=%s files=%d", job.run_id, len(changed))
    store.end_run(job.rid, job.end)
    log.info("event=run-completed run=%s files=%d changed=%d completion_ms=%.1f", job.run_id,
             len(job.snapshots), len(changed), 1e3 * (time.monotonic() - t0))


def guard(path: str, fp: dict, snap: Snapshot | str, creds: Creds | None, changed: list[str]) -> dict:
    """fp if it describes the file as the run left it, else the changed marker.

    snap a str: the path could not be stat'ed at release; that is what is
    recorded (whatever is there now came after the run). Anything but a
    regular file is never hashed: it is recorded as the snapshot saw it."""
    if isinstance(snap, str):
        return {"error": snap}
    if stat.S_ISLNK(snap.mode):
        return {"type": "symlink", "sha256": None, "hash_skipped": "a symlink (not followed)"}
    if not stat.S_ISREG(snap.mode):
        return {**_stat_fields(snap), "type": _kind_of(snap.mode), "hash_skipped": "not a regular file"}
    now = _now(path, creds)
    same = now == snap and ("error" in fp or (fp.get("type"), fp.get("dev"), fp.get("inode"),
                                              fp.get("size_bytes"), fp.get("mtime_ns"))
                            == ("file", snap.dev, snap.ino, snap.size_bytes, snap.mtime_ns))
    if same:
        return fp
    changed.append(path)
    return {**_stat_fields(snap), "type": "file", "hash_skipped": CHANGED_WHY, CHANGED: True}


def _stat_fields(snap: Snapshot) -> dict:
    """A fingerprint's stat fields, from the snapshot, and no hash."""
    return {"size_bytes": snap.size_bytes, "mtime_ns": snap.mtime_ns, "mtime": iso(snap.mtime_ns // 1000),
            "inode": snap.ino, "dev": snap.dev, "sha256": None}


def _now(path: str, creds: Creds | None) -> Snapshot | str:
    if creds is None:
        return _lstat(path)
    try:
        with acting_as(creds):
            return _lstat(path)
    except PrivilegeError as e:
        return str(e)


class Finisher:
    """One worker thread that completes released runs, in release order."""

    def __init__(self, store: S.Store, on_refused: Callable[[Completion], None] | None = None,
                 max_queued: int = MAX_QUEUED) -> None:
        self.store = store
        self.on_refused = on_refused
        self._queue: queue.Queue[Completion | None] = queue.Queue(max_queued)
        self._pending: list[Completion] = []  # queued or in progress, oldest first
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors = 0
        self._hold = os.environ.get(TEST_HOLD_ENV)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="provtrace-finisher", daemon=True)
        self._thread.start()

    def submit(self, job: Completion) -> None:
        """Queue job (waits while MAX_QUEUED are queued). Closed or never
        started: completed here, at once."""
        with self._lock:
            inline = self._closed or self._thread is None
            if not inline:
                self._pending.append(job)
        if inline:
            self._complete(job)
        else:
            self._queue.put(job)

    def pending(self, uid: int | None = None) -> list[Completion]:
        """The completions not yet written (of uid's runs; None: everyone's)."""
        with self._lock:
            return [j for j in self._pending if uid is None or j.uid == uid]

    def wait(self, uid: int | None = None, timeout_s: float = 30.0) -> bool:
        """Waits, at most timeout_s in all, for the completions pending now (of
        uid's runs); True when they are all written."""
        deadline = time.monotonic() + timeout_s
        waiting = self.pending(uid)
        if waiting:
            log.info("event=query-waits-completion runs=%s", ",".join(j.run_id for j in waiting))
        return all(j.done.wait(max(0.0, deadline - time.monotonic())) for j in waiting)

    def close(self) -> None:
        """Completes everything queued, then stops the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self._wait_for_test_hold()
            self._complete(job)

    def _complete(self, job: Completion) -> None:
        try:
            complete(self.store, job)
        except StoreWriteError as e:  # the owner writes the end again once space returns
            self.errors += 1
            log.error("event=completion-end-refused run=%s error=%r", job.run_id, str(e))
            if self.on_refused is not None:
                self.on_refused(job)
        except (TracerError, OSError) as e:  # the run stays open; recovery closes it, incomplete
            self.errors += 1
            log.error("event=completion-failed run=%s error=%r", job.run_id, str(e))
        finally:
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
            job.done.set()

    def _wait_for_test_hold(self) -> None:
        while self._hold and os.path.lexists(self._hold):
            time.sleep(_TEST_HOLD_POLL_S)

