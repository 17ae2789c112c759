"""CellReporter: hands kernel registrations and cell start/end reports to the
daemon from one background thread, so that a Jupyter server's event loop never
waits on gRPC.

A daemon that is absent, slow or refusing costs one warning per socket per
process; after a failure, reports are dropped (and counted) for RETRY_AFTER_S
before the next try. Reports go out in the order they were made (one queue,
one thread), so a cell's start always precedes its end.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Mapping

import grpc

from ..serve.client import ApiError, ProvtraceClient, default_socket_path
from ..errors import TracerError
from .kernels import KernelFacts, notebook_path, session_name_in

log = logging.getLogger(__name__)

TIMEOUT_S = 2.0
RETRY_AFTER_S = 10.0
MAX_QUEUED = 1000
_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def resolve_socket(configured: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """A configured path, else PROVTRACE_SOCKET in env (the kernel's), else the daemon default."""
    if configured:
        return configured
    if env and env.get("PROVTRACE_SOCKET"):
        return env["PROVTRACE_SOCKET"]
    return default_socket_path()


def warn_unreachable(socket_path: str, exc: TracerError) -> None:
    """One warning per socket per process; later failures only at debug level."""
    with _warned_lock:
        first = socket_path not in _warned
        _warned.add(socket_path)
    if first:
        log.warning("provtrace: cannot report to the daemon at %s (%s); kernels and cells go on "
                    "unreported", socket_path, exc)
    else:
        log.debug("event=report-failed socket=%s error=%r", socket_path, str(exc))


def register(client: ProvtraceClient, kernel: KernelFacts) -> str:
    """RegisterKernel for a launched kernel; returns the daemon's session id."""
    path = kernel.notebook_path or notebook_path(session_name_in(kernel.connection_file), kernel.cwd)
    record = client.register_kernel(
        pid=kernel.pid, connection_file=_absolute(kernel.connection_file), notebook_path=path,
        kernel_name=kernel.kernel_name, language=kernel.language)
    log.info("event=kernel-registered pid=%d session=%s notebook=%s", kernel.pid, record.session_id, path)
    return record.session_id


@dataclass(frozen=True)
class CellStart:
    msg_id: str
    cell_id: str | None
    code_sha256: str | None
    subshell_id: str | None
    started: dt.datetime


@dataclass(frozen=True)
class CellEnd:
    msg_id: str
    cell_id: str | None
    status: str  # "ok" | "error"
    execution_count: int | None
    error_name: str | None
    ended: dt.datetime


class CellReporter:
    def __init__(self, socket_path: str | None = None, timeout_s: float = TIMEOUT_S,
                 retry_after_s: float = RETRY_AFTER_S, max_queued: int = MAX_QUEUED) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.dropped = 0  # reports not delivered: queue full or daemon down
        self.delivered = 0
        self._queue: queue.Queue[tuple[KernelFacts, CellStart | CellEnd] | None] = queue.Queue(max_queued)
        self._sessions: dict[tuple[str | None, int], str | None] = {}  # None: register again
        self._down_until = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def report(self, kernel: KernelFacts, item: CellStart | CellEnd) -> None:
        """Queues a report; never blocks."""
        self._ensure_thread()
        try:
            self._queue.put_nowait((kernel, item))
        except queue.Full:
            self.dropped += 1
            log.debug("event=report-dropped reason=queue-full msg_id=%s", item.msg_id)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Waits until every queued report was handled; True when it was."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(self.timeout_s * 2)

    # -- the worker thread ------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="provtrace-cell-reporter", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        client = ProvtraceClient(self.socket_path, timeout_s=self.timeout_s)
        try:
            while (entry := self._queue.get()) is not None:
                try:
                    self._deliver(client, *entry)
                finally:
                    self._queue.task_done()
            self._queue.task_done()
        finally:
            client.close()

    def _deliver(self, client: ProvtraceClient, kernel: KernelFacts, item: CellStart | CellEnd) -> None:
        if time.monotonic() < self._down_until:
            self.dropped += 1
            return
        try:
            session_id = self._session(client, kernel)
            self._send(client, session_id, item)
            self.delivered += 1
            log.debug("event=cell-reported kind=%s session=%s msg_id=%s cell_id=%s status=%s",
                      "start" if isinstance(item, CellStart) else "end", session_id, item.msg_id,
                      item.cell_id, getattr(item, "status", "running"))
        except ApiError as exc:
            self.dropped += 1
            if exc.code == grpc.StatusCode.NOT_FOUND:  # the daemon restarted: register again
                self._sessions[(kernel.kernel_id, kernel.pid)] = None
            elif exc.code in _DOWN:  # each later call would wait out its timeout too
                self._down_until = time.monotonic() + self.retry_after_s
            warn_unreachable(self.socket_path, exc)
        except TracerError as exc:
            self.dropped += 1
            warn_unreachable(self.socket_path, exc)

    def _session(self, client: ProvtraceClient, kernel: KernelFacts) -> str:
        key = (kernel.kernel_id, kernel.pid)
        if key in self._sessions:
            sid = self._sessions[key]
        else:
            sid = kernel.session_id  # our provisioner registered this pid already
        if not sid:
            sid = register(client, kernel)
        self._sessions[key] = sid
        return sid

    @staticmethod
    def _send(client: ProvtraceClient, session_id: str, item: CellStart | CellEnd) -> None:
        if isinstance(item, CellStart):
            client.report_cell_start(session_id, cell_id=item.cell_id, msg_id=item.msg_id,
                                     code_sha256=item.code_sha256, started=item.started,
                                     subshell_id=item.subshell_id)
        else:
            client.report_cell_end(session_id, item.status, cell_id=item.cell_id, msg_id=item.msg_id,
                                   execution_count=item.execution_count, ended=item.ended,
                                   error_name=item.error_name)


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None
