"""The gRPC API (proto/provtrace/v1) over a SessionStore, and the server that hosts it.

Every RPC first resolves its Caller from the connection's SO_PEERCRED (see
auth.py and proxy.py); nothing a request says about identity is used.
Non-root callers see and change only their own uid's sessions and runs,
and may register or hand over only processes whose real uid is theirs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import pwd
import threading
from concurrent import futures
from typing import Any, Callable, Iterator

import grpc

from .. import __version__
from ..errors import ProcessError, StoreWriteError, TracerError, UsageError
from ..privs import Creds, PrivilegeError, acting_as
from . import convert
from .auth import CallerRegistry, process_ids, start_time_ns
from .backend import AccessDenied, NotFound, SessionReads, SessionStore, SessionWrites
from .events import EventHub
from .gen import service_pb2 as svc
from .gen import service_pb2_grpc as svc_grpc
from .gen import types_pb2 as pb
from .proxy import ConnectionLimits, CredentialProxy, PublicSocket
from .ratelog import RateLimitedLog, RateLimitFilter
from .records import Caller, RunRecord
from .shares import Busy, Share, worker_budget

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_TEXT = 4096  # paths, ids, labels
MAX_CODE = 1024 * 1024
MAX_ARGS = 4096
_GRPC_LOGGERS = ("grpc._server", "grpc._common")  # where grpc logs failed requests
# Calls one connection may have in flight (HTTP/2 streams); more wait in the
# client. With the proxy's per-uid connection cap this bounds one user's
# queued calls, so the server needs no global cap on calls in flight: such a
# cap is one queue, and one user's flood of calls, each refused at once,
# would fill it and shut every other caller out.
MAX_CALLS_PER_CONNECTION = 16

_STATUS = {
    Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AccessDenied: grpc.StatusCode.PERMISSION_DENIED,
    UsageError: grpc.StatusCode.INVALID_ARGUMENT,
    ProcessError: grpc.StatusCode.FAILED_PRECONDITION,
    # A full or failing store is not "busy": asking again soon will not help,
    # so the client runs the command at once (untraced, with one warning).
    StoreWriteError: grpc.StatusCode.FAILED_PRECONDITION,
}


def _status_of(exc: TracerError) -> grpc.StatusCode:
    for cls, code in _STATUS.items():
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def _unary(share: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Resolves the caller, holds a slot of the named share (see shares.py),
    runs the unary method, and maps its errors to a status."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: "ProvtraceServicer", request: Any, context: grpc.ServicerContext) -> Any:
            caller = self.caller(context)
            slot = getattr(self, share).hold(caller.uid)
            try:
                with slot:
                    return method(self, request, context, caller)
            except Exception as exc:  # noqa: BLE001 -- every failure becomes a status, none a traceback
                code, message = self.failure(method.__name__, caller, exc)
            context.abort(code, message)

        return wrapper

    return decorate


_rpc = _unary("control")    # short calls a traced command or kernel waits on
_query = _unary("queries")  # may scan the store: a share of the workers


def _text(value: str, field: str, limit: int = MAX_TEXT) -> str:
    if len(value) > limit:
        raise UsageError(f"{field} is longer than {limit} characters")
    if "\0" in value:
        raise UsageError(f"{field} contains a NUL byte")
    return value


def _abs_path(value: str, field: str) -> str | None:
    if not value:
        return None
    _text(value, field)
    if not os.path.isabs(value):
        raise UsageError(f"{field} must be an absolute path, got {value!r}")
    return os.path.normpath(value)


def _check_own_file(path: str, caller: Caller) -> None:
    """path must be the caller's own; looked at with the caller's file-system view,
    so the answer says nothing of files the caller could not see itself."""
    try:
        with acting_as(Creds.of_user(caller.uid)):
            owner = os.stat(path, follow_symlinks=False).st_uid
    except FileNotFoundError:
        raise UsageError(f"connection file {path} does not exist") from None
    except (OSError, PrivilegeError):
        raise AccessDenied(f"connection file {path} is not yours") from None
    if owner != caller.uid:
        raise AccessDenied(f"connection file {path} is not yours")


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class ProvtraceServicer(svc_grpc.ProvtraceServicer):
    def __init__(self, writes: SessionWrites, reads: SessionReads, hub: EventHub, registry: CallerRegistry,
                 backend: str = "ebpf",
                 resolve_caller: Callable[[grpc.ServicerContext], Caller | None] | None = None,
                 max_streams: int = 8, max_queries: int = 4, max_workers: int = 16) -> None:
        self.writes = writes  # kernels, cell reports, commands handed over
        self.reads = reads  # runs, cells, lineage, context, staleness, export
        self.hub = hub
        self.registry = registry
        self.backend = backend
        self._resolve = resolve_caller or (lambda ctx: registry.lookup(ctx.peer()))
        self.stopping = threading.Event()
        # Streams and queries each hold a worker thread while they run: capped in
        # total so control calls always find one, and per uid so that one user
        # cannot take a whole share; control calls per non-root uid only (see shares.py).
        self.streams = Share("live streams", max_streams, max(1, max_streams // 2))
        self.queries = Share("queries", max_queries, max(1, max_queries // 2))
        self.control = Share("calls", None, max(1, max_workers // 2), exempt_root=True)
        self._failures = RateLimitedLog(log)
        # name -> "is it still running?"; Health is NOT_SERVING when one says no
        self.components: dict[str, Callable[[], bool]] = {}

    def caller(self, context: grpc.ServicerContext) -> Caller:
        caller = self._resolve(context)
        if caller is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "connection did not come through the daemon's socket; peer unknown")
        return caller

    def failure(self, method: str, caller: Caller, exc: Exception) -> tuple[grpc.StatusCode, str]:
        """The status and message for an RPC that raised; one log line per kind a minute.

        A TracerError is the caller's problem and its message is for them;
        anything else is a bug or a fault here, logged without a traceback
        (unless --debug) and told to the caller without details."""
        if isinstance(exc, TracerError):
            code = _status_of(exc)
            self._failures.log(logging.INFO, (method, caller.uid, code),
                               "event=rpc-refused method=%s uid=%d code=%s error=%r",
                               method, caller.uid, code.name, str(exc))
            return code, str(exc)
        self._failures.error((method, type(exc).__name__), "event=rpc-failed method=%s uid=%d error=%s: %s",
                             method, caller.uid, type(exc).__name__, exc, exc_info=exc)
        return grpc.StatusCode.INTERNAL, f"{method} failed inside the daemon ({type(exc).__name__}); see its log"

    def _visible_run(self, ref: str, caller: Caller) -> RunRecord:
        """The run, if the caller may see it. Another user's run is NotFound with
        the same message as a run that does not exist: ids are not confirmed."""
        _text(ref, "run id", 256)
        if not ref:
            raise UsageError("a run or session id is required")
        return self.reads.get_run(ref, caller.visible_uid)

    # -- health & registration -----------------------------------------------
    @_rpc
    def Health(self, request: svc.HealthRequest, context: Any, caller: Caller) -> svc.HealthResponse:
        sessions = self.reads.list_runs(caller.visible_uid, "session")
        alive = sum(1 for r in sessions if r.kernel is not None and r.kernel.alive and r.ended is None)
        failed = sorted(name for name, alive_now in self.components.items() if not alive_now())
        status = svc.SERVING_STATUS_NOT_SERVING if failed else svc.SERVING_STATUS_SERVING
        return svc.HealthResponse(version=__version__, daemon_pid=os.getpid(), caller_uid=caller.uid,
                                  caller_pid=caller.pid, backend=self.backend, kernels_watched=alive,
                                  status=status, failed=failed)

    @_rpc
    def RegisterKernel(self, request: svc.RegisterKernelRequest, context: Any, caller: Caller) -> svc.RegisterKernelResponse:
        if request.pid <= 0:
            raise UsageError(f"pid must be a positive process id, got {request.pid}")
        owner, _, _ = process_ids(request.pid)
        if not caller.is_root and owner != caller.uid:
            raise AccessDenied(f"pid {request.pid} belongs to uid {owner}, not to you (uid {caller.uid}); "
                               "you may register only your own kernels")
        conn = _abs_path(request.connection_file, "connection_file")
        if conn and not caller.is_root:
            _check_own_file(conn, caller)
        kernel = self.writes.register_kernel(
            pid=request.pid, pid_start_ns=start_time_ns(request.pid), uid=owner, user=_user(owner),
            connection_file=conn, notebook_path=_abs_path(request.notebook_path, "notebook_path"),
            kernel_name=_text(request.kernel_name, "kernel_name", 256) or None,
            language=_text(request.language, "language", 256) or None,
            session_id=_text(request.session_id, "session_id", 256) or None,
        )
        log.info("event=kernel-registered pid=%d uid=%d session=%s", kernel.pid, kernel.uid, kernel.session_id)
        return svc.RegisterKernelResponse(kernel=convert.kernel_to_pb(kernel))

    @_rpc
    def ReportCellStart(self, request: svc.ReportCellStartRequest, context: Any, caller: Caller) -> svc.ReportCellResponse:
        run = self._visible_run(request.session_id, caller)
        for name in ("cell_id", "msg_id", "subshell_id"):
            _text(getattr(request, name), name, 256)
        if len(request.code) > MAX_CODE:
            raise UsageError(f"code is longer than {MAX_CODE} characters; send code_sha256 instead")
        sha = request.code_sha256.lower() or None
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise UsageError("code_sha256 must be 64 hex digits")
        if request.code:
            actual = hashlib.sha256(request.code.encode("utf-8", "surrogatepass")).hexdigest()
            if sha is not None and sha != actual:
                raise UsageError("code_sha256 does not match code")
            sha = actual
        if not request.cell_id and not request.msg_id:
            raise UsageError("a cell report needs cell_id or msg_id")
        report = convert.start_report_from_pb(request, sha)
        cell = self.writes.cell_start(dataclasses.replace(report, session_id=run.id))
        return svc.ReportCellResponse(cell=convert.cell_to_pb(cell))

    @_rpc
    def ReportCellEnd(self, request: svc.ReportCellEndRequest, context: Any, caller: Caller) -> svc.ReportCellResponse:
        run = self._visible_run(request.session_id, caller)
        if request.status not in (pb.CELL_STATUS_OK, pb.CELL_STATUS_ERROR):
            raise UsageError("a cell end report needs status OK or ERROR")
        if not request.cell_id and not request.msg_id:
            raise UsageError("a cell report needs cell_id or msg_id")
        for name in ("cell_id", "msg_id", "error_name"):
            _text(getattr(request, name), name, 256)
        report = convert.end_report_from_pb(request)
        cell = self.writes.cell_end(dataclasses.replace(report, session_id=run.id))
        return svc.ReportCellResponse(cell=convert.cell_to_pb(cell))

    # -- queries ---------------------------------------------------------------
    @_query
    def ListSessions(self, request: svc.ListSessionsRequest, context: Any, caller: Caller) -> svc.ListSessionsResponse:
        kind = convert.enum_name(convert.RUN_KIND, request.kind)
        runs = self.reads.list_runs(caller.visible_uid, kind, request.limit or None)
        return svc.ListSessionsResponse(runs=[convert.run_to_pb(r) for r in runs])

    @_query
    def ListCells(self, request: svc.ListCellsRequest, context: Any, caller: Caller) -> svc.ListCellsResponse:
        run = self._visible_run(request.session_id, caller)
        return svc.ListCellsResponse(cells=[convert.cell_to_pb(c) for c in self.reads.list_cells(run.id)])

    @_query
    def Lineage(self, request: svc.LineageRequest, context: Any, caller: Caller) -> svc.LineageResponse:
        path = _abs_path(request.path, "path")
        if path is None:
            raise UsageError("lineage needs a path")
        direction = convert.enum_name(convert.DIRECTION, request.direction) or "upstream"
        graph = self.reads.lineage(path, direction, request.depth or None, caller.visible_uid,
                                   at=request.at or None, all_versions=request.all_versions,
                                   kernel_state=not request.no_kernel_state)
        return convert.lineage_to_pb(graph)

    @_query
    def Stale(self, request: svc.StaleRequest, context: Any, caller: Caller) -> svc.StaleResponse:
        run_id = self._visible_run(request.run_id, caller).id if request.run_id else None
        result = self.reads.staleness(run_id, caller.visible_uid)
        return svc.StaleResponse(result_json=json.dumps(result, ensure_ascii=False))

    @_query
    def GetContext(self, request: svc.GetContextRequest, context: Any, caller: Caller) -> svc.GetContextResponse:
        run = self._visible_run(request.run_id, caller)
        return svc.GetContextResponse(context=convert.struct_to_pb(self.reads.context(run.id)))

    def StreamEvents(self, request: svc.StreamEventsRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        caller = self.caller(context)
        try:
            if request.session_id:
                self._visible_run(request.session_id, caller)
            kinds = [_text(k, "kind", 64) for k in request.kinds]
            self.streams.acquire(caller.uid)
        except Exception as exc:  # noqa: BLE001 -- a status, never a traceback
            code, message = self.failure("StreamEvents", caller, exc)
            context.abort(code, message)
        sub = self.hub.subscribe(caller.visible_uid, request.session_id or None, kinds)
        context.add_callback(sub.close)  # runs when the client goes away mid-stream
        log.info("event=stream-open uid=%d subscribers=%d", caller.uid, self.hub.subscribers)
        try:
            while context.is_active() and not self.stopping.is_set():
                event = sub.get(timeout_s=0.5)
                if event is not None:
                    yield convert.event_to_pb(event)
        finally:
            sub.close()
            self.streams.release(caller.uid)
            log.info("event=stream-closed uid=%d", caller.uid)

    def Export(self, request: svc.ExportRequest, context: grpc.ServicerContext) -> Iterator[svc.ExportChunk]:
        """A query in chunks: it holds a query slot until the last chunk is sent."""
        caller = self.caller(context)
        try:
            with self.queries.hold(caller.uid):
                fmt = convert.enum_name(convert.EXPORT_FORMAT, request.format) or "json"
                if request.all:
                    ids = [r.id for r in self.reads.list_runs(caller.visible_uid)]
                else:
                    ids = [self._visible_run(request.run_id, caller).id]
                for chunk in self.reads.export(ids, fmt, caller.visible_uid):
                    if not context.is_active():
                        return
                    yield svc.ExportChunk(data=chunk)
                return
        except Exception as exc:  # noqa: BLE001 -- a status, never a traceback
            code, message = self.failure("Export", caller, exc)
        context.abort(code, message)

    # -- commands on behalf of a user -----------------------------------------
    @_rpc
    def TraceCommand(self, request: svc.TraceCommandRequest, context: Any, caller: Caller) -> svc.TraceCommandResponse:
        if not request.argv:
            raise UsageError("argv is empty")
        if len(request.argv) > MAX_ARGS or len(request.env) > MAX_ARGS:
            raise UsageError(f"argv and env are limited to {MAX_ARGS} entries each")
        argv = [_text(a, "argv", 128 * 1024) for a in request.argv]
        cwd = _abs_path(request.cwd, "cwd") or "/"
        owner, ppid, _ = process_ids(request.pid) if request.pid > 0 else (None, None, None)
        if owner is None:
            raise UsageError(f"pid must be a positive process id, got {request.pid}")
        if not caller.is_root and (owner != caller.uid or ppid != caller.pid):
            raise AccessDenied(f"pid {request.pid} is not a child of the calling process (pid {caller.pid}) "
                               f"owned by uid {caller.uid}; hand over only your own blocked child")
        run = self.writes.start_command(pid=request.pid, uid=owner, user=_user(owner), argv=argv, cwd=cwd,
                                       env=dict(request.env), label=_text(request.label, "label") or None,
                                       ppid=ppid)
        log.info("event=command-traced run=%s pid=%d uid=%d", run.id, request.pid, owner)
        response = svc.TraceCommandResponse(run_id=run.id)
        if run.started is not None:
            response.started.CopyFrom(convert.ts_to_pb(run.started))
        return response

    @_rpc
    def FinishCommand(self, request: svc.FinishCommandRequest, context: Any, caller: Caller) -> svc.FinishCommandResponse:
        run = self._visible_run(request.run_id, caller)
        if run.kind != "command":
            raise UsageError(f"run {run.id} is a {run.kind}, not a command")
        ended = convert.ts_from_pb(request, "ended") or dt.datetime.now(dt.timezone.utc)
        self.writes.finish_command(run.id, request.exit_code, ended)
        return svc.FinishCommandResponse()


class ApiServer:
    """Hosts the servicer behind the credential-checking public socket."""

    def __init__(self, store: SessionStore, socket_path: str, hub: EventHub | None = None,
                 backend: str = "ebpf", max_workers: int = 16,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, limits: ConnectionLimits | None = None) -> None:
        self.socket_path = socket_path
        self.hub = hub or EventHub()
        self.registry = CallerRegistry()
        # streams and queries each get a share of the workers; control calls
        # (TraceCommand, FinishCommand, cell reports, Health) always have the rest
        _reserved, streams, queries = worker_budget(max_workers)
        self.servicer = ProvtraceServicer(store, store, self.hub, self.registry, backend,
                                          max_streams=streams, max_queries=queries, max_workers=max_workers)
        self.max_workers = max_workers
        self.max_message_bytes = max_message_bytes
        self.limits = limits or ConnectionLimits()
        self._public: PublicSocket | None = None
        self._grpc: grpc.Server | None = None
        # grpc logs a traceback for each request it cannot decode or serve: rate-limit them
        self._grpc_log_filter = RateLimitFilter()
        self._proxy: CredentialProxy | None = None

    def start(self) -> None:
        for name in _GRPC_LOGGERS:
            logging.getLogger(name).addFilter(self._grpc_log_filter)
        public = PublicSocket(self.socket_path)
        listener = public.open()
        self._public = public
        try:
            options = [
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Ping every connection well inside the proxy's idle timeout: a live
                # client's gRPC library answers, so only silent peers are cut.
                ("grpc.keepalive_time_ms", int(min(60.0, self.limits.idle_s / 3) * 1000)),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.max_concurrent_streams", MAX_CALLS_PER_CONNECTION),
            ]
            server = grpc.server(futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="grpc"),
                                 options=options)
            svc_grpc.add_ProvtraceServicer_to_server(self.servicer, server)
            if server.add_insecure_port(f"unix:{public.private_path}") == 0:
                raise TracerError(f"grpc could not listen on {public.private_path}")
            server.start()
            self._grpc = server
            self._proxy = CredentialProxy(listener, public.private_path, self.registry, self.limits)
            self._proxy.start()
            self.servicer.components["socket proxy"] = lambda: self._proxy is not None and self._proxy.alive
        except BaseException:
            self.stop()
            raise
        log.info("event=api-started socket=%s", self.socket_path)

    def stop(self, grace_s: float = 1.0) -> None:
        self.servicer.stopping.set()
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait()
            self._grpc = None
        if self._public is not None:
            self._public.close()
            self._public = None
        for name in _GRPC_LOGGERS:
            logging.getLogger(name).removeFilter(self._grpc_log_filter)

    def __enter__(self) -> "ApiServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
