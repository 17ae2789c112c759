"""The narrow interfaces the API server needs from the daemon: SessionWrites
(kernels, cell reports, commands handed over) and SessionReads (runs, cells,
lineage, context, staleness, export); SessionStore is both.

daemon/memory.py implements them in memory; daemon/sessions.py over the
SQLite store, for the daemon. Every query takes `uid`: the uid whose data
the caller may see, or None for everything (root). Implementations raise NotFound and AccessDenied
(never return another uid's data) and UsageError for bad arguments.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping, Protocol, Sequence

from ..errors import TracerError
from .records import (
    CellEndReport,
    CellRecord,
    CellStartReport,
    KernelRecord,
    LineageGraph,
    RunRecord,
)


class NotFound(TracerError):
    """No such session, run or cell (or none the caller may see)."""


class AccessDenied(TracerError):
    """The caller's uid may not do this; the message says what and why."""


class SessionWrites(Protocol):
    """What the server hands the daemon: kernels registered and ended, cell
    reports, commands handed over and finished."""

    def register_kernel(
        self, *, pid: int, pid_start_ns: int, uid: int, user: str | None,
        connection_file: str | None, notebook_path: str | None,
        kernel_name: str | None, language: str | None, session_id: str | None,
    ) -> KernelRecord: ...

    def end_session(self, session_id: str) -> RunRecord:
        """The session's kernel is gone (died, shut down, or could not be followed)."""
        ...

    def cell_start(self, report: CellStartReport) -> CellRecord: ...

    def cell_end(self, report: CellEndReport) -> CellRecord: ...

    def start_command(
        self, *, pid: int, uid: int, user: str | None, argv: Sequence[str], cwd: str,
        env: Mapping[str, str], label: str | None, ppid: int | None = None,
    ) -> RunRecord:
        """Starts tracing pid (a blocked, not yet exec'd child) as a new command run.
        ppid: pid's parent (the client that forked it), recorded as the root's parent."""
        ...

    def finish_command(self, run_id: str, exit_code: int, ended: dt.datetime | None) -> RunRecord: ...


class SessionReads(Protocol):
    """What the server asks the daemon: runs, cells, lineage, context,
    staleness and exports, each limited to what `uid` may see."""

    def get_run(self, ref: str, uid: int | None) -> RunRecord:
        """A run or session by id, or "last"; NotFound when absent or not visible."""
        ...

    def list_runs(self, uid: int | None, kind: str | None = None, limit: int | None = None) -> list[RunRecord]: ...

    def list_cells(self, session_id: str) -> list[CellRecord]: ...

    def lineage(self, path: str, direction: str, depth: int | None, uid: int | None, *,
                at: str | None = None, all_versions: bool = False,
                kernel_state: bool = True) -> LineageGraph:
        """A version of path and its lineage: on disk now, as of `at` (ISO-8601), or all versions."""
        ...

    def context(self, run_id: str) -> Mapping[str, Any]: ...

    def staleness(self, run_id: str | None, uid: int | None) -> dict:
        """`provtrace stale --json` of one run (None: every run uid may see; uid None: all)."""
        ...

    def export(self, run_ids: Sequence[str], fmt: str, uid: int | None = None) -> Iterable[bytes]:
        """The document in chunks; fmt is one of FORMATS; uid: the caller (file versions as its runs made them)."""
        ...


class SessionStore(SessionWrites, SessionReads, Protocol):
    """Both sides in one object, as the daemon's sessions and the in-memory store are."""


FORMATS = ("json", "prov-json", "prov-n", "prov-xml", "openlineage", "graphml", "dot")
