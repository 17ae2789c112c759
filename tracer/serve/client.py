"""Client side of the daemon's API, for the CLI and the TUI.

ProvtraceClient wraps the RPCs and returns records.py dataclasses; every
gRPC failure becomes an ApiError whose message names the socket.
run_command() is `provtrace run` for a non-root user: the daemon traces the
command on the user's behalf (see TraceCommand in service.proto).

Before its first byte goes out, a client makes sure it talks to the real
daemon (a fake server on the path would collect commands, environments and
cells): every directory down to the socket must be root's and writable by
nobody else (sockpath.py), the socket must be root's, and the listener's
SO_PEERCRED uid must be root (or $PROVTRACE_DAEMON_UID). gRPC then connects
through /proc/self/fd/N/NAME, N being the directory it checked, so no swap
of any ancestor between the check and gRPC's (re)connects changes where it
goes; a swap inside the checked directory would need root. A refused daemon
raises UntrustedDaemon, which callers treat like an absent daemon.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence, TypeVar

import grpc

from ..capture import gate, sigstate
from ..context.redact import redact_env
from ..errors import CommandNotFound, TracerError
from ..model.status import exit_code as exit_code_of
from .auth import peer_ids
from .gen import service_pb2 as svc
from .gen import service_pb2_grpc as svc_grpc
from .sockpath import UntrustedSocket, check_socket_file, open_socket_dir, trusted_uids

if TYPE_CHECKING:
    from .records import ApiEvent, CellRecord, KernelRecord, LineageGraph, RunRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SOCKET = "/run/provtrace/provtrace.sock"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_SOCKET_PATH_BYTES = 107  # sockaddr_un.sun_path, less its NUL

# The daemon refuses a call over its share at once (RESOURCE_EXHAUSTED): a
# client waits a little and asks again, up to BUSY_RETRY_S in all.
BUSY_RETRY_S = 5.0
# A command handed to the daemon: these codes mean it could not take it
# (busy, gone, or too slow to answer) and the command has not started yet.
# The first two are refusals before any work, so asking again is safe; after
# a deadline the daemon may still act on the call, so that one is not repeated.
HANDOVER_RETRY_S = 10.0
_REFUSED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
_TRANSIENT = (*_REFUSED, grpc.StatusCode.DEADLINE_EXCEEDED)


def _convert():
    """The pb<->record conversions, imported on first use: they pull in
    protobuf's json_format and the record dataclasses, ~20 ms that
    `provtrace run` through the daemon (start-up target 150 ms) never needs."""
    from . import convert  # noqa: PLC0415

    return convert


def default_socket_path() -> str:
    """$PROVTRACE_SOCKET, else /run/provtrace/provtrace.sock."""
    return os.environ.get("PROVTRACE_SOCKET") or DEFAULT_SOCKET


class ApiError(TracerError):
    """A call to the daemon failed; carries the gRPC status code."""

    def __init__(self, socket_path: str, code: grpc.StatusCode, details: str, message: str | None = None) -> None:
        self.code = code
        self.details = details
        if message is not None:
            msg = message
        elif code == grpc.StatusCode.UNAVAILABLE:
            msg = f"no provtrace daemon answers on {socket_path} (start one with: provtrace daemon)"
        else:  # grpc's own details can run to several lines (file:line of its C core)
            msg = f"daemon at {socket_path}: {code.name.lower()}: {(details.splitlines() or [''])[0]}"
        super().__init__(msg)

    @property
    def transient(self) -> bool:
        """Busy, gone or too slow: asking again later, or elsewhere, may work."""
        return self.code in _TRANSIENT


class HandOverFailed(TracerError):
    """The daemon could not take a command; the command did not start, and may run another way."""

    def __init__(self, socket_path: str, why: str) -> None:
        super().__init__(f"daemon at {socket_path} could not take the command ({why})")


class DaemonBusy(HandOverFailed):
    """Busy, unreachable or too slow to answer."""

    def __init__(self, socket_path: str, cause: ApiError) -> None:
        self.cause = cause
        super().__init__(socket_path, f"{cause.code.name.lower()}: "
                                      f"{(cause.details.splitlines() or ['no answer'])[0]}")


class UntrustedDaemon(ApiError):
    """The socket could be someone's fake daemon; nothing was sent to it.
    Its code is UNAVAILABLE: callers that fall back without a daemon do so here too."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(socket_path, grpc.StatusCode.UNAVAILABLE, reason,
                         f"refusing daemon socket {socket_path}: {reason}")


@dataclass(frozen=True)
class Health:
    version: str
    daemon_pid: int
    caller_uid: int
    caller_pid: int
    backend: str
    kernels_watched: int
    serving: bool = True
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommandResult:
    run_id: str  # "" when the daemon did not take the command (it ran untraced)
    exit_code: int
    warning: str | None = None  # one line for the user when the daemon failed around the command


