"""Where the TUI's data comes from: a store file, a live daemon, or the
fleet's central store.

Every source answers the same four questions (which runs, one run's
provtrace.run/1 document, the lineage of a path, where the data comes
from) and raise TracerError subclasses with one-line messages. Calls block,
so the app makes them from worker threads. Headless: no textual here.
"""

from __future__ import annotations

import json
import logging
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from ..tracer.errors import StoreError, TracerError, UsageError
from ..tracer.model.paths import display
from ..tracer.store import queries as Q
from ..tracer.store import sqlite as S
from . import model as M

log = logging.getLogger(__name__)


class RunSource(Protocol):
    description: str

    def list_runs(self) -> list[M.RunSummary]: ...

    def load_run(self, run_id: str) -> dict:
        """The provtrace.run/1 document of a run id, unique prefix, or "last"."""
        ...

    def lineage(self, path: str, direction: str, depth: int) -> M.Lineage: ...

    def watch_stale(self, on_stale: Callable[[M.StaleNotice], None]) -> None:
        """Calls on_stale for each staleness event pushed while the app runs; returns
        when the source closes (at once for a source that pushes nothing)."""
        ...

    def job_history(self, doc: dict) -> list[dict]:
        """The latest runs of doc's job (same kind and argv), oldest first, with
        their resources: tracer/store/history.py's entries."""
        ...

    def close(self) -> None: ...


class StoreSource:
    """A store file, opened read-only: the TUI never writes to it."""

    def __init__(self, path: str, config=None) -> None:
        # Store raises StoreError for a missing, unreadable, or foreign file,
        # here, so the CLI reports it before the app takes the terminal.
        self.store = S.Store(path, readonly=True)
        self.config = config  # the config file's [classify] rules, applied to what is shown
        self.description = f"store {path}"
        # One SQLite connection serves every worker thread; calls take turns.
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """One call at a time; SQLite failures mid-session (a locked or damaged
        file) become StoreError, which the screens show as one line."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"reading store {self.store.path}: {exc}") from exc

    def list_runs(self) -> list[M.RunSummary]:
        with self._reading():
            return [M.summary_from_row(r) for r in Q.list_runs(self.store)]

    def load_run(self, run_id: str) -> dict:
        with self._reading():
            return Q.load_run(self.store, Q.resolve_run(self.store, run_id), self.config)

    def lineage(self, path: str, direction: str, depth: int) -> M.Lineage:
        from ..tracer.lineage.graph import lineage, now_fingerprint  # noqa: PLC0415  (networkx is slow to import)

        _check_lineage_args(direction, depth)
        now = now_fingerprint(path)  # the bytes on disk now, as this user reads them
        with self._reading():
            return M.lineage_from_store(lineage(self.store, path, direction, depth, now=now,
                                                       config=self.config))

    def watch_stale(self, on_stale: Callable[[M.StaleNotice], None]) -> None:
        """A store file pushes nothing: staleness is `provtrace stale` (or r to reload)."""
        return

    def job_history(self, doc: dict) -> list[dict]:
        from ..tracer.store.history import same_job  # noqa: PLC0415

        with self._reading():
            return same_job(self.store, doc, None, self.config)

    def close(self) -> None:
        with self._lock:
            self.store.close()


class DaemonSource:
    """A live daemon over gRPC: the caller sees what its uid may see."""

    def __init__(self, socket_path: str, timeout_s: float = 30.0) -> None:
        from ..tracer.serve.client import ProvtraceClient  # noqa: PLC0415  (grpc only when asked)

        self.client = ProvtraceClient(socket_path, timeout_s=timeout_s)
        self.description = f"daemon {self.client.socket_path}"
        self._stream = None  # the open staleness stream, cancelled by close()
        self._closed = threading.Event()
        try:
            # Ask once now: no daemon is a one-line CLI error, not an empty app.
            self.client.health()
        except TracerError:
            self.client.close()
            raise

    def list_runs(self) -> list[M.RunSummary]:
        return [M.summary_from_record(r) for r in self.client.list_runs()]

    def load_run(self, run_id: str) -> dict:
        raw = self.client.export(run_id, "json")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise TracerError(f"{self.description}: export of {run_id} is not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise TracerError(f"{self.description}: export of {run_id} is not one run document")
        context = None if doc.get("schema") == Q.SCHEMA else self.client.context(run_id)
        try:
            return M.document_from_export(doc, context)
        except ValueError as exc:
            raise TracerError(f"{self.description}: export of {run_id}: {exc}") from None

    def lineage(self, path: str, direction: str, depth: int) -> M.Lineage:
        _check_lineage_args(direction, depth)
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            # protobuf strings are UTF-8; the raw name cannot cross the API.
            raise UsageError(f"lineage of a non-UTF-8 path ({display(path)}) is not available "
                             "through the daemon; open the store with: provtrace tui --db PATH") from None
        graph = self.client.lineage(path, direction, depth)
        return M.lineage_from_graph(os.path.abspath(path), direction, graph)

    def watch_stale(self, on_stale: Callable[[M.StaleNotice], None]) -> None:
        """The daemon's "stale" events (docs/stale.md, "Pushed staleness"), until close()."""
        if self._closed.is_set():
            return
        self._stream = self.client.stream_events(kinds=["stale"])
        if self._closed.is_set():  # closed while the stream opened
            self._stream.cancel()
            return
        for event in self._stream:
            notice = M.stale_notice(event)
            if notice is not None:
                on_stale(notice)

    def job_history(self, doc: dict) -> list[dict]:
        """The daemon has no query by job: the caller's latest runs of the same
        kind, loaded one by one, those with the same argv kept."""
        from ..tracer.store.history import SAME_JOB_RUNS, entry  # noqa: PLC0415

        run = doc["run"]
        same_kind = [r for r in self.list_runs() if r.kind == run.get("kind")]
        out = []
        for r in sorted(same_kind, key=lambda r: r.started or "")[-SAME_JOB_RUNS:]:
            other = doc if r.id == run.get("id") else self.load_run(r.id)
            key = "label" if run.get("kind") == "session" and run.get("label") else "argv"
            if other["run"].get(key) == run.get(key):
                out.append(entry(other["run"], run.get("id")))
        return out

    def close(self) -> None:
        self._closed.set()
        if self._stream is not None:
            self._stream.cancel()
        self.client.close()


