"""The Jupyter provisioner and server extension (tracer/jupyter/) against real parts:
a real `provtrace daemon` (real probes, real socket, real store), real ipykernel
kernels started by plain jupyter_client, and a real `jupyter server` process
whose kernel websocket is driven with tornado's websocket client in both wire
protocols (legacy JSON and v1.kernel.websocket.jupyter.org)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from provtrace.tracer.serve.client import ProvtraceClient
from provtrace.tracer.jupyter.kernels import KernelFacts
from provtrace.tracer.jupyter.provisioner import PROVISIONER_NAME, ProvtraceProvisioner
from provtrace.tracer.jupyter.reporter import CellEnd, CellReporter, CellStart

from .helpers import stored_run as _doc
from .helpers import until_followed as _until_followed
from .helpers import wait_for as _wait

JUPYTER = os.path.join(os.path.dirname(sys.executable), "jupyter")
V1 = "v1.kernel.websocket.jupyter.org"
UNREACHABLE_WARNING = "cannot report to the daemon"





def _ended(db: str, session_id: str) -> dict:
    return _wait(lambda: (lambda d: d if d["run"]["ended"] else None)(_doc(db, session_id)),
                 60, "the session to end")


# -- the provisioner, under plain jupyter_client ---------------------------------


def _provisioned_manager(spec_dir) -> KernelManager:
    """A KernelManager for a real kernelspec naming our provisioner in its metadata,
    as a user would write it (docs/notebooks.md)."""
    spec = KernelSpecManager().get_kernel_spec("python3").to_dict()
    spec["metadata"] = {"kernel_provisioner": {"provisioner_name": PROVISIONER_NAME}}
    (spec_dir / "provtrace-python3").mkdir(parents=True)
    (spec_dir / "provtrace-python3" / "kernel.json").write_text(json.dumps(spec))
    return KernelManager(kernel_name="provtrace-python3",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]))


@contextlib.contextmanager
def _kernel(km: KernelManager, cwd, env: dict):
    km.start_kernel(cwd=str(cwd), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)



@pytest.mark.privileged
def test_provisioner_registers_the_kernel_with_its_notebook_path(daemon, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    notebook = work / "analysis.ipynb"
    km = _provisioned_manager(tmp_path / "kernels")
    env = {**os.environ, "JPY_SESSION_NAME": str(notebook), "PROVTRACE_SOCKET": daemon["socket"]}
    with _kernel(km, work, env) as kc:
        prov = km.provisioner
        assert isinstance(prov, ProvtraceProvisioner)
        assert prov.session_id and prov.registered_pid == prov.pid
        with ProvtraceClient(daemon["socket"]) as client:
            (run,) = [r for r in client.list_runs("session") if r.id == prov.session_id]
        assert run.kernel.pid == prov.pid and run.kernel.notebook_path == str(notebook)
        assert run.kernel.connection_file == km.connection_file
        assert (run.kernel.kernel_name, run.kernel.language) == ("provtrace-python3", "python")
        # the stored session carries the path: the registration came before discovery saw the kernel
        stored = _doc(daemon["db"], prov.session_id)["run"]
        assert stored["label"] == str(notebook) and stored["kind"] == "session"
        _until_followed(kc, daemon["db"], prov.session_id)
        reply = kc.execute_interactive("open('written.txt', 'w').write('x')", timeout=60)
        assert reply["content"]["status"] == "ok"
    doc = _ended(daemon["db"], prov.session_id)  # a kernel's file entries are written as its session ends
    (cell,) = [c for c in doc["cells"] if c.get("execution_count") == reply["content"]["execution_count"]]
    assert cell["writes"] == [f"{work}/written.txt"] and cell["status"] == "ok"


def test_provisioner_starts_kernels_when_no_daemon_answers(tmp_path, caplog):
    missing = str(tmp_path / "no-daemon" / "provtrace.sock")
    caplog.set_level(logging.WARNING, logger="provtrace.tracer.jupyter")
    for name in ("first", "second"):
        km = _provisioned_manager(tmp_path / f"kernels-{name}")
        env = {**os.environ, "PROVTRACE_SOCKET": missing, "JPY_SESSION_NAME": str(tmp_path / f"{name}.ipynb")}
        with _kernel(km, tmp_path, env) as kc:
            reply = kc.execute_interactive(f"open('{name}.txt', 'w').write('x')", timeout=60)
            assert reply["content"]["status"] == "ok"
            assert km.provisioner.session_id is None
        assert (tmp_path / f"{name}.txt").read_text() == "x"
    warnings = [r for r in caplog.records if UNREACHABLE_WARNING in r.getMessage()]
    assert len(warnings) == 1 and missing in warnings[0].getMessage()  # one warning, not one per kernel


@pytest.mark.privileged
def test_cell_reporter_delivers_starts_and_ends_in_order(daemon):
    """The extension's reporter on its own: a start and an end, queued without
    waiting, arrive in order and merge into one cell with the end's facts."""
    stand_in = subprocess.Popen(["sleep", "60"])  # a process of ours to register as a kernel
    reporter = CellReporter(daemon["socket"])
    try:
        kernel = KernelFacts(kernel_id="k-1", pid=stand_in.pid, kernel_name="stand-in")
        now = dt.datetime.now(dt.timezone.utc)
        reporter.report(kernel, CellStart(msg_id="m-1", cell_id="c-1", code_sha256="0" * 64,
                                          subshell_id=None, started=now))
        reporter.report(kernel, CellEnd(msg_id="m-1", cell_id="c-1", status="error", execution_count=7,
                                        error_name="Boom", ended=now + dt.timedelta(seconds=1)))
        assert reporter.flush(60) and (reporter.delivered, reporter.dropped) == (2, 0)
        with ProvtraceClient(daemon["socket"]) as client:
            (run,) = [r for r in client.list_runs("session") if r.kernel and r.kernel.pid == stand_in.pid]
            (cell,) = client.list_cells(run.id)
        assert (cell.msg_id, cell.cell_id, cell.status, cell.execution_count, cell.error_name) == \
            ("m-1", "c-1", "error", 7, "Boom")
        assert cell.code_sha256 == "0" * 64 and cell.sources == {"report"}
    finally:
        reporter.close()
        stand_in.kill()
        stand_in.wait()


