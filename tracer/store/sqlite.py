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

import errno
import hashlib
import json
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..context.redact import redact_text
from ..errors import AnchorMismatch, ChainBroken, StorageCorrupt, StoreError, StoreWriteError
from . import private

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
# links and directories: LINK [pid, time, cell, op, target] (p1 = new name,
# p2 = the file it names, NULL for an O_TMPFILE file); DIR [pid, time, cell, op] (p1)
LINK, DIR = 20, 21
KIND_NAMES.update({LINK: "link", DIR: "dir"})
# a run's process tree has exited and its records are stored; its context,
# fingerprints and end follow (store/finisher.py): {"released", "exit_code", "signal", "pending"}
RUN_RELEASED = 13
KIND_NAMES[RUN_RELEASED] = "run_released"

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
CREATE INDEX IF NOT EXISTS records_linked_from ON records(p2) WHERE kind = 20;
"""


SYSTEM_DIR = "/var/lib/provtrace"


def default_db_path() -> str:
    """PROVTRACE_DB, else root's system store, else the user's XDG data dir."""
    return os.environ.get("PROVTRACE_DB") or os.path.join(default_dir(), "provtrace.db")


def default_dir() -> str:
    """The directory provtrace owns for this user's default store."""
    if os.geteuid() == 0:
        return SYSTEM_DIR
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "provtrace")


def chain_hash(prev: bytes, rid: int, kind: int, p1: bytes | None, p2: bytes | None, body: str) -> bytes:
    """sha256(prev || "rid|kind|" || p1 || NUL || p2 || NUL || body), hashed in one call."""
    return hashlib.sha256(b"".join((prev, b"%d|%d|" % (rid, kind), p1 or b"", b"\0", p2 or b"",
                                    b"\0", body.encode("utf-8", "surrogateescape")))).digest()


# json.dumps with any option builds a new JSONEncoder per call; one encoder
# made once writes the same text (a store write is one dumps per record).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dumps(obj: object) -> str:
    """Compact JSON. ASCII-escaped, so a name that is not UTF-8 (a str with
    surrogateescape characters) is stored as \\udcXX and loads back exactly."""
    return _ENCODER.encode(obj)


class Pending(NamedTuple):
    """A record queued for the next flush (body already serialised). The queue
    holds plain tuples of these fields (a NamedTuple costs a Python-level call
    to build, once per record); this names them."""

    rid: int
    kind: int
    p1: str | None
    p2: str | None
    body: str