class ProvtraceClient:
    def __init__(self, socket_path: str | None = None, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise TracerError(f"socket path is longer than {MAX_SOCKET_PATH_BYTES} bytes, the most a unix "
                              f"socket address holds: {self.socket_path[:40]}...; use a shorter path")
        self.timeout_s = timeout_s
        self._channel: grpc.Channel | None = None
        self._stub_: svc_grpc.ProvtraceStub | None = None
        self._dir_fd = -1  # the checked socket directory, held while the channel lives
        self._target: str | None = None  # /proc/self/fd/N/NAME once verified
        self._opening = threading.Lock()  # threads sharing a client open one channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub_ = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        self._target = None

    def verify(self) -> None:
        """Checks now, without a channel and sending nothing, that the socket is
        the real daemon's: UntrustedDaemon, or ApiError UNAVAILABLE when no one
        listens. The first RPC does it otherwise."""
        with self._opening:
            self._verify()

    def _verify(self) -> str:
        if self._target is None:
            self._target = self._verified_target()
        return self._target

    @property
    def _stub(self) -> svc_grpc.ProvtraceStub:
        """The channel, opened on first use once the daemon is known to be the real one."""
        with self._opening:
            if self._stub_ is None:
                target = self._verify()
                self._channel = grpc.insecure_channel(
                    f"unix:{target}",
                    options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                             ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
                )
                self._stub_ = svc_grpc.ProvtraceStub(self._channel)
            return self._stub_

    def _verified_target(self) -> str:
        """/proc/self/fd/N/NAME after the path, the socket and the listener passed."""
        unavailable = ApiError(self.socket_path, grpc.StatusCode.UNAVAILABLE, "")
        try:
            trusted = trusted_uids()
            fd, parent, name = open_socket_dir(self.socket_path, trusted)
        except UntrustedSocket as exc:
            raise UntrustedDaemon(self.socket_path, str(exc)) from None
        except OSError:
            raise unavailable from None  # a missing directory: no daemon there
        try:
            check_socket_file(fd, parent, name, trusted)
            target = f"/proc/self/fd/{fd}/{name}"
            _check_listener(target, trusted)
        except UntrustedSocket as exc:
            os.close(fd)
            raise UntrustedDaemon(self.socket_path, str(exc)) from None
        except OSError:
            os.close(fd)
            raise unavailable from None
        self._dir_fd = fd
        return target

    def __enter__(self) -> "ProvtraceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, request: object, retry_s: float = BUSY_RETRY_S,
              retry_on: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.RESOURCE_EXHAUSTED,),
              timeout_s: float | None = None) -> object:
        """One RPC; a refusal in retry_on is asked again, with backoff, for up to retry_s."""
        method = getattr(self._stub, name)
        return self._retrying(name, lambda: method(request, timeout=timeout_s or self.timeout_s),
                              retry_s, retry_on)

    def _retrying(self, name: str, call: Callable[[], T], retry_s: float,
                  retry_on: tuple[grpc.StatusCode, ...]) -> T:
        deadline = time.monotonic() + retry_s
        pause_s = 0.1
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                error = ApiError(self.socket_path, exc.code(), exc.details() or "")
            if error.code not in retry_on or time.monotonic() + pause_s > deadline:
                raise error
            log.debug("event=rpc-retry method=%s code=%s pause_s=%.1f", name, error.code.name, pause_s)
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 2.0)

    # -- RPCs ----------------------------------------------------------------
    def health(self) -> Health:
        r = self._call("Health", svc.HealthRequest())
        return Health(r.version, r.daemon_pid, r.caller_uid, r.caller_pid, r.backend, r.kernels_watched,
                      serving=r.status != svc.SERVING_STATUS_NOT_SERVING, failed=tuple(r.failed))

    def register_kernel(self, pid: int, connection_file: str | None = None, notebook_path: str | None = None,
                        kernel_name: str | None = None, language: str | None = None,
                        session_id: str | None = None) -> KernelRecord:
        r = self._call("RegisterKernel", svc.RegisterKernelRequest(
            pid=pid, connection_file=connection_file or "", notebook_path=notebook_path or "",
            kernel_name=kernel_name or "", language=language or "", session_id=session_id or ""))
        return _convert().kernel_from_pb(r.kernel)

    def report_cell_start(self, session_id: str, cell_id: str | None = None, msg_id: str | None = None,
                          execution_count: int | None = None, code: str | None = None,
                          code_sha256: str | None = None, started: dt.datetime | None = None,
                          index: int | None = None, subshell_id: str | None = None) -> CellRecord:
        req = svc.ReportCellStartRequest(
            session_id=session_id, cell_id=cell_id or "", msg_id=msg_id or "",
            execution_count=execution_count or 0, code=code or "", code_sha256=code_sha256 or "",
            subshell_id=subshell_id or "")
        if index is not None:
            req.index = index
        if started is not None:
            req.started.CopyFrom(_convert().ts_to_pb(started))
        return _convert().cell_from_pb(self._call("ReportCellStart", req).cell)

    def report_cell_end(self, session_id: str, status: str, cell_id: str | None = None,
                        msg_id: str | None = None, execution_count: int | None = None,
                        ended: dt.datetime | None = None, error_name: str | None = None) -> CellRecord:
        req = svc.ReportCellEndRequest(
            session_id=session_id, cell_id=cell_id or "", msg_id=msg_id or "",
            execution_count=execution_count or 0, status=_convert().CELL_STATUS.get(status, 0),
            error_name=error_name or "")
        if ended is not None:
            req.ended.CopyFrom(_convert().ts_to_pb(ended))
        return _convert().cell_from_pb(self._call("ReportCellEnd", req).cell)

    def list_runs(self, kind: str | None = None, limit: int | None = None) -> list[RunRecord]:
        r = self._call("ListSessions", svc.ListSessionsRequest(
            kind=_convert().RUN_KIND.get(kind or "", 0), limit=limit or 0))
        return [_convert().run_from_pb(x) for x in r.runs]

    def list_cells(self, session_id: str) -> list[CellRecord]:
        r = self._call("ListCells", svc.ListCellsRequest(session_id=session_id))
        return [_convert().cell_from_pb(c) for c in r.cells]

    def lineage(self, path: str, direction: str = "upstream", depth: int | None = None, *,
                at: str | None = None, all_versions: bool = False, kernel_state: bool = True) -> LineageGraph:
        r = self._call("Lineage", svc.LineageRequest(
            path=os.path.abspath(path) if path else "", direction=_convert().DIRECTION.get(direction, 0),
            depth=depth or 0, at=at or "", all_versions=all_versions, no_kernel_state=not kernel_state))
        return _convert().lineage_from_pb(r)

    def context(self, run_id: str) -> dict:
        r = self._call("GetContext", svc.GetContextRequest(run_id=run_id))
        return _convert().struct_from_pb(r.context)

    def stream_events(self, session_id: str | None = None, kinds: Sequence[str] = ()) -> Iterator[ApiEvent]:
        """Live events until the caller stops iterating (call .cancel() on the iterator to stop early)."""
        stream = self._stub.StreamEvents(svc.StreamEventsRequest(session_id=session_id or "", kinds=list(kinds)))
        return _EventStream(stream, self.socket_path)

    def stale(self, run_id: str | None = None) -> dict:
        """`provtrace stale --json` as the daemon sees it, cut to this caller's runs."""
        r = self._call("Stale", svc.StaleRequest(run_id=run_id or ""))
        return json.loads(r.result_json)

    def export(self, run_id: str | None, fmt: str = "json") -> bytes:
        """The whole document; run_id None exports everything the caller may see."""
        if fmt not in _convert().EXPORT_FORMAT:
            raise TracerError(f"unknown export format {fmt!r}; one of {', '.join(_convert().EXPORT_FORMAT)}")
        req = svc.ExportRequest(run_id=run_id or "", all=run_id is None, format=_convert().EXPORT_FORMAT[fmt])
        return self._retrying("Export", lambda: b"".join(
            chunk.data for chunk in self._stub.Export(req, timeout=self.timeout_s)),
            BUSY_RETRY_S, (grpc.StatusCode.RESOURCE_EXHAUSTED,))

    def trace_command(self, pid: int, argv: Sequence[str], cwd: str, env: Mapping[str, str],
                      label: str | None = None, retry_s: float = BUSY_RETRY_S) -> str:
        """The daemon starts tracing pid; busy, unreachable or slow answers are
        asked again for up to retry_s (the child has not started: nothing is lost).
        The daemon only records the environment (in the run's context, redacted
        there too): what it never needs in clear text is never sent."""
        r = self._call("TraceCommand", svc.TraceCommandRequest(
            pid=pid, argv=list(argv), cwd=cwd, env=redact_env(env), label=label or ""),
            retry_s=retry_s, retry_on=_REFUSED, timeout_s=HANDOVER_RETRY_S)
        return r.run_id

    def finish_command(self, run_id: str, exit_code: int) -> None:
        req = svc.FinishCommandRequest(run_id=run_id, exit_code=exit_code)
        req.ended.GetCurrentTime()  # UTC wall clock, as ts_to_pb would give
        self._call("FinishCommand", req, retry_on=_REFUSED)


