"""The shipper: copies a host's committed records to the central store.

* At least once, idempotent: records go in sequence order, keyed by (host,
  seq); the central side drops a re-sent record it holds already, and
  records one that differs as a 'conflict' (migrations/0002_ingest.sql).
* Resumable: the central head of the host (hosts.head_seq) is where the next
  batch starts. A batch is one transaction: a shipper killed, or a database
  or network lost mid-batch, leaves the batch wholly there or wholly not.
* Bounded: it reads the store through its own read-only connection (WAL: it
  never holds the writer up), a batch at a time; what it still has to send
  is its backlog, reported to the caller and to the central store.
* Verified: the central side re-verifies the chain as it ingests.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from ..errors import StoreError
from .db import FleetError, connect, errors, first_line, redact
from .identity import Keyer

log = logging.getLogger(__name__)

BATCH = 5000
BACKLOG_WARN = 100_000  # records not yet shipped before the daemon logs a warning

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS incoming(
  seq bigint, rid bigint, kind int, p1 bytea, p2 bytea, body text, hash bytea) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_paths(path bytea, fkey text, shared boolean) ON COMMIT DELETE ROWS;
"""


@dataclass
class ShipResult:
    accepted: int = 0
    duplicates: int = 0
    losses: int = 0
    central_head: int = 0
    local_head: int = 0

    @property
    def backlog(self) -> int:
        return max(0, self.local_head - self.central_head)


class Shipper:
    """One local store (a file) shipped to one central store as one host."""

    def __init__(self, store_path: str, url: str, host: str, *, batch: int = BATCH,
                 keyer: Keyer | None = None) -> None:
        if not os.path.exists(store_path):
            raise StoreError(f"no store at {store_path} (trace something first, or pass --db)")
        self.store_path = store_path
        self.url = url
        self.host = host
        self.batch = batch
        self.keyer = keyer or Keyer(host)
        self._local: sqlite3.Connection | None = None
        self._conn = None

    def close(self) -> None:
        for c in (self._local, self._conn):
            if c is not None:
                c.close()
        self._local = self._conn = None

    # -- the local side -------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._local is None:
            self._local = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30,
                                          check_same_thread=False)
        return self._local

    def local_head(self) -> int:
        row = self._db().execute("SELECT max(seq) FROM records").fetchone()
        return int(row[0] or 0)

    def _read(self, after: int) -> list[tuple]:
        return self._db().execute(
            "SELECT r.seq, r.rid, r.kind, a.path, b.path, r.body, r.hash FROM records r "
            "LEFT JOIN paths a ON a.id=r.p1 LEFT JOIN paths b ON b.id=r.p2 "
            "WHERE r.seq > ? ORDER BY r.seq LIMIT ?", (after, self.batch)).fetchall()

    # -- the central side -----------------------------------------------------
    def _central(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url)
        return self._conn

    def central_head(self) -> int:
        conn = self._central()
        with conn.transaction():
            row = conn.execute("SELECT head_seq FROM hosts WHERE host_id=%s", (self.host,)).fetchone()
        return int(row[0]) if row else 0

    def _send(self, rows: list[tuple], backlog: int) -> tuple[int, int, int, int]:
        conn = self._central()
        paths = {raw for r in rows for raw in (r[3], r[4]) if raw is not None}
        with conn.transaction():
            conn.execute(_STAGING)
            with conn.cursor() as cur:
                with cur.copy("COPY incoming(seq, rid, kind, p1, p2, body, hash) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
                with cur.copy("COPY incoming_paths(path, fkey, shared) FROM STDIN") as cp:
                    for raw in paths:
                        cp.write_row((raw, *self.keyer.key(bytes(raw))))
            got = conn.execute("SELECT accepted, duplicates, losses, head_seq FROM provtrace_ingest(%s, %s)",
                               (self.host, backlog)).fetchone()
        return got

    # -- shipping -------------------------------------------------------------
    def ship(self, *, from_seq: int | None = None, max_batches: int | None = None) -> ShipResult:
        """Send batches until the central head reaches the local head (or max_batches).

        from_seq re-sends from that record on (the central side drops what it
        holds). FleetError, one line, when the database is away or refuses."""
        res = ShipResult()
        try:
            after = self.central_head() if from_seq is None else max(0, from_seq - 1)
            res.central_head = after
            n = 0
            while max_batches is None or n < max_batches:
                res.local_head = self.local_head()
                rows = self._read(after)
                if not rows:
                    break
                backlog = res.local_head - rows[-1][0]
                acc, dup, lost, head = self._send(rows, backlog)
                res.accepted += acc
                res.duplicates += dup
                res.losses += lost
                res.central_head = max(res.central_head, head)
                after = rows[-1][0]
                n += 1
                log.debug("event=shipped host=%s upto=%d accepted=%d duplicates=%d", self.host, after, acc, dup)
            res.local_head = self.local_head()
        except errors() as e:
            self._drop_connection()
            raise FleetError(f"shipping to {redact(self.url)} failed: {first_line(e)}; "
                             "nothing is lost: the next ship resumes from the central head") from e
        except sqlite3.Error as e:
            raise StoreError(f"cannot read store {self.store_path} to ship it: {e}") from e
        if res.local_head < res.central_head and from_seq is None:
            log.warning("event=central-ahead host=%s central=%d local=%d", self.host,
                        res.central_head, res.local_head)
        return res

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except errors():
                pass  # closing a connection whose server is gone
            self._conn = None


class ShipLoop:
    """The daemon's shipper: one step ships what is committed, a bounded number
    of batches at a time, so the loop stays responsive to stop; the daemon's
    guarded loop calls it every few seconds and survives a database away."""

    def __init__(self, shipper: Shipper, batches_per_step: int = 20) -> None:
        self.shipper = shipper
        self.batches_per_step = batches_per_step
        self.last: ShipResult | None = None
        self.last_error: str | None = None
        self._warned = 0.0

    def step(self) -> None:
        try:
            self.last = self.shipper.ship(max_batches=self.batches_per_step)
        except FleetError as e:
            self.last_error = str(e)
            raise
        self.last_error = None
        backlog = self.last.backlog
        if backlog > BACKLOG_WARN and time.monotonic() - self._warned >= 60:
            self._warned = time.monotonic()
            log.warning("event=ship-backlog host=%s records=%d", self.shipper.host, backlog)