# -- the server extension, in a real jupyter server --------------------------------


@contextlib.contextmanager
def _jupyter_server(root, socket_path: str):
    """`jupyter server` with the extension enabled and the provisioner the default."""
    token = uuid.uuid4().hex
    runtime = root / ".runtime"
    env = {**os.environ, "PROVTRACE_SOCKET": socket_path, "JUPYTER_RUNTIME_DIR": str(runtime),
           "JUPYTER_CONFIG_DIR": str(root / ".config")}
    log_path = root / ".server.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [JUPYTER, "server", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             "--ServerApp.port=0", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
             "--ServerApp.log_level=DEBUG",
             '--ServerApp.jpserver_extensions={"provtrace.tracer.jupyter": True}',
             f"--KernelProvisionerFactory.default_provisioner_name={PROVISIONER_NAME}"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(root))
    server = {"proc": proc, "token": token, "root": root, "log": log_path}
    try:
        info = _wait(lambda: _server_info(runtime, proc), 120, "jupyter server to start")
        server["url"] = f"http://127.0.0.1:{info['port']}"
        _wait(lambda: _status_ok(server), 60, "jupyter server to answer")
        yield server
        _api(server, "POST", "/api/shutdown")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def _server_info(runtime, proc) -> dict | None:
    assert proc.poll() is None, "jupyter server exited"
    for path in glob.glob(str(runtime / "jpserver-*.json")):
        with open(path) as f:
            info = json.load(f)
        if info.get("port"):
            return info
    return None


def _api(server: dict, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(server["url"] + path, data=data, method=method,
                                 headers={"Authorization": f"token {server['token']}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read()
    return json.loads(text) if text else {}


def _status_ok(server: dict) -> bool:
    try:
        return "started" in _api(server, "GET", "/api/status")
    except OSError:
        return False


def _open_session(server: dict, name: str) -> dict:
    """Creates a notebook and a session for it over REST; returns the session's model."""
    nbformat.write(nbformat.v4.new_notebook(), str(server["root"] / name))
    return _api(server, "POST", "/api/sessions",
                {"path": name, "name": name, "type": "notebook", "kernel": {"name": "python3"}})


def _execute_request(code: str, cell_id: str) -> dict:
    header = {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "session": uuid.uuid4().hex,
              "username": "test", "date": "2026-01-01T00:00:00.000000Z", "version": "5.3"}
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
               "allow_stdin": False, "stop_on_error": True}
    return {"header": header, "parent_header": {}, "metadata": {"cellId": cell_id}, "content": content,
            "buffers": [], "channel": "shell"}


def _pack(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def _decode(raw, protocol: str) -> dict:
    if protocol == "v1":
        channel, parts = deserialize_msg_from_ws_v1(raw)
        return {"channel": channel, "header": json.loads(parts[0]), "parent_header": json.loads(parts[1]),
                "content": json.loads(parts[3])}
    return json.loads(raw)


async def _connect(server: dict, kernel_id: str, protocol: str):
    url = f"{server['url'].replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {server['token']}"}),
                                 subprotocols=[V1] if protocol == "v1" else None)
    assert ws.selected_subprotocol == (V1 if protocol == "v1" else None)
    return ws


async def _execute(ws, protocol: str, code: str, cell_id: str) -> tuple[str, dict]:
    """Sends one execute_request with metadata.cellId; returns (its msg_id, the execute_reply content)."""
    msg = _execute_request(code, cell_id)
    if protocol == "v1":
        await ws.write_message(serialize_msg_to_ws_v1(msg, "shell", _pack), binary=True)
    else:
        await ws.write_message(json.dumps(msg))
    while True:
        raw = await asyncio.wait_for(ws.read_message(), 60)
        assert raw is not None, "the server closed the kernel websocket"
        reply = _decode(raw, protocol)
        if (reply["channel"] == "shell" and reply["header"]["msg_type"] == "execute_reply"
                and reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]):
            return msg["header"]["msg_id"], reply["content"]


