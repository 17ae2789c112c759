"""Cell reports merged in memory (CellMerger), and InMemoryStore, a
SessionStore of merged reports alone.

CellMerger holds the runs the daemon knows now and their cells. Cell
reports from every source (IOPub, gRPC reports, the notebook runner) merge
into one record per execution: same msg_id, or else the same cell id still
running, or else the same execution_count. It publishes kernel and cell
events on the hub. Both stores own one: InMemoryStore here, and the
daemon's TracingStore (sessions.py), which adds tracing and SQLite to it.

InMemoryStore serves a server with no capture behind it (the API's and
the TUI's end-to-end tests): it knows sessions, cells and commands, not
processes or files; the cells' reads and writes are what its caller
added to its merger (CellMerger.add_io).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import uuid
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UsageError
from ..serve.backend import FORMATS, NotFound
from ..serve.events import EventHub
from ..serve.records import (
    ApiEvent,
    CellEndReport,
    CellRecord,
    CellStartReport,
    KernelRecord,
    LineageEdge,
    LineageGraph,
    LineageNode,
    RunRecord,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CellMerger:
    """The runs known now and their merged cells; thread-safe.

    Every method takes the merger's lock itself: callers never see its dicts,
    only copies of the frozen records in them."""

    def __init__(self, hub: EventHub | None = None, backend: str = "ebpf") -> None:
        self.hub = hub
        self.backend = backend
        self._lock = threading.RLock()
        self._runs: dict[str, RunRecord] = {}
        self._cells: dict[str, list[CellRecord]] = {}
        self._traced_pids: dict[int, str] = {}

    # -- sessions ------------------------------------------------------------
    def register_kernel(self, *, pid: int, pid_start_ns: int, uid: int, user: str | None,
                        connection_file: str | None, notebook_path: str | None,
                        kernel_name: str | None, language: str | None,
                        session_id: str | None) -> KernelRecord:
        """A new session run for the kernel (session_id: the caller's, or a new one)."""
        with self._lock:
            sid = session_id or f"s-{uuid.uuid4().hex[:12]}"
            existing = self._runs.get(sid)
            if existing is not None and existing.uid != uid:
                raise UsageError(f"session id {sid!r} is taken; leave session_id empty to get a new one")
            kernel = KernelRecord(
                session_id=sid, pid=pid, pid_start_ns=pid_start_ns, uid=uid,
                connection_file=connection_file, notebook_path=notebook_path,
                kernel_name=kernel_name, language=language, started=_now(),
            )
            label = notebook_path or connection_file or kernel_name
            self._runs[sid] = RunRecord(id=sid, kind="session", uid=uid, user=user, label=label,
                                        backend=self.backend, started=kernel.started, kernel=kernel)
            self._cells.setdefault(sid, [])
        self.publish(ApiEvent(kind="kernel", uid=uid, time=_now(), session_id=sid, pid=pid, kernel=kernel))
        return kernel

    def fill_kernel(self, session_id: str, *, connection_file: str | None, notebook_path: str | None,
                    kernel_name: str | None, language: str | None) -> KernelRecord:
        """The same kernel reported again (IOPub discovery, then a provisioner):
        what the session did not know yet is filled in; nothing known is replaced."""
        with self._lock:
            run = self.run(session_id)
            kernel = dataclasses.replace(
                run.kernel, notebook_path=run.kernel.notebook_path or notebook_path,
                connection_file=run.kernel.connection_file or connection_file,
                kernel_name=run.kernel.kernel_name or kernel_name,
                language=run.kernel.language or language)
            self._runs[session_id] = dataclasses.replace(run, kernel=kernel, label=run.label or notebook_path)
        return kernel

    def end_session(self, session_id: str) -> RunRecord:
        with self._lock:
            run = self.run(session_id)
            ended = _now()
            kernel = dataclasses.replace(run.kernel, ended=ended, alive=False) if run.kernel else None
            run = self._runs[session_id] = dataclasses.replace(run, ended=ended, kernel=kernel)
        self.publish(ApiEvent(kind="kernel", uid=run.uid, time=ended, session_id=run.id, kernel=kernel))
        return run

    # -- cells ---------------------------------------------------------------
    def cell_start(self, report: CellStartReport) -> CellRecord:
        with self._lock:
            run = self.run(report.session_id)
            cells = self._cells[run.id]
            i = _match(cells, report.msg_id, report.cell_id, report.execution_count)
            old = cells[i] if i is not None else CellRecord(session_id=run.id)
            new = dataclasses.replace(
                old,
                cell_id=old.cell_id or report.cell_id,
                msg_id=old.msg_id or report.msg_id,
                index=old.index if old.index is not None else report.index,
                execution_count=old.execution_count or report.execution_count,
                code_sha256=old.code_sha256 or report.code_sha256,
                started=_earliest(old.started, report.started or _now()),
                subshell_id=old.subshell_id or report.subshell_id,
                sources=old.sources | {report.source},
            )
            _put(cells, i, new)
        self.publish(ApiEvent(kind="cell", uid=run.uid, time=_now(), session_id=run.id,
                              cell_id=new.cell_id, cell=new))
        return new

    def cell_end(self, report: CellEndReport) -> CellRecord:
        if report.status not in ("ok", "error"):
            raise UsageError(f"cell end status must be ok or error, got {report.status!r}")
        with self._lock:
            run = self.run(report.session_id)
            cells = self._cells[run.id]
            i = _match(cells, report.msg_id, report.cell_id, report.execution_count)
            old = cells[i] if i is not None else CellRecord(session_id=run.id, started=report.ended)
            # an error from any source wins: a cell that failed did not succeed
            status = "error" if "error" in (old.status, report.status) else "ok"
            new = dataclasses.replace(
                old,
                cell_id=old.cell_id or report.cell_id,
                msg_id=old.msg_id or report.msg_id,
                execution_count=old.execution_count or report.execution_count,
                ended=_latest(old.ended, report.ended or _now()),
                status=status,
                end_reason=old.end_reason or report.end_reason,
                error_name=old.error_name or report.error_name,
                sources=old.sources | {report.source},
            )
            _put(cells, i, new)
        self.publish(ApiEvent(kind="cell", uid=run.uid, time=_now(), session_id=run.id,
                              cell_id=new.cell_id, cell=new))
        return new

    def add_io(self, session_id: str, msg_id: str | None, cell_id: str | None,
               reads: Iterable[str] = (), writes: Iterable[str] = (),
               processes: Iterable[int] = ()) -> CellRecord:
        """Adds attributed file and process facts to a known cell.

        The daemon writes what a cell read and wrote to SQLite (the router's
        checkpoint) and answers from there; the in-memory store has no capture,
        and its callers (the API's tests) add the facts here."""
        with self._lock:
            run = self.run(session_id)
            cells = self._cells[run.id]
            i = _match(cells, msg_id, cell_id, None)
            if i is None:
                raise NotFound(f"no cell msg_id={msg_id} cell_id={cell_id} in session {session_id}")
            old = cells[i]
            new = cells[i] = dataclasses.replace(
                old, reads=_union(old.reads, reads), writes=_union(old.writes, writes),
                processes=tuple(sorted(set(old.processes) | set(processes))),
            )
        return new

    # -- commands ------------------------------------------------------------
    def add_command(self, run: RunRecord, pid: int) -> None:
        """A command run whose root process is pid (publishing is the caller's)."""
        with self._lock:
            self._runs[run.id] = run
            self._cells[run.id] = []
            self._traced_pids[pid] = run.id

    def finish_command(self, run_id: str, exit_code: int, ended: dt.datetime | None) -> RunRecord:
        with self._lock:
            run = self.run(run_id)
            run = self._runs[run_id] = dataclasses.replace(run, ended=ended or _now(), exit_code=exit_code)
        return run

    def forget(self, run_id: str, pid: int | None = None) -> None:
        """Drops a run and its cells (and pid, if it still points at the run)."""
        with self._lock:
            self._runs.pop(run_id, None)
            self._cells.pop(run_id, None)
            if pid is not None and self._traced_pids.get(pid) == run_id:
                del self._traced_pids[pid]

    # -- lookups -------------------------------------------------------------
    def run(self, run_id: str) -> RunRecord:
        """The run, or NotFound."""
        run = self.get(run_id)
        if run is None:
            raise NotFound(f"no run or session {run_id!r} (list them with: provtrace runs)")
        return run

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def runs(self) -> list[RunRecord]:
        with self._lock:
            return list(self._runs.values())

    def cells(self, run_id: str) -> list[CellRecord] | None:
        """The run's cells in order, or None for a run the merger does not hold."""
        with self._lock:
            cells = self._cells.get(run_id)
            return None if cells is None else list(cells)

    def all_cells(self, uid: int | None) -> list[tuple[RunRecord, CellRecord]]:
        """Every cell of the runs uid may see (None: everyone's), with its run."""
        with self._lock:
            return [(self._runs[sid], c) for sid, cs in self._cells.items() for c in cs
                    if uid is None or self._runs[sid].uid == uid]

    def traced_pids(self) -> dict[int, str]:
        with self._lock:
            return dict(self._traced_pids)

    def publish(self, event: ApiEvent) -> None:
        if self.hub is not None:
            self.hub.publish(event)


class InMemoryStore:
    """A SessionStore of merged reports alone: no capture, no database."""

    def __init__(self, hub: EventHub | None = None, backend: str = "ebpf") -> None:
        self.merger = CellMerger(hub, backend)
        self.hub = hub
        self.backend = backend

    # -- writes --------------------------------------------------------------
    def register_kernel(self, *, pid: int, pid_start_ns: int, uid: int, user: str | None,
                        connection_file: str | None, notebook_path: str | None,
                        kernel_name: str | None, language: str | None,
                        session_id: str | None) -> KernelRecord:
        return self.merger.register_kernel(
            pid=pid, pid_start_ns=pid_start_ns, uid=uid, user=user, connection_file=connection_file,
            notebook_path=notebook_path, kernel_name=kernel_name, language=language, session_id=session_id)

    def cell_start(self, report: CellStartReport) -> CellRecord:
        return self.merger.cell_start(report)

    def cell_end(self, report: CellEndReport) -> CellRecord:
        return self.merger.cell_end(report)

    def end_session(self, session_id: str) -> RunRecord:
        return self.merger.end_session(session_id)

    def start_command(self, *, pid: int, uid: int, user: str | None, argv: Sequence[str], cwd: str,
                      env: Mapping[str, str], label: str | None, ppid: int | None = None) -> RunRecord:
        run = RunRecord(id=f"r-{uuid.uuid4().hex[:12]}", kind="command", uid=uid, user=user,
                        label=label or " ".join(argv), backend=self.backend, started=_now())
        self.merger.add_command(run, pid)
        self.merger.publish(ApiEvent(kind="process", uid=uid, time=run.started, run_id=run.id, pid=pid,
                                     detail={"argv": list(argv), "cwd": cwd}))
        return run

    def finish_command(self, run_id: str, exit_code: int, ended: dt.datetime | None) -> RunRecord:
        return self.merger.finish_command(run_id, exit_code, ended)

    # -- reads ---------------------------------------------------------------
    def get_run(self, ref: str, uid: int | None) -> RunRecord:
        if ref == "last":
            runs = self.list_runs(uid)
            if not runs:
                raise NotFound("no runs yet (start one with: provtrace run -- CMD)")
            return runs[-1]
        run = self.merger.get(ref)
        if run is None or (uid is not None and run.uid != uid):
            raise NotFound(f"no run or session {ref!r} (list them with: provtrace runs)")
        return run

    def list_runs(self, uid: int | None, kind: str | None = None, limit: int | None = None) -> list[RunRecord]:
        runs = [r for r in self.merger.runs()
                if (uid is None or r.uid == uid) and (kind is None or r.kind == kind)]
        runs.sort(key=lambda r: r.started or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
        return runs[-limit:] if limit else runs

    def list_cells(self, session_id: str) -> list[CellRecord]:
        cells = self.merger.cells(session_id)
        if cells is None:
            self.merger.run(session_id)  # NotFound
        return cells

    def lineage(self, path: str, direction: str, depth: int | None, uid: int | None, *,
                at: str | None = None, all_versions: bool = False,
                kernel_state: bool = True) -> LineageGraph:
        """Cell-level lineage from the cells' reads and writes (no file versions:
        this store keeps none, so the version options change nothing)."""
        if direction not in ("upstream", "downstream"):
            raise UsageError(f"direction must be upstream or downstream, got {direction!r}")
        cells = self.merger.all_cells(uid)
        nodes: dict[str, LineageNode] = {f"file:{path}": LineageNode(f"file:{path}", "file", path)}
        edges: list[LineageEdge] = []
        frontier, level = [path], 0
        while frontier and (not depth or level < depth):
            level += 1
            nxt: list[str] = []
            for p in frontier:
                for run, cell in cells:
                    produced, consumed = (cell.writes, cell.reads) if direction == "upstream" else (cell.reads, cell.writes)
                    if p not in produced:
                        continue
                    cid = f"cell:{run.id}:{cell.msg_id or cell.cell_id}"
                    nodes.setdefault(cid, LineageNode(cid, "cell", cell.cell_id or cell.msg_id or "", run.id))
                    edges.append(LineageEdge(cid, f"file:{p}", "wrote") if direction == "upstream"
                                 else LineageEdge(f"file:{p}", cid, "read"))
                    for q in consumed:
                        fid = f"file:{q}"
                        if fid not in nodes:
                            nodes[fid] = LineageNode(fid, "file", q)
                            nxt.append(q)
                        edges.append(LineageEdge(fid, cid, "read") if direction == "upstream"
                                     else LineageEdge(cid, fid, "wrote"))
            frontier = nxt
        return LineageGraph(tuple(nodes.values()), tuple(dict.fromkeys(edges)))

    def staleness(self, run_id: str | None, uid: int | None) -> dict:
        # Staleness compares stored content fingerprints with the files now;
        # this store keeps reports only, no fingerprints to compare.
        raise UsageError("this daemon keeps no file fingerprints (in-memory store): "
                         "stale needs a daemon with a run store")

    def context(self, run_id: str) -> Mapping[str, Any]:
        kernel = self.merger.run(run_id).kernel
        return {"kernel": {"name": kernel.kernel_name, "language": kernel.language} if kernel else None}

    def export(self, run_ids: Sequence[str], fmt: str, uid: int | None = None) -> Iterable[bytes]:
        if fmt not in FORMATS:
            raise UsageError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
        if fmt != "json":
            raise UsageError(f"the in-memory store exports only json; {fmt} needs the SQLite store (--db)")
        docs = [{"run": _jsonable(self.merger.run(r)), "cells": [_jsonable(c) for c in self.list_cells(r)]}
                for r in run_ids]
        data = json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, sort_keys=True).encode()
        return (data[i : i + 65536] for i in range(0, len(data), 65536))


def _match(cells: list[CellRecord], msg_id: str | None, cell_id: str | None, count: int | None) -> int | None:
    for i, c in enumerate(cells):
        if msg_id and c.msg_id == msg_id:
            return i
    for i, c in reversed(list(enumerate(cells))):
        if cell_id and c.cell_id == cell_id and c.ended is None and (not msg_id or not c.msg_id):
            return i
    for i, c in enumerate(cells):
        if count and c.execution_count == count and (not msg_id or not c.msg_id):
            return i
    return None


def _put(cells: list[CellRecord], i: int | None, new: CellRecord) -> None:
    if i is None:
        cells.append(new)
    else:
        cells[i] = new


def _earliest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return min(x for x in (a, b) if x is not None) if (a or b) else None


def _latest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return max(x for x in (a, b) if x is not None) if (a or b) else None


def _union(old: tuple[str, ...], new: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*old, *new]))


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dt.datetime):
        return obj.isoformat(timespec="microseconds")
    if isinstance(obj, (frozenset, set, tuple, list)):
        return [_jsonable(x) for x in (sorted(obj) if isinstance(obj, (set, frozenset)) else obj)]
    return obj