# What a write can meet on a live host (a full disk, an I/O error, a lock held
# past the busy timeout): each becomes a StoreWriteError, one line.
_WRITE_ERRORS = (sqlite3.Error, OSError)
# Errors that say the store's filesystem cannot take more (SQLite reports a
# full disk as SQLITE_FULL, or as an I/O error where it grows -wal or -shm).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def out_of_space(exc: BaseException) -> bool:
    """exc says the disk is full or failing (not a bad path, a permission, a schema)."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        return name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or \
            any(w in str(exc) for w in ("disk is full", "disk I/O error"))
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()

# Most placeholders one SELECT ... IN (...) takes when looking up new path ids
# (SQLite's limit is 32766 since 3.32, 999 before).
_IN_CHUNK = 500


class Store:
    """One SQLite file. Open with Store(path); readers and one writer may share it.

    Opened for writing, the store is made private first (store/private.py):
    its files 0600, its directory 0700 when created here, or when own_dir
    (default: when it is default_dir()) says the directory is provtrace's.
    """

    def __init__(self, path: str, *, create: bool = True, readonly: bool = False,
                 own_dir: bool | None = None) -> None:
        self.path = path
        if readonly or not create:
            if not os.path.exists(path):
                raise StoreError(f"no store at {path} (trace something first, or pass --db)")
        if not readonly:
            if own_dir is None:
                own_dir = os.path.dirname(os.path.abspath(path)) == os.path.abspath(default_dir())
            try:
                private.prepare(path, own_dir=own_dir)
            except OSError as e:
                if out_of_space(e):
                    raise StoreWriteError(f"cannot open store {path} for writing: "
                                          f"{e.strerror or e}") from e
                raise StoreError(f"cannot open store {path} for writing: {e.strerror or e}; "
                                 "check the folder is writable, or pass --db") from e
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
            cls = StoreWriteError if out_of_space(e) and not readonly else StoreError
            raise cls(f"cannot open store {path}: {e}") from e
        # path -> (paths.id, the path's bytes): each name is encoded and looked up once
        self._path_ids: dict[str, tuple[int, bytes]] = {}
        self._pending: list[tuple] = []  # Pending's fields
        # rid -> records that a failed write dropped; end_run marks the run incomplete
        self.lost_records: dict[int, int] = {}
        self.write_error: str | None = None  # the last failed write's message, until one succeeds
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
        if header.get("label"):  # a label is free text from the user: no secret reaches the file
            header = {**header, "label": redact_text(header["label"])}
        from .recover import writer_stamp  # noqa: PLC0415

        header = {**header, "writer": writer_stamp()}  # recovery closes the run once its writer is gone
        try:
            with self._lock, self._tx():
                cur = self.db.execute(
                    "INSERT INTO runs(id, kind, label, backend, uid, user, started) VALUES(?,?,?,?,?,?,?)",
                    (run_id, header["kind"], header.get("label"), header.get("backend"),
                     header.get("uid"), header.get("user"), header.get("started")))
                rid = int(cur.lastrowid)
                self._append_now([Pending(rid, RUN_START, None, None, dumps(header))])
        except _WRITE_ERRORS as e:
            raise self._write_failed(e, "a new run") from e
        self.write_error = None
        return rid

    def append(self, rid: int, kind: int, body: object, p1: str | None = None, p2: str | None = None) -> None:
        """Queue a record; it reaches the file at the next flush()."""
        with self._lock:
            self._pending.append((rid, kind, p1, p2, body if isinstance(body, str) else dumps(body)))

    def append_many(self, rid: int, kind: int, items: list[tuple[object, str | None, str | None]]) -> None:
        """Queue several records of one kind: (body, p1, p2) each, in order."""
        batch = [(rid, kind, p1, p2, body if isinstance(body, str) else dumps(body))
                 for body, p1, p2 in items]
        with self._lock:
            self._pending.extend(batch)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write queued records in one transaction. Returns how many.

        When the write fails (StoreWriteError), the batch is dropped, not kept:
        a full disk must not grow memory without bound. Its records are counted
        per run in lost_records, and that run's end says it is incomplete."""
        with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, []
            try:
                with self._tx():
                    self._append_now(batch)
            except _WRITE_ERRORS as e:
                for r in batch:
                    self.lost_records[r[0]] = self.lost_records.get(r[0], 0) + 1
                rids = sorted({r[0] for r in batch})
                raise self._write_failed(e, f"{len(batch)} records of run index {rids[:5]}") from e
            self.write_error = None
            return len(batch)

    def end_run(self, rid: int, end: dict) -> None:
        """Flush, then write the run's end. The end is tried even when the flush
        failed (a small record may fit where a batch did not); records lost to
        failed writes make it incomplete, with the count under gaps. Raises
        StoreWriteError when the end itself cannot be written: the run then
        stays open until it is written again, or closed at recovery."""
        try:
            self.flush()
        except StoreWriteError:
            pass  # counted in lost_records: the end says so
        with self._lock:
            lost = self.lost_records.get(rid, 0)
            if lost:
                end = {**end, "complete": False, "lost_records": lost,
                       "gaps": {**(end.get("gaps") or {}), "store_write_failed": lost}}
            try:
                with self._tx():
                    if self._ended(rid):  # closed meanwhile (recovery judged its writer gone)
                        log.warning("event=end-after-close rid=%d", rid)
                        return
                    self._append_now([Pending(rid, RUN_END, None, None, dumps(end))])
                    self.db.execute("UPDATE runs SET ended=?, exit_code=?, lost_events=?, complete=? "
                                    "WHERE rid=?", (end.get("ended"), end.get("exit_code"),
                                                    end.get("lost_events"), int(bool(end.get("complete"))),
                                                    rid))
            except _WRITE_ERRORS as e:
                raise self._write_failed(e, "the end of a run") from e
            self.lost_records.pop(rid, None)
            self.write_error = None

    def _ended(self, rid: int) -> bool:
        """rid has its end record already: one run, one end (verify checks the index against it)."""
        row = self.db.execute("SELECT ended FROM runs WHERE rid=?", (rid,)).fetchone()
        return bool(row and row[0])

    def _write_failed(self, exc: BaseException, what: str) -> StoreWriteError:
        """The one-line error for a write that failed (remembered until one succeeds)."""
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, OSError):
            reason = exc.strerror or reason
        self.write_error = f"cannot write {what} to store {self.path}: {reason}"
        return StoreWriteError(self.write_error)

    def _tx(self):
        # After a rollback, path ids handed out in it may be handed out again
        # to other names: forget them all (they are looked up again).
        return _Tx(self.db, on_rollback=self._path_ids.clear)

    def _register_paths(self, batch: list[Pending]) -> None:
        """Give every path of batch its paths.id, a chunk of names per statement
        (not two statements per name). Runs inside the flush's BEGIN IMMEDIATE
        transaction, so no other writer can take the ids handed out here."""
        known = self._path_ids
        # first-seen order, so ids are handed out as the records name them
        new = dict.fromkeys(p for r in batch for p in (r[2], r[3]) if p is not None and p not in known)
        if not new:
            return
        by_raw: dict[bytes, list[str]] = {}
        for path in new:  # str.encode as os.fsencode does it, without its call per name
            by_raw.setdefault(path.encode(_FS_ENCODING, _FS_ERRORS), []).append(path)
        missing = dict.fromkeys(by_raw)  # names not in the table yet (another run may have them)
        raws = list(by_raw)
        for i in range(0, len(raws), _IN_CHUNK):
            chunk = raws[i: i + _IN_CHUNK]
            sql = f"SELECT id, path FROM paths WHERE path IN ({','.join('?' * len(chunk))})"
            for pid, raw in self.db.execute(sql, chunk):
                del missing[raw]
                for path in by_raw[raw]:
                    known[path] = (pid, raw)
        if not missing:
            return
        first = self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM paths").fetchone()[0]
        rows = list(enumerate(missing, first))
        self.db.executemany("INSERT INTO paths(id, path) VALUES(?,?)", rows)
        for pid, raw in rows:
            for path in by_raw[raw]:
                known[path] = (pid, raw)

    def _append_now(self, batch: list[Pending]) -> None:
        row = self.db.execute("SELECT hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS
        self._register_paths(batch)
        known = self._path_ids
        rows = []
        for rid, kind, p1, p2, body in batch:
            i1, b1 = known[p1] if p1 is not None else (None, None)
            i2, b2 = known[p2] if p2 is not None else (None, None)
            prev = chain_hash(prev, rid, kind, b1, b2, body)
            rows.append((rid, kind, i1, i2, body, prev))
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

    def head_seq(self) -> tuple[str, int]:
        """(hash, sequence) of the last record: an anchor to keep somewhere else."""
        with self._lock:  # never mid-transaction of another thread's flush
            row = self.db.execute("SELECT hash, seq FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0].hex(), int(row[1])) if row else (GENESIS.hex(), 0)

    def check_storage(self) -> None:
        """SQLite's integrity_check (pages, freelists, every index against its
        table); raises StorageCorrupt naming what is damaged."""
        try:
            rows = [r[0] for r in self.db.execute("PRAGMA integrity_check(100)")]
        except sqlite3.DatabaseError as e:  # damaged beyond what the check can walk
            rows = [str(e)]
        if rows != ["ok"]:
            raise StorageCorrupt(self.path, rows)

    def check_anchor(self, anchor_hash: str, anchor_seq: int | None = None) -> int:
        """After verify(): the record anchored as HASH (at SEQ) is still in the chain.

        A verified chain whose record at SEQ still has the anchored hash cannot
        have lost or changed anything up to SEQ: each hash covers every record
        before it. Returns the anchored sequence; raises AnchorMismatch."""
        try:
            want = bytes.fromhex(anchor_hash)
        except ValueError:
            raise AnchorMismatch(f"anchor {anchor_hash!r} is not a hex hash") from None
        if want == GENESIS and anchor_seq in (None, 0):
            return 0  # anchored while empty: every store holds that
        if anchor_seq is None:
            row = self.db.execute("SELECT seq FROM records WHERE hash=?", (want,)).fetchone()
            if row is None:
                raise AnchorMismatch(f"no record has the anchored hash {anchor_hash[:16]}…: the history "
                                     "up to the anchor was removed or rewritten")
            return int(row[0])
        row = self.db.execute("SELECT hash FROM records WHERE seq=?", (anchor_seq,)).fetchone()
        if row is None:
            last = self.head_seq()[1]
            where = "from the end" if anchor_seq > last else f"(record {anchor_seq} is gone)"
            raise AnchorMismatch(f"the anchor is record {anchor_seq}, but the store ends at record {last}: "
                                 f"records were removed {where}")
        if row[0] != want:
            raise AnchorMismatch(f"record {anchor_seq} has hash {row[0].hex()[:16]}…, the anchor says "
                                 f"{anchor_hash[:16]}…: the history up to the anchor was rewritten")
        return anchor_seq


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: one writer at a time keeps the chain linear."""

    def __init__(self, db: sqlite3.Connection, on_rollback: Callable[[], None] | None = None) -> None:
        self.db = db
        self.on_rollback = on_rollback

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if not exc_type:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:  # a full disk shows at COMMIT too (the WAL grows there)
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite may have rolled back itself (SQLITE_FULL, some I/O errors): then
        # there is nothing to roll back, and ROLLBACK would raise over the real error.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("event=rollback-failed")
        if self.on_rollback:
            self.on_rollback()