async def _run_cells(server: dict, kernel_id: str, protocol: str, cells: list[tuple[str, str]],
                     until_merged: tuple[str, str] | None = None) -> list[tuple[str, dict]]:
    """Runs (code, cellId) pairs over one kernel websocket. With until_merged
    (socket, session id), no-op cells run first until the daemon holds one
    record made of both the extension's reports and its own IOPub view (the
    daemon's IOPub subscriber misses what ran before it joined)."""
    ws = await _connect(server, kernel_id, protocol)
    try:
        if until_merged is not None:
            await _until_merged(ws, protocol, *until_merged)
        return [await _execute(ws, protocol, code, cell_id) for code, cell_id in cells]
    finally:
        ws.close()


async def _until_merged(ws, protocol: str, socket_path: str, session_id: str) -> None:
    deadline = time.monotonic() + 60
    with ProvtraceClient(socket_path) as client:
        while time.monotonic() < deadline:
            await _execute(ws, protocol, "1", str(uuid.uuid4()))
            await asyncio.sleep(0.7)
            if any(c.ended and c.cell_id and {"iopub", "report"} <= c.sources
                   for c in client.list_cells(session_id)):
                return
    raise AssertionError("the daemon never merged a reported cell with its IOPub view")


@pytest.fixture(scope="module")
def server(daemon, tmp_path_factory):
    with _jupyter_server(tmp_path_factory.mktemp("jupyter-root"), daemon["socket"]) as s:
        yield s


def _session_for(daemon: dict, notebook: str) -> str:
    with ProvtraceClient(daemon["socket"]) as client:
        return [r.id for r in client.list_runs("session")
                if r.kernel is not None and r.kernel.notebook_path == notebook][0]


@pytest.mark.privileged
@pytest.mark.parametrize("protocol", ["legacy", "v1"])
def test_server_extension_reports_cells_with_their_cell_ids(daemon, server, protocol):
    session = _open_session(server, f"nb-{protocol}.ipynb")
    notebook = str(server["root"] / f"nb-{protocol}.ipynb")
    write_cell, fail_cell = str(uuid.uuid4()), str(uuid.uuid4())
    out = server["root"] / f"out-{protocol}.txt"
    session_id = _session_for(daemon, notebook)  # registered by the provisioner at launch
    replies = asyncio.run(_run_cells(server, session["kernel"]["id"], protocol, [
        (f"open({str(out)!r}, 'w').write('x')", write_cell),
        ("1/0", fail_cell)], until_merged=(daemon["socket"], session_id)))
    assert [r["status"] for _, r in replies] == ["ok", "error"]
    (write_msg, write_reply), (fail_msg, _) = replies
    with ProvtraceClient(daemon["socket"]) as client:  # live: one record per execution, sources merged
        live = _wait(lambda: [c for c in client.list_cells(session_id) if c.msg_id == write_msg and c.ended],
                     60, "the daemon to record the cell")
    assert len(live) == 1 and live[0].cell_id == write_cell and "report" in live[0].sources
    # the ends came from the execute_replies too, not only from the daemon's IOPub view
    _wait(lambda: all(f"kind=end session={session_id} msg_id={m} cell_id={c} status={st}"
                      in server["log"].read_text()
                      for m, c, st in ((write_msg, write_cell, "ok"), (fail_msg, fail_cell, "error"))),
          30, "the extension to report both cell ends")
    _api(server, "DELETE", f"/api/sessions/{session['id']}")  # shuts the kernel down
    doc = _ended(daemon["db"], session_id)
    assert doc["run"]["label"] == notebook  # registered by the provisioner at launch, path known
    (written,) = [c for c in doc["cells"] if c["msg_id"] == write_msg]
    (failed,) = [c for c in doc["cells"] if c["msg_id"] == fail_msg]
    assert written["cell_id"] == write_cell and written["status"] == "ok"
    assert written["writes"] == [str(out)]
    assert written["execution_count"] == write_reply["execution_count"]
    assert {"iopub", "report"} <= set(written["sources"])  # the extension's reports and IOPub: one record
    assert failed["cell_id"] == fail_cell and failed["status"] == "error"
    assert failed["error_name"] == "ZeroDivisionError" and failed["writes"] == []


def test_server_extension_passes_messages_when_no_daemon_answers(tmp_path):
    missing = str(tmp_path / "no-daemon" / "provtrace.sock")
    root = tmp_path / "root"
    root.mkdir()
    with _jupyter_server(root, missing) as srv:
        kernel_id = _open_session(srv, "nb.ipynb")["kernel"]["id"]
        replies = asyncio.run(_run_cells(srv, kernel_id, "legacy", [
            (f"open({str(root / 'a.txt')!r}, 'w').write('x')", str(uuid.uuid4())),
            ("1/0", str(uuid.uuid4()))]))
        assert [r["status"] for _, r in replies] == ["ok", "error"]
        assert (root / "a.txt").read_text() == "x"
    log_text = srv["log"].read_text()
    assert "reporting notebook cells to the daemon at " + missing in log_text  # the extension was loaded
    assert log_text.count(UNREACHABLE_WARNING) == 1, log_text
