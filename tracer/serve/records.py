"""What the API serves, as frozen dataclasses (convert.py maps them to protobuf).

Times are aware UTC datetimes. Statuses and kinds are the schema's strings
("ok", "error", "running"; "command", "notebook", "session").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the kernel reported it (SO_PEERCRED)."""

    uid: int
    gid: int
    pid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def visible_uid(self) -> int | None:
        """The uid whose data this caller may see; None means every uid."""
        return None if self.is_root else self.uid


@dataclass(frozen=True)
class KernelRecord:
    session_id: str
    pid: int
    pid_start_ns: int
    uid: int
    connection_file: str | None = None
    notebook_path: str | None = None
    kernel_name: str | None = None
    language: str | None = None
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    alive: bool = True


@dataclass(frozen=True)
class CellRecord:
    session_id: str
    cell_id: str | None = None
    msg_id: str | None = None
    index: int | None = None
    execution_count: int | None = None
    code_sha256: str | None = None
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    status: str = "running"
    end_reason: str | None = None
    error_name: str | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    processes: tuple[int, ...] = ()
    sources: frozenset[str] = frozenset()  # {"iopub", "report", "runner"}
    subshell_id: str | None = None


@dataclass(frozen=True)
class RunRecord:
    id: str
    kind: str  # "command" | "notebook" | "session"
    uid: int
    user: str | None = None
    label: str | None = None
    backend: str | None = None
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    exit_code: int | None = None
    kernel: KernelRecord | None = None


@dataclass(frozen=True)
class CellStartReport:
    session_id: str
    source: str  # "iopub" | "report" | "runner"
    cell_id: str | None = None
    msg_id: str | None = None
    execution_count: int | None = None
    code_sha256: str | None = None
    started: dt.datetime | None = None
    index: int | None = None
    subshell_id: str | None = None


@dataclass(frozen=True)
class CellEndReport:
    session_id: str
    source: str
    status: str  # "ok" | "error"
    cell_id: str | None = None
    msg_id: str | None = None
    execution_count: int | None = None
    ended: dt.datetime | None = None
    end_reason: str | None = None
    error_name: str | None = None


@dataclass(frozen=True)
class LineageNode:
    id: str
    kind: str
    label: str = ""
    run_id: str | None = None
    # As `provtrace lineage --json` gives it; left out of ==/hash (records stay hashable).
    detail: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LineageEdge:
    source: str
    target: str
    relation: str
    detail: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LineageGraph:
    nodes: tuple[LineageNode, ...] = ()
    edges: tuple[LineageEdge, ...] = ()
    # the rest of `provtrace lineage --json`: current, found, truncated (empty: not known)
    summary: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ApiEvent:
    kind: str  # "kernel", "cell", "process", "file", "network", "gap", "watching", "stale" (daemon/watch.py)
    uid: int
    time: dt.datetime
    seq: int = 0  # set by the EventHub
    session_id: str | None = None
    run_id: str | None = None
    pid: int | None = None
    cell_id: str | None = None
    kernel: KernelRecord | None = None
    cell: CellRecord | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
