"""The capture pipeline: one consumer of a Capture, for any number of runs.

Every driver is this pipeline around its runs (run.py):
- `provtrace run` (command.py): one command run, until its root is reaped;
- `provtrace notebook run` (notebook.py): one notebook run, on a thread,
  while nbclient sets the cells' windows from the main thread;
- the daemon (daemon/router.py): many runs, added and finished as kernels and
  commands come and go.

step() is the whole data flow, in order:
  poll the capture -> decode -> route each event by its tag to its run ->
  hold a session's events for HOLD_NS -> settle each run (sweep, finish
  exited processes); and flush_due()/flush() keep one flush cadence.

Runs are added by other threads (seeded first: only the pipeline's thread
touches a run's Tracker once it is added).
"""

from __future__ import annotations

import threading
import time

from ..capture.base import Capture
from ..capture.decode import Decoder
from ..clock import Clock
from ..store import sqlite as S
from .run import Run

# One flush cadence for every driver: the store's batch is written every
# FLUSH_EVERY_S, or sooner once FLUSH_ROWS records wait.
FLUSH_EVERY_S = 0.5
FLUSH_ROWS = 5000
# A session's events wait this long before attribution: a kernel's busy/idle
# messages reach the IOPub watcher a little after the kernel acts, and an
# event attributed before its window is known would land in no cell.
HOLD_NS = 500_000_000
# How long a standalone driver's poll may wait: bounded, so memory does not grow
# with the event rate (the daemon's router chooses its own, daemon/router.py).
POLL_MS = 100


class Pipeline:
    def __init__(self, capture: Capture, store: S.Store) -> None:
        self.capture = capture
        self.store = store
        self.decoder = Decoder()
        self.unrouted = 0  # events of no open run: a finished run's stragglers
        self._by_tag: dict[int, Run] = {}
        self._lock = threading.Lock()
        self._flushed_at = time.monotonic()

    # -- any thread -------------------------------------------------------------------
    def add(self, run: Run) -> None:
        """From now on the pipeline's thread owns run's Tracker."""
        with self._lock:
            self._by_tag[run.tag] = run

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._by_tag.values())

    # -- the pipeline's thread ------------------------------------------------------------
    def step(self, timeout_ms: int) -> list[Run]:
        """Poll once and process the batch; returns the open runs."""
        return self.process(self.capture.poll(timeout_ms))

    def drain(self) -> None:
        """Process what the capture already has, without waiting."""
        for batch in self.capture.drain_batches():
            self.process(batch)

    def process(self, batch: list) -> list[Run]:
        runs = self._route(batch, None)
        cutoff = Clock.now_mono_ns() - HOLD_NS
        for run in runs.values():
            run.release(cutoff)
            run.settle(self.capture)
        # A session's cells that ended by cutoff: their live processes' records are
        # written and flushed now, not at the next flush (within a second of the
        # cell's end, HOLD_NS after it); a refused flush raises, as flush() does
        if any([run.checkpoint(cutoff) for run in runs.values() if run.ended_cells]):
            self.flush()
        return list(runs.values())

    def _route(self, batch: list, finishing: Run | None) -> dict[int, Run]:
        """Hands each event of batch to its run (finishing, already removed, too),
        in order, a run's events in one call."""
        with self._lock:
            by_tag = dict(self._by_tag)
        if finishing is not None:
            by_tag[finishing.tag] = finishing
        events = self.capture.decode(batch, self.decoder)
        if len(by_tag) == 1:  # a standalone driver's one run: no grouping needed
            ((tag, run),) = by_tag.items()
            mine = [ev for ev in events if ev.tag == tag]
            stray = len(events) - len(mine)
            run.take(mine)
        else:
            groups: dict[int, list] = {}
            for ev in events:
                groups.setdefault(ev.tag, []).append(ev)
            stray = 0
            for tag, evs in groups.items():
                run = by_tag.get(tag)
                if run is None:
                    stray += len(evs)
                else:
                    run.take(evs)
        if finishing is None:
            self.unrouted += stray
        else:
            del by_tag[finishing.tag]
        return by_tag

    def finish(self, run: Run) -> None:
        """Ends run's tracing: it leaves the pipeline, the capture is drained
        (other runs' events go to them, held), then run.stop(). The completion
        step (run.complete) is the caller's."""
        with self._lock:
            self._by_tag.pop(run.tag, None)
        for batch in self.capture.drain_batches():
            self._route(batch, run)
        run.stop(self.capture)

    # -- the flush cadence ----------------------------------------------------------------
    def flush_due(self) -> bool:
        return (self.store.pending >= FLUSH_ROWS
                or time.monotonic() - self._flushed_at >= FLUSH_EVERY_S)

    def flush(self) -> None:
        """Write the store's batch (StoreWriteError on a full disk: the store
        counts what it dropped against its runs)."""
        self._flushed_at = time.monotonic()
        self.store.flush()
