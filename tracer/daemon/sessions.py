"""The daemon's SessionStore: live state in memory, everything durable in SQLite,
and every registered kernel or handed-over command traced with eBPF.

Live merging of cell reports (IOPub, gRPC reports, the runner) is done by
a CellMerger (memory.py) that this class owns; it adds what happens around
it:

- register_kernel: a `session` run in the SQLite store, the kernel pid added
  to the probes' traced map under the run's tag, and its cells followed by a
  KernelCells policy (one Tracker per run).
- cell_start / cell_end: the cell's window for attribution; at its end, a CELL
  record (the execution's id is its msg_id: a cell may run many times in one
  session; JupyterLab's cellId is kept beside it as `cell_id`).
- start_command / finish_command: a `command` run for a blocked child handed
  over by a non-root `provtrace run`, stored under the caller's uid.
- queries (runs, cells, lineage, context, export) read the SQLite store,
  once the caller's released runs are complete (COMPLETION_WAIT_S at most):
  `provtrace show` right after `provtrace run` returns sees the whole run.

One consumer thread (RunRouter, the daemon's pipeline: tracer/pipeline/)
owns every Tracker; other threads hand it work through its queue. Runs are
opened (header, row, tag, writer, tracker) by pipeline.run.Run.open, as every
driver opens them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

from ..capture.base import Capture
from ..clock import Clock, iso_utc, parse_iso
from ..correlate.policy import KernelCells, attach_kernel
from ..correlate.windows import CellWindow
from ..errors import RunNotFound, TracerError, UsageError
from ..model.processes import NO_CELLS
from ..pipeline.run import Run, header, new_run_id, redacted
from ..store import queries as Q
from ..store import sqlite as S
from ..store.writer import stdio_files
from ..serve.auth import process_ids
from ..serve.backend import FORMATS, NotFound
from ..serve.events import EventHub
from .memory import CellMerger
from ..serve.records import (
    CellEndReport,
    CellRecord,
    CellStartReport,
    KernelRecord,
    LineageEdge,
    LineageGraph,
    LineageNode,
    RunRecord,
)
from .router import DAEMON_STOPPED, LiveRun, RunRouter

log = logging.getLogger(__name__)

FINISH_TIMEOUT_S = 30.0
# How long a query waits for the caller's runs still finishing (context and
# fingerprints being written) before it answers with them as they are.
COMPLETION_WAIT_S = 30.0
# A command's client reports its exit right after waitpid; a run whose root
# process is gone this long without a report lost its client (killed, or
# gone), and the daemon ends it itself.
CLIENT_GRACE_S = 5.0
VANISHED = ("the client vanished before reporting the exit; ended by the daemon "
            f"{CLIENT_GRACE_S:g} s or more after the command's root process was gone")


class TracingStore:
    def __init__(self, store: S.Store, capture: Capture, hub: EventHub | None = None) -> None:
        self.hub = hub
        self.merger = CellMerger(hub, backend="ebpf")  # the live runs and their merged cells
        self._lock = threading.Lock()  # _kernel_sessions, and registering a kernel once
        self.db = store
        self.capture = capture
        self.clock = Clock()
        self.router = RunRouter(capture, store)
        self._live: dict[str, LiveRun] = {}  # run id -> live run (sessions and commands)
        self._kernel_sessions: dict[tuple[int, int], str] = {}  # (pid, start_ns) -> session
        from ..lineage.stale import StaleCache  # noqa: PLC0415 -- networkx: only when serving

        self._stale = StaleCache(size=32)

    def start(self) -> None:
        self.router.start()

    def close(self) -> None:
        """Ends every live run (sessions first), then stops the router."""
        for run_id in list(self._live):
            live = self._live.get(run_id)
            if live is not None and live.kind == "session":
                self.end_session(run_id)
        for run_id in list(self._live):  # commands still running: incomplete, unless the kernel saw the exit
            self._finish(run_id, exit_code=None, wait=True, reason=DAEMON_STOPPED)
        self.router.stop()

    # -- writes ----------------------------------------------------------------
    def register_kernel(self, *, pid: int, pid_start_ns: int, uid: int, user: str | None,
                        connection_file: str | None, notebook_path: str | None,
                        kernel_name: str | None, language: str | None,
                        session_id: str | None) -> KernelRecord:
        with self._lock:
            known = self._kernel_sessions.get((pid, pid_start_ns))
            if known is not None and known in self._live and not session_id:
                # the same kernel seen twice (IOPub discovery and a provisioner's report)
                return self.merger.fill_kernel(known, connection_file=connection_file,
                                               notebook_path=notebook_path, kernel_name=kernel_name,
                                               language=language)
            kernel = self.merger.register_kernel(
                pid=pid, pid_start_ns=pid_start_ns, uid=uid, user=user, connection_file=connection_file,
                notebook_path=notebook_path, kernel_name=kernel_name, language=language,
                session_id=session_id)
            sid = kernel.session_id
            self._kernel_sessions[(pid, pid_start_ns)] = sid
        hdr = header(sid, "session", self.capture.name,
                     label=notebook_path or connection_file or kernel_name, argv=_cmdline(pid),
                     cwd=_cwd(pid), user=user, uid=uid, started_us=time.time_ns() // 1000,
                     kernel={"pid": pid, "name": kernel_name, "language": language,
                             "connection_file": connection_file, "notebook": notebook_path})
        policy = KernelCells()
        policy.add_kernel(pid, Clock.now_mono_ns())
        # stdio: the notebook server's log, where a kernel's stdout goes
        live = self._open_run(hdr, policy, stdio_files(pid))
        live.kernel_pid = pid
        live.env = _environ(pid)
        attach_kernel(live.tracker, pid, live.tag)
        self.router.add(live)
        self.capture.trace(pid, live.tag)
        log.info("event=session-traced session=%s pid=%d uid=%d", sid, pid, uid)
        return kernel

    def cell_start(self, report: CellStartReport) -> CellRecord:
        cell = self.merger.cell_start(report)
        self._window(report.session_id, cell)
        return cell

    def cell_end(self, report: CellEndReport) -> CellRecord:
        cell = self.merger.cell_end(report)
        live = self._window(report.session_id, cell)
        if live is not None:
            self.db.append(live.rid, S.CELL, _cell_body(cell))
            self._checkpoint_when_attributed(live, cell)
        return cell

    def reap(self) -> None:
        """The daemon's periodic sweep: sessions whose kernel is gone, commands whose client is."""
        self.reap_gone_kernels()
        self.reap_vanished_clients()

    def reap_vanished_clients(self) -> list[str]:
        """Ends the command runs whose root process is gone and whose client has
        not reported for CLIENT_GRACE_S since; returns their ids. The exit
        status is the kernel's (the root's exit event) when it was seen."""
        now = time.monotonic()
        due = []
        for run_id, live in list(self._live.items()):
            if live.kind != "command" or live.root_pid is None:
                continue
            if _same_process_alive(live.root_pid, live.root_start_ns):
                continue
            if live.root_gone_at is None:
                live.root_gone_at = now
            elif now - live.root_gone_at >= CLIENT_GRACE_S:
                due.append(run_id)
        for run_id in due:
            log.warning("event=client-vanished run=%s", run_id)
            self._finish(run_id, exit_code=None, wait=True, reason=VANISHED)
        return due

    def reap_gone_kernels(self) -> list[str]:
        """Ends the sessions whose kernel process is gone; returns their ids.

        The IOPub follower ends the sessions it follows; this catches a
        registered kernel that exited before the follower found it (or that
        the follower could not reach), which would otherwise stay open."""
        with self._lock:
            kernels = [(sid, pid, start) for (pid, start), sid in self._kernel_sessions.items()
                       if sid in self._live]
        gone = [sid for sid, pid, start in kernels if not _same_process_alive(pid, start)]
        for sid in gone:
            if sid in self._live:  # the follower may have ended it meanwhile
                log.info("event=kernel-gone session=%s", sid)
                self.end_session(sid)
        return gone

    def end_session(self, session_id: str) -> RunRecord:
        run = self.merger.end_session(session_id)
        live = self._live.get(session_id)
        if live is not None:
            for cell in self.list_cells(session_id):  # a kernel that died mid-cell never said idle
                if cell.ended is None:
                    self.cell_end(CellEndReport(session_id=session_id, source="iopub", status="error",
                                                msg_id=cell.msg_id, cell_id=cell.cell_id,
                                                end_reason="died"))
            self._finish(session_id, exit_code=None, wait=True)
        return run

    def start_command(self, *, pid: int, uid: int, user: str | None, argv: Sequence[str], cwd: str,
                      env: Mapping[str, str], label: str | None, ppid: int | None = None) -> RunRecord:
        run_id = new_run_id()
        hdr = header(run_id, "command", self.capture.name, label=label, argv=redacted(list(argv)),
                     cwd=cwd, user=user, uid=uid, started_us=time.time_ns() // 1000, via="daemon")
        live = self._open_run(hdr, NO_CELLS, stdio_files(pid))  # stdio: the user's `> log`, not data
        live.root_pid = pid
        live.root_start_ns = _start_ns(pid)
        live.env = dict(env)
        # its parent is the client that forked it, as the command's getppid() says
        live.root = live.tracker.add_root(pid, Clock.now_mono_ns(), list(argv), cwd, uid, tag=live.tag,
                                          ppid=ppid if ppid is not None else process_ids(pid)[1])
        self.router.add(live)  # only now can the router touch this tracker
        self.capture.trace(pid, live.tag)
        run = RunRecord(id=run_id, kind="command", uid=uid, user=user, label=label or " ".join(argv),
                        backend="ebpf", started=dt.datetime.now(dt.timezone.utc))
        self.merger.add_command(run, pid)
        return run

    def finish_command(self, run_id: str, exit_code: int, ended: dt.datetime | None) -> RunRecord:
        self._finish(run_id, exit_code=exit_code, wait=True)
        return self.get_run(run_id, None)  # released: the client goes on while it completes

    def live_runs(self) -> list[LiveRun]:
        """The runs being traced now (sessions and commands), for the input watcher."""
        return list(self._live.values())

    # -- reads (SQLite) ------------------------------------------------------------
    def _reader(self) -> S.Store:
        return S.Store(self.db.path, readonly=True)

    def _settled(self, uid: int | None) -> None:
        """Waits (bounded) until uid's released runs (everyone's: None) are complete."""
        if not self.router.finisher.wait(uid, COMPLETION_WAIT_S):
            log.warning("event=query-before-completion uid=%s", uid)

    def get_run(self, ref: str, uid: int | None) -> RunRecord:
        """Never waits for completions: every RPC checks what the caller may see
        with it (a command's client reporting its exit among them)."""
        reader = self._reader()
        try:
            rid = Q.resolve_run(reader, ref, uid)
            (row,) = Q.list_runs(reader, uid, rid)  # one row: every FinishCommand asks (start-up)
        except RunNotFound as e:
            raise NotFound(f"no run or session {ref!r} visible to you (list them with: provtrace runs)") from e
        finally:
            reader.close()
        return self._record(row)

    def list_runs(self, uid: int | None, kind: str | None = None, limit: int | None = None) -> list[RunRecord]:
        if kind != "session":  # `provtrace runs`; Health (sessions only) must answer at once
            self._settled(uid)
        reader = self._reader()
        try:
            rows = [r for r in Q.list_runs(reader, uid) if kind is None or r["kind"] == kind]
        finally:
            reader.close()
        rows = rows[-limit:] if limit else rows
        return [self._record(r) for r in rows]

    def list_cells(self, session_id: str) -> list[CellRecord]:
        cells = self.merger.cells(session_id)  # a live run's, as merged now
        if cells is not None:
            return cells
        doc = self.document(session_id, None)
        return [_cell_record(session_id, c) for c in doc["cells"]]

    def document(self, ref: str, uid: int | None) -> dict:
        """The provtrace.run/1 document of a run the caller may see."""
        self._settled(uid)
        reader = self._reader()
        try:
            return Q.load_run(reader, Q.resolve_run(reader, ref, uid), _system_config())
        except RunNotFound as e:
            raise NotFound(f"no run or session {ref!r} visible to you") from e
        finally:
            reader.close()

    def lineage(self, path: str, direction: str, depth: int | None, uid: int | None, *,
                at: str | None = None, all_versions: bool = False,
                kernel_state: bool = True) -> LineageGraph:
        from ..lineage.graph import lineage, now_fingerprint, parse_at  # noqa: PLC0415
        from ..privs import Creds  # noqa: PLC0415

        if direction not in ("upstream", "downstream"):
            raise UsageError(f"direction must be upstream or downstream, got {direction!r}")
        try:
            at_us = parse_at(at) if at else None
        except ValueError:
            raise UsageError(f"--at needs an ISO-8601 time (2026-12-07T18:30:00Z), got {at!r}") from None
        # the file as it is now, read as the caller would read it (never with more privilege)
        now = None if at_us is not None else now_fingerprint(
            path, None if uid is None or uid == os.geteuid() else Creds.of_user(uid))
        self._settled(uid)
        reader = self._reader()
        try:  # the walk itself keeps to uid's runs: other users' files are never reached
            result = lineage(reader, path, direction, depth or 10, uid, at_us=at_us,
                             all_versions=all_versions, kernel_state=kernel_state, now=now,
                             config=_system_config())
        finally:
            reader.close()
        return LineageGraph(
            tuple(LineageNode(n["id"], n["kind"], n.get("path") or " ".join(n.get("argv") or []),
                              n.get("run"), {k: v for k, v in n.items() if k != "id"}) for n in result["nodes"]),
            tuple(LineageEdge(e["from"], e["to"], e.get("rel") or "",
                              {k: v for k, v in e.items() if k not in ("from", "to", "rel")})
                  for e in result["edges"]),
            {k: result[k] for k in ("current", "found", "truncated")})

    def context(self, run_id: str) -> Mapping[str, Any]:
        return self.document(run_id, None)["context"]

    def staleness(self, run_id: str | None, uid: int | None) -> dict:
        """Staleness judged over the runs uid may see only (all for root), cached
        while the store and the files compared stay the same; files are read as each run's owner."""
        from ..lineage.stale import staleness  # noqa: PLC0415

        self._settled(uid)
        reader = self._reader()
        try:
            rid = Q.resolve_run(reader, run_id, uid) if run_id else None
            config = _system_config()
            key = (uid, rid, reader.head(), tuple((r.glob, r.kind) for r in config.rules))
            return self._stale.get(key, lambda looked_at: staleness(reader, rid, uid=uid, looked_at=looked_at,
                                                                    config=config))
        except RunNotFound as e:
            raise NotFound(f"no run or session {run_id!r} visible to you") from e
        finally:
            reader.close()

    def export(self, run_ids: Sequence[str], fmt: str, uid: int | None = None) -> Iterable[bytes]:
        """uid: file versions as that uid's runs alone made them (what others did is a
        change outside tracing to it), as lineage answers that caller."""
        from ..export.exporter import needs_versions, render  # noqa: PLC0415
        from ..export.versioned import versions_for  # noqa: PLC0415

        if fmt not in FORMATS:
            raise UsageError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
        docs = [self.document(r, None) for r in run_ids]
        versions = None
        if needs_versions(fmt):
            reader = self._reader()
            try:
                versions = versions_for(reader, docs, uid)
            finally:
                reader.close()
        data = render(docs, fmt, single=len(run_ids) == 1, versions=versions)
        return (data[i: i + 65536] for i in range(0, len(data), 65536))

    # -- internals -------------------------------------------------------------------
    def _open_run(self, hdr: dict, policy, stdio: frozenset[str]) -> LiveRun:
        live = Run.open(self.db, self.capture, hdr, policy, clock=self.clock, stdio=stdio)
        self._live[live.run_id] = live
        return live

    def _window(self, session_id: str, cell: CellRecord) -> LiveRun | None:
        live = self._live.get(session_id)
        if live is None or not isinstance(live.policy, KernelCells) or live.kernel_pid is None:
            return None
        key = cell.msg_id or cell.cell_id
        if key is None or cell.started is None:
            return live
        start_ns = self.clock.utc_to_mono_ns(cell.started)
        end_ns = self.clock.utc_to_mono_ns(cell.ended) if cell.ended else None
        live.policy.set_window(CellWindow(
            kernel_pid=live.kernel_pid, msg_id=key, start_ns=start_ns,
            end_ns=None if end_ns is None else max(end_ns, start_ns), cell_id=None,
            execution_count=cell.execution_count, code_sha256=cell.code_sha256,
            status=cell.status, subshell_id=cell.subshell_id))
        return live

    def _checkpoint_when_attributed(self, live: LiveRun, cell: CellRecord) -> None:
        """Asks the router to write what the session's live processes did in an
        ended cell once its events are attributed (HOLD_NS after its end): its
        reads and writes are then queryable while the kernel runs."""
        key = cell.msg_id or cell.cell_id
        if key is None or cell.started is None or cell.ended is None or not isinstance(live.policy, KernelCells):
            return
        live.ended_cells.append((max(self.clock.utc_to_mono_ns(cell.ended),
                                     self.clock.utc_to_mono_ns(cell.started)), key))

    def _finish(self, run_id: str, exit_code: int | None, wait: bool, reason: str | None = None) -> None:
        live = self._live.pop(run_id, None)  # one finisher only: the client's report or the reaper
        if live is None:
            return
        done = self.router.finish(live, exit_code, reason)
        if live.kind == "command":  # the store has it now: nothing in memory grows with every run
            self.merger.forget(run_id, live.root_pid)
        if wait and not done.wait(FINISH_TIMEOUT_S):
            log.warning("event=finish-timeout run=%s", run_id)

    def _record(self, row: dict) -> RunRecord:
        live = self.merger.get(row["id"])
        return RunRecord(
            id=row["id"], kind=row["kind"], uid=row["uid"], user=row["user"], label=row["label"],
            backend=row["backend"], started=_time(row["started"]), ended=_time(row["ended"]),
            exit_code=row["exit_code"], kernel=live.kernel if live is not None else None)


def _cell_body(cell: CellRecord) -> dict:
    return {"id": cell.msg_id or cell.cell_id, "cell_id": cell.cell_id, "index": cell.index,
            "execution_count": cell.execution_count, "code_sha256": cell.code_sha256,
            "started": iso_utc(cell.started) if cell.started else None,
            "ended": iso_utc(cell.ended) if cell.ended else None, "status": cell.status,
            "msg_id": cell.msg_id, "error_name": cell.error_name, "end_reason": cell.end_reason,
            "sources": sorted(cell.sources)}


def _cell_record(session_id: str, c: dict) -> CellRecord:
    return CellRecord(
        session_id=session_id, cell_id=c.get("cell_id") or c.get("id"), msg_id=c.get("msg_id"),
        index=c.get("index"), execution_count=c.get("execution_count"),
        code_sha256=c.get("code_sha256"), started=_time(c.get("started")), ended=_time(c.get("ended")),
        status=c.get("status") or "running", end_reason=c.get("end_reason"),
        error_name=c.get("error_name"), reads=tuple(c.get("reads") or ()),
        writes=tuple(c.get("writes") or ()), processes=tuple(c.get("processes") or ()),
        sources=frozenset(c.get("sources") or ()))


def _time(text: str | None) -> dt.datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    """The kernel's environment (redacted when the context is written)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = [kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv]
    except OSError:
        return {}
    return {os.fsdecode(k): os.fsdecode(v) for k, v in pairs}


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _start_ns(pid: int) -> int:
    """pid's start (ns since boot), 0 when unknown (then only the pid is checked)."""
    from ..serve.auth import start_time_ns  # noqa: PLC0415

    try:
        return start_time_ns(pid)
    except TracerError:
        return 0


def _same_process_alive(pid: int, start_ns: int) -> bool:
    """pid still runs the process that started at start_ns (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    state, ticks = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    if state in (b"Z", b"X"):
        return False
    return not start_ns or ticks * (1_000_000_000 // os.sysconf("SC_CLK_TCK")) == start_ns


def _system_config():
    """The daemon answers many users: it applies the system config file's rules
    only (read per query, so an edit applies without a restart; a bad file is
    the caller's one-line error). Callers apply their own rules to documents."""
    from .. import config  # noqa: PLC0415

    return config.load(config.config_files()[:1])
