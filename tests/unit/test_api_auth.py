"""Authorization by SO_PEERCRED with a real non-root user (needs root to set up).

A user `provtrace-test` is created when missing; a subprocess runs as that
user (Popen(user=...)) and talks to a daemon run by root in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from provtrace.tracer.serve.client import ProvtraceClient
from provtrace.tracer.serve.events import EventHub
from provtrace.tracer.daemon.memory import InMemoryStore
from provtrace.tracer.serve.server import ApiServer

USER = "provtrace-test"

pytestmark = pytest.mark.privileged


@pytest.fixture
def daemon(test_user):
    base = tempfile.mkdtemp(prefix="provtrace-auth-", dir="/tmp")
    os.chmod(base, 0o755)  # the user must reach the socket; auth is by peer creds
    hub = EventHub()
    store = InMemoryStore(hub)
    server = ApiServer(store, os.path.join(base, "provtrace.sock"), hub=hub)
    server.start()
    yield server, store
    server.stop()
    shutil.rmtree(base)


def _sleeper(user=None):
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], user=user)


def _as_user(test_user, code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], user=test_user.pw_uid, group=test_user.pw_gid,
        extra_groups=[], capture_output=True, text=True, timeout=120, cwd="/tmp",
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


PRELUDE = """
import json, os
from provtrace.tracer.serve.client import ProvtraceClient, ApiError, run_command
res = {}
def code_of(fn):
    try:
        fn()
        return "OK"
    except ApiError as e:
        return e.code.name
"""


def test_user_sees_and_changes_only_its_own(daemon, test_user):
    server, store = daemon
    root_kernel, user_kernel = _sleeper(), _sleeper(user=test_user.pw_uid)
    try:
        with ProvtraceClient(server.socket_path) as root:
            root_session = root.register_kernel(root_kernel.pid, kernel_name="python3").session_id
            root.report_cell_start(root_session, msg_id="root-m1")
        got = _as_user(test_user, PRELUDE + f"""
c = ProvtraceClient({server.socket_path!r})
res["uid"] = c.health().caller_uid
res["runs_before"] = [r.id for r in c.list_runs()]
res["register_root_kernel"] = code_of(lambda: c.register_kernel({root_kernel.pid}))
res["read_root_cells"] = code_of(lambda: c.list_cells({root_session!r}))
res["report_root_cell"] = code_of(lambda: c.report_cell_start({root_session!r}, msg_id="evil"))
res["export_root"] = code_of(lambda: c.export({root_session!r}))
res["context_root"] = code_of(lambda: c.context({root_session!r}))
def details(ref):
    try:
        c.context(ref)
    except ApiError as e:
        return e.details.replace(ref, "ID")
res["details_root"], res["details_none"] = details({root_session!r}), details("no-such-run")
k = c.register_kernel({user_kernel.pid}, kernel_name="ir")
res["own_session_uid"] = k.uid
c.report_cell_start(k.session_id, msg_id="m1", code="1+1")
res["own_cells"] = [x.msg_id for x in c.list_cells(k.session_id)]
res["runs_after"] = sorted(r.uid for r in c.list_runs())
res["trace_pid1"] = code_of(lambda: c.trace_command(1, ["true"], "/tmp", {{}}))
res["trace_not_child"] = code_of(lambda: c.trace_command({user_kernel.pid}, ["true"], "/tmp", {{}}))
r = run_command(["sh", "-c", "exit 5"], socket_path={server.socket_path!r})
res["run_exit"] = r.exit_code
res["run_id"] = r.run_id
print(json.dumps(res))
""")
    finally:
        for p in (root_kernel, user_kernel):
            p.kill()
            p.wait()
    uid = test_user.pw_uid
    assert got["uid"] == uid
    assert got["runs_before"] == []  # root's session is invisible
    assert got["register_root_kernel"] == "PERMISSION_DENIED"
    # another user's run is answered as if it did not exist: its id and owner are not confirmed
    assert got["read_root_cells"] == "NOT_FOUND"
    assert got["report_root_cell"] == "NOT_FOUND"
    assert got["export_root"] == "NOT_FOUND"
    assert got["context_root"] == "NOT_FOUND"
    assert got["details_root"] == got["details_none"] and "uid" not in got["details_root"]
    assert got["own_session_uid"] == uid and got["own_cells"] == ["m1"]
    assert got["runs_after"] == [uid]
    assert got["trace_pid1"] == "PERMISSION_DENIED"
    assert got["trace_not_child"] == "PERMISSION_DENIED"
    assert got["run_exit"] == 5
    run = store.get_run(got["run_id"], None)
    assert (run.uid, run.user, run.exit_code) == (uid, USER, 5)
    # root sees everything, and nothing the user tried landed in root's session
    with ProvtraceClient(server.socket_path) as root:
        assert {r.uid for r in root.list_runs()} == {0, uid}
        assert [c.msg_id for c in root.list_cells(root_session)] == ["root-m1"]


def test_user_stream_gets_only_its_own_events(daemon, test_user):
    server, store = daemon
    sub_code = PRELUDE + f"""
import sys
c = ProvtraceClient({server.socket_path!r})
s = c.stream_events()
print("ready", flush=True)
ev = next(s)
print(json.dumps({{"uid": ev.uid, "kind": ev.kind, "session": ev.session_id}}))
"""
    child = subprocess.Popen([sys.executable, "-c", sub_code], user=test_user.pw_uid, group=test_user.pw_gid,
                             extra_groups=[], stdout=subprocess.PIPE, text=True, cwd="/tmp")
    try:
        assert child.stdout.readline().strip() == "ready"
        import time
        deadline = time.monotonic() + 30
        while server.hub.subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        store.register_kernel(pid=1, pid_start_ns=0, uid=0, user="root", connection_file=None,
                              notebook_path=None, kernel_name=None, language=None, session_id="root-s")
        store.register_kernel(pid=2, pid_start_ns=0, uid=test_user.pw_uid, user=USER, connection_file=None,
                              notebook_path=None, kernel_name=None, language=None, session_id="user-s")
        line = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
    assert line == {"uid": test_user.pw_uid, "kind": "kernel", "session": "user-s"}