def _check_listener(target: str, trusted: frozenset[int]) -> None:
    """Connects once and asks the kernel who listens (SO_PEERCRED); sends nothing.

    With the directory and socket file checked this is defense in depth: it
    also catches a trusted-owned socket whose listener is no longer the
    daemon (a root process that handed its listening fd on)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # Blocking, bounded by SO_SNDTIMEO: a busy daemon's full backlog is
        # waited out (a Python timeout would make connect fail with EAGAIN at once).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 5, 0))
        probe.connect(target)
        _, uid, _ = peer_ids(probe)
    finally:
        probe.close()
    if uid not in trusted:
        raise UntrustedSocket(f"the process listening there runs as uid {uid}, not as root or the daemon's uid")


class _EventStream:
    def __init__(self, stream: grpc.RpcContext, socket_path: str) -> None:
        self._stream = stream
        self._socket_path = socket_path

    def __iter__(self) -> "_EventStream":
        return self

    def __next__(self) -> ApiEvent:
        try:
            return _convert().event_from_pb(next(self._stream))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise ApiError(self._socket_path, exc.code(), exc.details() or "") from None

    def cancel(self) -> None:
        self._stream.cancel()


def run_command(argv: Sequence[str], socket_path: str | None = None, cwd: str | None = None,
                env: Mapping[str, str] | None = None, label: str | None = None,
                on_started: Callable[[str], None] | None = None) -> CommandResult:
    """Runs argv traced by the daemon on this user's behalf; returns its run id and exit code.

    The daemon's socket is checked first (an absent or untrusted daemon raises
    ApiError before anything is forked). The child is then forked and blocks on
    a pipe before exec; the daemon checks it is ours (uid, parent pid), starts
    tracing it, and only then is it released, so tracing covers its first
    instruction. Forking happens before any gRPC channel exists in this call.
    Two calls in all, on one connection: TraceCommand and FinishCommand.
    """
    if not argv:
        raise TracerError("nothing to run: the command is empty")
    cwd = os.path.abspath(cwd or os.getcwd())
    env = dict(os.environ if env is None else env)
    if "/" not in argv[0] and shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
        raise CommandNotFound(argv[0], "command not found in PATH")  # as a shell says it
    from ..model.paths import is_utf8  # noqa: PLC0415

    if not all(is_utf8(a) for a in (*argv, cwd)):
        raise HandOverFailed(socket_path or default_socket_path(),
                             "its arguments or directory are not UTF-8, which the daemon's API cannot carry")
    with ProvtraceClient(socket_path) as client:
        client.verify()  # no daemon, or a fake one: the caller may run the command another way
        # quiet: when it is never released, the caller may run the command another way
        child = gate.fork_gated(argv, env, cwd, quiet=True)
        try:
            return _run_gated(client, child, argv, cwd, _wire_env(env), label, on_started)
        finally:
            child.close()  # never released: the child reads EOF and exits without running anything
            if child.pid > 0:
                os.waitpid(child.pid, 0)


def _run_gated(client: ProvtraceClient, child: gate.Gated, argv: Sequence[str], cwd: str,
               wire_env: dict[str, str], label: str | None,
               on_started: Callable[[str], None] | None) -> CommandResult:
    """The daemon takes the gated child, which then runs; its exit is reported back.

    Whatever happens to the daemon (a full store, a crash), the command runs and
    its exit code comes back; the user is told. A busy or absent daemon is the
    caller's to decide: it may trace it another way."""
    warning = None
    try:
        run_id = client.trace_command(child.pid, argv, cwd, wire_env, label, retry_s=HANDOVER_RETRY_S)
    except ApiError as e:
        if e.transient:  # the child never ran: the caller may run it another way
            raise DaemonBusy(client.socket_path, e) from None
        run_id, warning = "", f"{e}; the command runs untraced"
    if on_started is not None and run_id:
        on_started(run_id)
    child.release()
    with sigstate.Relay(child.pid):  # ^C reaches the command; SIGTERM and SIGHUP are passed on
        failed = child.exec_error()
        _, status = os.waitpid(child.pid, 0)
    child.pid = -1
    exit_code = exit_code_of(status)
    if run_id:
        try:
            client.finish_command(run_id, 127 if failed else exit_code)
        except ApiError as exc:  # the daemon ends the run itself once the command is gone
            warning = f"{exc}; run {run_id} is ended by the daemon, without this exit code"
    if failed:
        raise CommandNotFound(argv[0], os.strerror(int(failed.decode() or "2")))
    return CommandResult(run_id, exit_code, warning)


def _wire_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment as the daemon records it: undecodable bytes as \\xNN escapes
    (the command itself gets the exact bytes)."""
    from ..model.paths import display  # noqa: PLC0415

    return {display(k): display(v) for k, v in env.items()}