class FleetSource:
    """The fleet's central PostgreSQL store (docs/fleet.md): every host's runs
    that the URL's role may see. Runs are named HOST:RUN; a path's lineage is
    asked of the host of the run last opened (else this host's id), and a file
    node of a lineage is re-rooted by its fleet key."""

    def __init__(self, url: str, config=None) -> None:
        from ..tracer.fleet import query as F  # noqa: PLC0415  (psycopg only when asked)
        from ..tracer.fleet.identity import host_id  # noqa: PLC0415

        self.F = F
        self.central = F.Central(url)  # no database, or no schema: one line before the app
        self.config = config
        self.host = host_id(None)
        self.description = f"fleet store {self.central.path}"
        self._lock = threading.Lock()  # one connection, calls take turns

    def list_runs(self) -> list[M.RunSummary]:
        with self._lock:
            rows = self.F.list_runs(self.central)
        return [M.summary_from_row({**r, "id": f"{r['host_id']}:{r['id']}"}) for r in rows]

    def load_run(self, run_id: str) -> dict:
        with self._lock:
            host, rid = self.F.resolve_run(self.central, run_id)
            doc = self.F.load_run(self.central, host, rid, self.config)
        self.host = host  # the paths of its files are that host's
        return doc

    def lineage(self, path: str, direction: str, depth: int) -> M.Lineage:
        _check_lineage_args(direction, depth)
        # a file node's id is its fleet key (shared:/..., nfs://..., host:H:/...), never a bare path
        keys = None if path.startswith("/") else [path]
        with self._lock:
            result = self.F.lineage(self.central, path, self.host, direction, depth, keys=keys)
        return M.lineage_from_fleet(result)

    def watch_stale(self, on_stale: Callable[[M.StaleNotice], None]) -> None:
        """The fleet store pushes nothing: staleness is `provtrace stale --db URL`."""
        return

    def job_history(self, doc: dict) -> list[dict]:
        """No query by job over the fleet yet: the run alone."""
        from ..tracer.store.history import entry  # noqa: PLC0415

        return [entry(doc["run"], doc["run"].get("id"))]

    def close(self) -> None:
        with self._lock:
            self.central.close()


def _check_lineage_args(direction: str, depth: int) -> None:
    if direction not in (M.UPSTREAM, M.DOWNSTREAM):
        raise UsageError(f"lineage direction must be upstream or downstream, got {direction!r}")
    if depth < 1:
        raise UsageError(f"lineage depth must be at least 1, got {depth}")


def open_source(db: str | None = None, socket_path: str | None = None, config=None) -> RunSource:
    """The store file (db, else the default store) or, with socket_path, the daemon
    (which applies the system config file's rules itself)."""
    if db and socket_path:
        raise UsageError("give --db or --socket, not both")
    if socket_path:
        return DaemonSource(socket_path)
    from ..tracer.fleet.db import is_url  # noqa: PLC0415

    if is_url(db):
        return FleetSource(db, config)
    return StoreSource(db or S.default_db_path(), config)
