"""The embedded store: SQLite (WAL), append-only, hash-chained, versioned.

Every fact is a row of `records`, chained: hash = sha256(prev_hash || rid ||
kind || path bytes || body). `runs` is an index of each run's start and end
records, kept for fast listing; `provtrace verify` recomputes the chain and
checks the index against it. Writes are batched: the event path appends to a
list, and one transaction per batch hashes and inserts the rows.

File records carry their path as an id into `paths` (raw bytes, so names that
are not UTF-8 are kept exactly); the hash covers the path bytes, not the id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChainBroken, StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
GENESIS = b"\0" * 32

# record kinds
RUN_START, PROCESS, FILE, RENAME, NET, PIPE, CELL, CONTEXT, RUN_END, GAP = range(1, 11)
CELL_CONTEXT = 12  # {"cell": id, "libraries", "packages", "interpreters", "gpu_samples"}
KIND_NAMES = {RUN_START: "run_start", PROCESS: "process", FILE: "file", RENAME: "rename",
              NET: "net", PIPE: "pipe", CELL: "cell", CONTEXT: "context", RUN_END: "run_end",
              GAP: "gap"}
# content identity of a data file at a run's or cell's end (store/fingerprint.py)
FINGERPRINT = 11
KIND_NAMES[FINGERPRINT] = "fingerprint"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS paths(id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS runs(
  rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, label TEXT,
  backend TEXT, uid INTEGER, user TEXT, started TEXT, ended TEXT, exit_code INTEGER,
  lost_events INTEGER, complete INTEGER);
CREATE TABLE IF NOT EXISTS records(
  seq INTEGER PRIMARY KEY, rid INTEGER NOT NULL, kind INTEGER NOT NULL,
  p1 INTEGER, p2 INTEGER, body TEXT NOT NULL, hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_rid ON records(rid);
CREATE INDEX IF NOT EXISTS records_p1 ON records(p1) WHERE p1 IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_renamed_from ON records(p2) WHERE kind = 4;
"""


def default_db_path() -> str:
    """PROVTRACE_DB, else root's system store, else the user's XDG data dir."""
    env = os.environ.get("PROVTRACE_DB")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/provtrace/provtrace.db"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "provtrace", "provtrace.db")


def chain_hash(prev: bytes, rid: int, kind: int, p1: bytes | None, p2: bytes | None, body: str) -> bytes:
    h = hashlib.sha256(prev)
    h.update(f"{rid}|{kind}|".encode())
    h.update(p1 or b"")
    h.update(b"\0")
    h.update(p2 or b"")
    h.update(b"\0")
    h.update(body.encode("utf-8", "surrogateescape"))
    return h.digest()


def dumps(obj: object) -> str:
    """Compact JSON. ASCII-escaped, so a name that is not UTF-8 (a str with
    surrogateescape characters) is stored as \\udcXX and loads back exactly."""
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class Pending:
    rid: int
    kind: int
    p1: str | None
    p2: str | None
    body: str


