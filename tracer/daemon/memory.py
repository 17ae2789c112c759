"""An in-memory SessionStore: the daemon's store when no database is wanted,
and the backend of the API's end-to-end tests.

Cell reports from every source (IOPub, gRPC reports, the notebook runner)
merge into one record per execution: same msg_id, or else the same cell id
still running, or else the same execution_count.
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


class InMemoryStore:
    def __init__(self, hub: EventHub | None = None, backend: str = "ebpf") -> None:
        self.hub = hub
        self.backend = backend
        self._lock = threading.RLock()
        self._runs: dict[str, RunRecord] = {}
        self._cells: dict[str, list[CellRecord]] = {}
        self._traced_pids: dict[int, str] = {}

    # -- writes --------------------------------------------------------------
    def register_kernel(self, *, pid: int, pid_start_ns: int, uid: int, user: str | None,
                        connection_file: str | None, notebook_path: str | None,
                        kernel_name: str | None, language: str | None,
                        session_id: str | None) -> KernelRecord:
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
        self._publish(ApiEvent(kind="kernel", uid=uid, time=_now(), session_id=sid, pid=pid, kernel=kernel))
        return kernel

    def cell_start(self, report: CellStartReport) -> CellRecord:
        with self._lock:
            run = self._run(report.session_id)
            cells = self._cells[run.id]
            i = self._match(cells, report.msg_id, report.cell_id, report.execution_count)
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
            self._put(cells, i, new)
        self._publish(ApiEvent(kind="cell", uid=run.uid, time=_now(), session_id=run.id,
                               cell_id=new.cell_id, cell=new))
        return new

    def cell_end(self, report: CellEndReport) -> CellRecord:
        if report.status not in ("ok", "error"):
            raise UsageError(f"cell end status must be ok or error, got {report.status!r}")
        with self._lock:
            run = self._run(report.session_id)
            cells = self._cells[run.id]
            i = self._match(cells, report.msg_id, report.cell_id, report.execution_count)
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
            self._put(cells, i, new)
        self._publish(ApiEvent(kind="cell", uid=run.uid, time=_now(), session_id=run.id,
                               cell_id=new.cell_id, cell=new))
        return new

    def record_cell_io(self, session_id: str, msg_id: str | None, cell_id: str | None,
                       reads: Iterable[str] = (), writes: Iterable[str] = (),
                       processes: Iterable[int] = ()) -> CellRecord:
        """Adds attributed file and process facts to a cell (what capture found)."""
        with self._lock:
            run = self._run(session_id)
            cells = self._cells[run.id]
            i = self._match(cells, msg_id, cell_id, None)
            if i is None:
                raise NotFound(f"no cell msg_id={msg_id} cell_id={cell_id} in session {session_id}")
            old = cells[i]
            new = dataclasses.replace(
                old, reads=_union(old.reads, reads), writes=_union(old.writes, writes),
                processes=tuple(sorted(set(old.processes) | set(processes))),
            )
            cells[i] = new
            return new

    def end_session(self, session_id: str) -> RunRecord:
        with self._lock:
            run = self._run(session_id)
            ended = _now()
            kernel = dataclasses.replace(run.kernel, ended=ended, alive=False) if run.kernel else None
            run = self._runs[session_id] = dataclasses.replace(run, ended=ended, kernel=kernel)
        self._publish(ApiEvent(kind="kernel", uid=run.uid, time=ended, session_id=run.id, kernel=kernel))
        return run

    def start_command(self, *, pid: int, uid: int, user: str | None, argv: Sequence[str], cwd: str,
                      env: Mapping[str, str], label: str | None, ppid: int | None = None) -> RunRecord:
        with self._lock:
            rid = f"r-{uuid.uuid4().hex[:12]}"
            run = RunRecord(id=rid, kind="command", uid=uid, user=user, label=label or " ".join(argv),
                            backend=self.backend, started=_now())
            self._runs[rid] = run
            self._cells[rid] = []
            self._traced_pids[pid] = rid
        self._publish(ApiEvent(kind="process", uid=uid, time=run.started, run_id=rid, pid=pid,
                               detail={"argv": list(argv), "cwd": cwd}))
        return run

    def finish_command(self, run_id: str, exit_code: int, ended: dt.datetime | None) -> RunRecord:
        with self._lock:
            run = self._run(run_id)
            run = self._runs[run_id] = dataclasses.replace(run, ended=ended or _now(), exit_code=exit_code)
        return run

    # -- reads ---------------------------------------------------------------
    def get_run(self, ref: str, uid: int | None) -> RunRecord:
        with self._lock:
            if ref == "last":
                runs = self.list_runs(uid)
                if not runs:
                    raise NotFound("no runs yet (start one with: provtrace run -- CMD)")
                return runs[-1]
            run = self._runs.get(ref)
        if run is None or (uid is not None and run.uid != uid):
            raise NotFound(f"no run or session {ref!r} (list them with: provtrace runs)")
        return run

    def list_runs(self, uid: int | None, kind: str | None = None, limit: int | None = None) -> list[RunRecord]:
        with self._lock:
            runs = [r for r in self._runs.values()
                    if (uid is None or r.uid == uid) and (kind is None or r.kind == kind)]
        runs.sort(key=lambda r: r.started or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
        return runs[-limit:] if limit else runs

    def list_cells(self, session_id: str) -> list[CellRecord]:
        with self._lock:
            self._run(session_id)
            return list(self._cells[session_id])

    def traced_pids(self) -> dict[int, str]:
        with self._lock:
            return dict(self._traced_pids)

    def lineage(self, path: str, direction: str, depth: int | None, uid: int | None, *,
                at: str | None = None, all_versions: bool = False,
                kernel_state: bool = True) -> LineageGraph:
        """Cell-level lineage from the cells' reads and writes (no file versions:
        this store keeps none, so the version options change nothing)."""
        if direction not in ("upstream", "downstream"):
            raise UsageError(f"direction must be upstream or downstream, got {direction!r}")
        with self._lock:
            cells = [(self._runs[sid], c) for sid, cs in self._cells.items() for c in cs
                     if uid is None or self._runs[sid].uid == uid]
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
        with self._lock:
            run = self._run(run_id)
        kernel = run.kernel
        return {"kernel": {"name": kernel.kernel_name, "language": kernel.language} if kernel else None}

    def export(self, run_ids: Sequence[str], fmt: str, uid: int | None = None) -> Iterable[bytes]:
        if fmt not in FORMATS:
            raise UsageError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
        if fmt != "json":
            raise UsageError(f"the in-memory store exports only json; {fmt} needs the SQLite store (--db)")
        with self._lock:
            docs = [{"run": _jsonable(self._run(r)), "cells": [_jsonable(c) for c in self._cells[r]]}
                    for r in run_ids]
        data = json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, sort_keys=True).encode()
        return (data[i : i + 65536] for i in range(0, len(data), 65536))

    # -- internals -----------------------------------------------------------
    def _run(self, run_id: str) -> RunRecord:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no run or session {run_id!r} (list them with: provtrace runs)")
        return run

    @staticmethod
    def _match(cells: list[CellRecord], msg_id: str | None, cell_id: str | None,
               count: int | None) -> int | None:
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

    @staticmethod
    def _put(cells: list[CellRecord], i: int | None, new: CellRecord) -> None:
        if i is None:
            cells.append(new)
        else:
            cells[i] = new

    def _publish(self, event: ApiEvent) -> None:
        if self.hub is not None:
            self.hub.publish(event)


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
