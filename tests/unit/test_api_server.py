"""The gRPC API end to end over a real Unix socket, as the current user."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading

import grpc
import pytest

from provtrace.tracer.serve.client import ApiError, ProvtraceClient
from provtrace.tracer.serve.events import EventHub
from provtrace.tracer.serve.gen import service_pb2 as svc
from provtrace.tracer.daemon.memory import InMemoryStore
from provtrace.tracer.serve.proxy import SocketError, SocketInUse
from provtrace.tracer.serve.server import ApiServer


@pytest.fixture
def api(tmp_path):
    hub = EventHub()
    store = InMemoryStore(hub)
    server = ApiServer(store, str(tmp_path / "run" / "provtrace.sock"), hub=hub)
    server.start()
    yield server, store
    server.stop()


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def test_health_reports_peer_credentials(api):
    server, _ = api
    with ProvtraceClient(server.socket_path) as c:
        h = c.health()
    assert (h.caller_uid, h.caller_pid, h.daemon_pid) == (os.getuid(), os.getpid(), os.getpid())


def test_health_turns_not_serving_when_a_component_thread_dies(api):
    server, _ = api
    worker = threading.Thread(target=lambda: None, name="short-lived")
    worker.start()
    server.servicer.components["short-lived worker"] = worker.is_alive
    worker.join()
    with ProvtraceClient(server.socket_path) as c:
        h = c.health()
    assert not h.serving and h.failed == ("short-lived worker",)
    server.servicer.components.pop("short-lived worker")
    with ProvtraceClient(server.socket_path) as c:
        assert c.health().serving  # the socket proxy itself is alive


def test_socket_permissions(api):
    server, _ = api
    st = os.stat(server.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    private = server._public.private_dir
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700


def test_register_report_and_list(api, sleeper):
    server, _ = api
    with ProvtraceClient(server.socket_path) as c:
        k = c.register_kernel(sleeper.pid, notebook_path="/tmp/x.ipynb", kernel_name="python3", language="python")
        assert k.uid == os.getuid() and k.pid_start_ns > 0
        c.report_cell_start(k.session_id, cell_id="c1", msg_id="m1", code="print(1)", index=0)
        cell = c.report_cell_end(k.session_id, "error", msg_id="m1", execution_count=1, error_name="E")
        assert (cell.cell_id, cell.status, cell.index, cell.execution_count) == ("c1", "error", 0, 1)
        assert cell.code_sha256 and cell.sources == frozenset({"report"})
        runs = c.list_runs(kind="session")
        assert [r.id for r in runs] == [k.session_id] and runs[0].kernel.pid == sleeper.pid
        assert [x.msg_id for x in c.list_cells("last")] == ["m1"]
        assert b'"cell_id": "c1"' in c.export(k.session_id, "json")


@pytest.mark.parametrize(
    "call, code",
    [
        (lambda c: c.register_kernel(-5), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.register_kernel(2**31 - 1), grpc.StatusCode.FAILED_PRECONDITION),  # no such pid
        (lambda c: c.list_cells("nope"), grpc.StatusCode.NOT_FOUND),
        (lambda c: c.report_cell_end("nope", "ok", msg_id="m"), grpc.StatusCode.NOT_FOUND),
        (lambda c: c.lineage("", "upstream"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.export("nope", "prov-n"), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_bad_requests_get_clear_statuses(api, call, code):
    server, _ = api
    with ProvtraceClient(server.socket_path) as c:
        with pytest.raises(ApiError) as err:
            call(c)
        assert err.value.code == code
        assert c.health().caller_uid == os.getuid()  # still serving


def test_oversized_request_is_refused_and_server_keeps_running(api, sleeper):
    server, _ = api
    with ProvtraceClient(server.socket_path) as c:
        k = c.register_kernel(sleeper.pid)
        with pytest.raises(ApiError) as err:
            c.report_cell_start(k.session_id, cell_id="c", code="x" * (5 * 1024 * 1024))
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(ApiError) as err:
            c.report_cell_start(k.session_id, cell_id="c", code="x" * (2 * 1024 * 1024))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "code_sha256" in str(err.value)
        assert c.list_runs()[0].id == k.session_id


def test_malformed_request_bytes(api):
    server, _ = api
    with grpc.insecure_channel(f"unix:{server.socket_path}") as ch:
        raw = ch.unary_unary("/provtrace.v1.Provtrace/RegisterKernel")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff garbage", timeout=10)
        assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        unknown = ch.unary_unary("/provtrace.v1.Provtrace/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as err:
            unknown(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with ProvtraceClient(server.socket_path) as c:
        assert c.health().caller_uid == os.getuid()


def test_private_socket_without_proxy_is_unauthenticated(api):
    server, _ = api
    with grpc.insecure_channel(f"unix:{server._public.private_path}") as ch:
        health = ch.unary_unary("/provtrace.v1.Provtrace/Health",
                                request_serializer=svc.HealthRequest.SerializeToString,
                                response_deserializer=svc.HealthResponse.FromString)
        with pytest.raises(grpc.RpcError) as err:
            health(svc.HealthRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_stream_events_and_client_vanishing_mid_stream(api, sleeper):
    server, store = api
    with ProvtraceClient(server.socket_path) as c:
        stream = c.stream_events(kinds=["kernel", "cell"])
        got: list = []
        subscribed = threading.Event()

        def read():
            for ev in stream:
                got.append(ev)
                if len(got) == 2:
                    return

        reader = threading.Thread(target=read)
        reader.start()
        # wait until the server has the subscription before publishing
        for _ in range(200):
            if server.hub.subscribers:
                subscribed.set()
                break
            threading.Event().wait(0.05)
        assert subscribed.is_set()
        k = c.register_kernel(sleeper.pid)
        c.report_cell_start(k.session_id, msg_id="m1")
        reader.join(timeout=30)
        assert [e.kind for e in got] == ["kernel", "cell"] and got[1].cell.msg_id == "m1"
        stream.cancel()
    # a client killed mid-stream: the server drops its subscription and keeps going
    code = (
        "import sys; from provtrace.tracer.serve.client import ProvtraceClient\n"
        f"s = ProvtraceClient({server.socket_path!r}).stream_events()\n"
        "print('open', flush=True); next(s)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "open"
    for _ in range(200):
        if server.hub.subscribers:
            break
        threading.Event().wait(0.05)
    child.kill()
    child.wait()
    for _ in range(200):
        if not server.hub.subscribers:
            break
        store.register_kernel(pid=1, pid_start_ns=0, uid=os.getuid(), user=None, connection_file=None,
                              notebook_path=None, kernel_name=None, language=None, session_id=None)
        threading.Event().wait(0.05)
    assert server.hub.subscribers == 0
    with ProvtraceClient(server.socket_path) as c:
        assert c.health().caller_uid == os.getuid()


def test_second_daemon_fails_clearly(api, tmp_path):
    server, _ = api
    other = ApiServer(InMemoryStore(), server.socket_path)
    with pytest.raises(SocketInUse) as err:
        other.start()
    assert f"pid {os.getpid()}" in str(err.value) and "already running" in str(err.value)
    with ProvtraceClient(server.socket_path) as c:
        assert c.health().daemon_pid == os.getpid()


def test_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "provtrace.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # a socket file nobody listens on
    with ApiServer(InMemoryStore(), str(path)) as server:
        with ProvtraceClient(server.socket_path) as c:
            assert c.health().caller_uid == os.getuid()
    assert not path.exists()


def test_non_socket_path_is_not_clobbered(tmp_path):
    path = tmp_path / "provtrace.sock"
    path.write_text("precious")
    with pytest.raises(SocketError, match="not a socket"):
        ApiServer(InMemoryStore(), str(path)).start()
    assert path.read_text() == "precious"


def test_no_daemon_is_a_clear_error(tmp_path):
    with ProvtraceClient(str(tmp_path / "none.sock"), timeout_s=5) as c:
        with pytest.raises(ApiError, match="no provtrace daemon answers"):
            c.health()


def test_trace_command_as_self(api):
    from provtrace.tracer.serve.client import run_command

    server, store = api
    result = run_command(["sh", "-c", "exit 3"], socket_path=server.socket_path, label="t")
    assert result.exit_code == 3
    run = store.get_run(result.run_id, None)
    assert run.kind == "command" and run.exit_code == 3 and run.uid == os.getuid()
    from provtrace.tracer.errors import CommandNotFound

    with pytest.raises(CommandNotFound):
        run_command(["/nonexistent/cmd"], socket_path=server.socket_path)


def test_streams_are_capped_so_unary_calls_keep_working(api):
    server, _ = api
    limit = server.servicer.streams.per_uid
    with ProvtraceClient(server.socket_path) as c:
        streams = [c.stream_events() for _ in range(limit)]
        for _ in range(400):
            if server.servicer.streams.held(os.getuid()) == limit:
                break
            threading.Event().wait(0.05)
        assert server.servicer.streams.held(os.getuid()) == limit
        extra = c.stream_events()
        with pytest.raises(ApiError) as err:
            next(extra)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many live streams" in str(err.value)
        assert c.health().caller_uid == os.getuid()
        for s in streams:
            s.cancel()
        for _ in range(400):
            if not server.servicer.streams.held():
                break
            threading.Event().wait(0.05)
        assert server.servicer.streams.held() == 0