class Store:
    """One SQLite file. Open with Store(path); readers and one writer may share it."""

    def __init__(self, path: str, *, create: bool = True, readonly: bool = False) -> None:
        self.path = path
        if readonly or not create:
            if not os.path.exists(path):
                raise StoreError(f"no store at {path} (trace something first, or pass --db)")
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=30000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                self._check_version(write=True)
            else:
                self._check_version(write=False)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open store {path}: {e}") from e
        self._path_ids: dict[str, int] = {}
        self._pending: list[Pending] = []
        # One Store may be shared by threads (a notebook's consumer and its cell
        # hooks; the daemon's sessions): writes and the chain head go one at a time.
        self._lock = threading.RLock()

    def _check_version(self, write: bool) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
            if self._has_table("meta") else None
        if row is None:
            if write:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            raise StoreError(f"{self.path} is not a provtrace store (no schema version)")
        if int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema {row[0]}, newer than this provtrace "
                             f"({SCHEMA_VERSION}); upgrade provtrace")

    def _has_table(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                               (name,)).fetchone() is not None

    def close(self) -> None:
        self.db.close()

    # -- writing ---------------------------------------------------------------
    def new_run(self, run_id: str, header: dict) -> int:
        """Insert the run index row and its chained start record; returns rid."""
        with self._lock, self._tx():
            cur = self.db.execute(
                "INSERT INTO runs(id, kind, label, backend, uid, user, started) VALUES(?,?,?,?,?,?,?)",
                (run_id, header["kind"], header.get("label"), header.get("backend"),
                 header.get("uid"), header.get("user"), header.get("started")))
            rid = int(cur.lastrowid)
            self._append_now([Pending(rid, RUN_START, None, None, dumps(header))])
        return rid

    def append(self, rid: int, kind: int, body: object, p1: str | None = None, p2: str | None = None) -> None:
        """Queue a record; it reaches the file at the next flush()."""
        with self._lock:
            self._pending.append(Pending(rid, kind, p1, p2, body if isinstance(body, str) else dumps(body)))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write queued records in one transaction. Returns how many."""
        with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, []
            with self._tx():
                self._append_now(batch)
            return len(batch)

    def end_run(self, rid: int, end: dict) -> None:
        self.flush()
        with self._lock, self._tx():
            self._append_now([Pending(rid, RUN_END, None, None, dumps(end))])
            self.db.execute("UPDATE runs SET ended=?, exit_code=?, lost_events=?, complete=? WHERE rid=?",
                            (end.get("ended"), end.get("exit_code"), end.get("lost_events"),
                             int(bool(end.get("complete"))), rid))

    def _tx(self):
        return _Tx(self.db)

    def _path_id(self, path: str) -> int:
        pid = self._path_ids.get(path)
        if pid is None:
            raw = os.fsencode(path)
            self.db.execute("INSERT OR IGNORE INTO paths(path) VALUES(?)", (raw,))
            pid = self.db.execute("SELECT id FROM paths WHERE path=?", (raw,)).fetchone()[0]
            self._path_ids[path] = pid
        return pid

    def _append_now(self, batch: list[Pending]) -> None:
        row = self.db.execute("SELECT hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS
        rows = []
        for r in batch:
            b1 = os.fsencode(r.p1) if r.p1 is not None else None
            b2 = os.fsencode(r.p2) if r.p2 is not None else None
            prev = chain_hash(prev, r.rid, r.kind, b1, b2, r.body)
            rows.append((r.rid, r.kind, self._path_id(r.p1) if r.p1 is not None else None,
                         self._path_id(r.p2) if r.p2 is not None else None, r.body, prev))
        self.db.executemany("INSERT INTO records(rid, kind, p1, p2, body, hash) VALUES(?,?,?,?,?,?)", rows)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES('head', ?)", (prev.hex(),))

    # -- reading ---------------------------------------------------------------
    def records(self, rid: int | None = None, kinds: tuple[int, ...] | None = None) -> Iterator[tuple]:
        """(seq, rid, kind, p1 path, p2 path, body) in chain order."""
        sql = ("SELECT r.seq, r.rid, r.kind, a.path, b.path, r.body FROM records r "
               "LEFT JOIN paths a ON a.id=r.p1 LEFT JOIN paths b ON b.id=r.p2")
        where, args = [], []
        if rid is not None:
            where.append("r.rid=?")
            args.append(rid)
        if kinds:
            where.append(f"r.kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.seq"
        for seq, r, k, a, b, body in self.db.execute(sql, args):
            yield seq, r, k, os.fsdecode(a) if a is not None else None, \
                os.fsdecode(b) if b is not None else None, body

    def verify(self) -> int:
        """Recompute the chain; returns the record count or raises ChainBroken."""
        prev = GENESIS
        n = 0
        sql = ("SELECT r.seq, r.rid, r.kind, a.path, b.path, r.body, r.hash, r.p1, r.p2 FROM records r "
               "LEFT JOIN paths a ON a.id=r.p1 LEFT JOIN paths b ON b.id=r.p2 ORDER BY r.seq")
        for seq, rid, kind, a, b, body, h, p1, p2 in self.db.execute(sql):
            if (p1 is not None and a is None) or (p2 is not None and b is None):
                raise ChainBroken(seq, "refers to a path that is missing from the paths table")
            expect = chain_hash(prev, rid, kind, a, b, body)
            if expect != h:
                raise ChainBroken(seq, f"{KIND_NAMES.get(kind, kind)} record does not match its hash "
                                       "(edited, reordered, or a record before it was removed)")
            prev = h
            n += 1
        head = self.db.execute("SELECT value FROM meta WHERE key='head'").fetchone()
        if head and head[0] != prev.hex():
            raise ChainBroken(n, f"the last record's hash {prev.hex()[:16]}… is not the recorded head "
                                 f"{head[0][:16]}… (records were removed from the end)")
        for rid, ended, exit_code in self.db.execute("SELECT rid, ended, exit_code FROM runs"):
            row = self.db.execute("SELECT seq, body FROM records WHERE rid=? AND kind=?",
                                  (rid, RUN_END)).fetchone()
            if row is None:
                continue
            end = json.loads(row[1])
            if end.get("exit_code") != exit_code or end.get("ended") != ended:
                raise ChainBroken(row[0], f"runs index for run {rid} disagrees with its end record")
        return n

    def head(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key='head'").fetchone()
        return row[0] if row else GENESIS.hex()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: one writer at a time keeps the chain linear."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
