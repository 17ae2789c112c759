"""IOPub alone windows the cells of real kernels that nobody registered over gRPC.

Kernels are started with plain jupyter_client (as JupyterLab, VS Code or
jupyter console would), then watched from their connection files.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from provtrace.tracer.correlate.connection import parse_connection_file
from provtrace.tracer.correlate.iopub import IOPubError, IOPubWatcher
from provtrace.tracer.correlate.kernels import KernelDiscovery

CELLS = {
    "python3": [
        "open('out.txt', 'w').write('hello')",
        "import subprocess; subprocess.run(['sh', '-c', 'echo child > child.txt'], check=True)",
        "raise ValueError('boom')",
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.close()",
    ],
    "ir": [
        "writeLines('hello', 'out.txt')",
        "system('echo child > child.txt')",
        "stop('boom')",
        "s <- serverSocket(0L)\nclose(s)",
    ],
}
EXPECTED_STATUS = ["ok", "ok", "error", "ok"]


def _have(name: str) -> bool:
    return name in KernelSpecManager().find_kernel_specs()


@pytest.fixture(params=["python3", "ir"])
def kernel(request, tmp_path):
    if not _have(request.param):
        pytest.skip(f"kernelspec {request.param} not installed")
    km = KernelManager(kernel_name=request.param)
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield request.param, km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _watch(km: KernelManager) -> IOPubWatcher:
    watcher = IOPubWatcher(parse_connection_file(km.connection_file), km.provisioner.process.pid)
    watcher.start(ready_timeout_s=60)
    return watcher


def _closed(n: int):
    return lambda windows: sum(1 for w in windows if w.end_ns is not None) >= n


def test_iopub_alone_windows_every_cell(kernel, tmp_path):
    name, km, kc = kernel
    watcher = _watch(km)
    try:
        for code in CELLS[name]:
            kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
        assert watcher.wait_for(_closed(4), timeout_s=60)
        windows = watcher.windows()
    finally:
        watcher.stop()
    assert len(windows) == 4
    assert [w.execution_count for w in windows] == [1, 2, 3, 4]
    assert [w.status for w in windows] == EXPECTED_STATUS
    for w, code in zip(windows, CELLS[name]):
        assert w.kernel_pid == km.provisioner.process.pid
        assert w.code_sha256 == hashlib.sha256(code.encode()).hexdigest()
        assert w.start_ns <= w.end_ns and not w.partial
    assert windows[2].error_name
    for a, b in zip(windows, windows[1:]):
        assert a.end_ns <= b.start_ns  # one shell, one window at a time
    assert (tmp_path / "out.txt").exists() and (tmp_path / "child.txt").exists()


def test_watcher_that_joins_late_sees_only_later_cells(kernel):
    name, km, kc = kernel
    kc.execute_interactive(CELLS[name][0], timeout=60, output_hook=lambda msg: None)
    watcher = _watch(km)
    try:
        kc.execute_interactive(CELLS[name][0], timeout=60, output_hook=lambda msg: None)
        assert watcher.wait_for(_closed(1), timeout_s=60)
        [window] = watcher.windows()
    finally:
        watcher.stop()
    assert window.execution_count == 2 and window.status == "ok"


def test_kernel_killed_mid_cell_closes_the_window(kernel):
    name, km, kc = kernel
    watcher = _watch(km)
    try:
        kc.execute("Sys.sleep(120)" if name == "ir" else "import time; time.sleep(120)")
        assert watcher.wait_for(lambda ws: any(w.execution_count for w in ws), timeout_s=60)
        km.provisioner.process.kill()
        assert watcher.wait_for(_closed(1), timeout_s=60)
        [window] = watcher.windows()
    finally:
        watcher.stop()
    assert watcher.died and (window.status, window.end_reason) == ("error", "died")


def test_wrong_key_is_a_clear_error(kernel, tmp_path):
    _, km, _ = kernel
    data = json.loads(open(km.connection_file).read())
    data["key"] = "not-the-key"
    bad = tmp_path / "kernel-bad.json"
    bad.write_text(json.dumps(data))
    watcher = IOPubWatcher(parse_connection_file(bad), km.provisioner.process.pid)
    with pytest.raises(IOPubError, match="wrong key"):
        watcher.start(ready_timeout_s=3)


def test_discovery_finds_the_kernel_by_cmdline_and_ports(kernel):
    name, km, _ = kernel
    found = KernelDiscovery(dirs=[os.path.dirname(km.connection_file)]).scan()
    kernel_info = found.by_pid(km.provisioner.process.pid)
    assert kernel_info is not None, found
    assert kernel_info.language == ("R" if name == "ir" else "python")
    assert set(kernel_info.found_by) == {"cmdline", "ports"}
    assert os.path.samefile(kernel_info.connection_file, km.connection_file)
    assert kernel_info.uid == os.getuid()


def test_ipykernel_subshells_give_concurrent_windows(tmp_path):
    """ipykernel 7 subshells: two executions of one kernel overlap in time."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
        reply = kc.control_channel.get_msg(timeout=30)
        if reply["content"].get("status") != "ok":
            pytest.skip(f"this ipykernel has no subshells: {reply['content']}")
        subshell = reply["content"]["subshell_id"]
        watcher = _watch(km)
        try:
            kc.execute("open('main.txt', 'w').close()\nwhile True:\n    import os, time\n"
                       "    if os.path.exists('sub.txt'): break\n    time.sleep(0.01)")
            assert watcher.wait_for(lambda ws: any(w.execution_count for w in ws), timeout_s=60)
            request = kc.session.msg("execute_request", {
                "code": "open('sub.txt', 'w').close()", "silent": False, "store_history": True,
                "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
            request["header"]["subshell_id"] = subshell
            kc.shell_channel.send(request)
            assert watcher.wait_for(_closed(2), timeout_s=60)
            main, sub = sorted(watcher.windows(), key=lambda w: w.subshell_id is not None)
        finally:
            watcher.stop()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert main.subshell_id is None and sub.subshell_id == subshell
    # the main cell waited for the subshell's cell: the subshell window lies inside it
    assert main.start_ns <= sub.start_ns and sub.end_ns <= main.end_ns
    assert (main.status, sub.status) == ("ok", "ok")


def test_follower_feeds_an_unregistered_kernel_into_the_api(tmp_path):
    """Plain jupyter_client kernel -> discovery -> IOPub -> store -> gRPC, no registration."""
    from provtrace.tracer.serve.client import ProvtraceClient
    from provtrace.tracer.daemon.ingest import StoreSink
    from provtrace.tracer.daemon.memory import InMemoryStore
    from provtrace.tracer.serve.server import ApiServer
    from provtrace.tracer.correlate.follower import KernelFollower

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    km = KernelManager(kernel_name="python3")
    km.connection_file = str(runtime / "kernel-follow.json")
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    store = InMemoryStore()
    follower = KernelFollower(StoreSink(store), dirs=[runtime], ready_timeout_s=60)
    try:
        kc.wait_for_ready(timeout=60)
        follower.scan_once()
        pid = km.provisioner.process.pid
        session = follower.sessions[pid]
        for code in ("x = 1", "1/0"):
            kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
        with ApiServer(store, str(tmp_path / "api" / "provtrace.sock")) as server:
            with ProvtraceClient(server.socket_path) as client:
                cells = []
                for _ in range(600):  # the watcher thread may lag the kernel's reply a little
                    cells = client.list_cells(session)
                    if len(cells) == 2 and all(c.ended for c in cells):
                        break
                    threading.Event().wait(0.05)
                # other kernels on the host (found by their command lines) may be followed too
                [run] = [r for r in client.list_runs(kind="session") if r.id == session]
        assert run.kernel.pid == pid and run.kernel.language == "python"
        assert [(c.execution_count, c.status, c.sources) for c in cells] == [
            (1, "ok", frozenset({"iopub"})), (2, "error", frozenset({"iopub"}))]
        assert cells[1].error_name == "ZeroDivisionError"
        km.provisioner.process.kill()
        km.provisioner.process.wait()
        follower.scan_once()
        assert pid not in follower.sessions and store.get_run(session, None).ended is not None
    finally:
        follower.close()
        kc.stop_channels()
        km.shutdown_kernel(now=True)
