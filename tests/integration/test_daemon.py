"""`provtrace daemon` as a real process: real probes, a real socket, real kernels
(ipykernel, IRkernel) started by plain jupyter_client and never registered,
and a real non-root user whose `provtrace run` the daemon traces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S

from .helpers import sessions as _sessions
from .helpers import stored_run as _doc
from .helpers import until_followed as _until_followed
from .helpers import wait_for as _wait

pytestmark = pytest.mark.privileged

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")
USER = "provtrace-test"




def _cli(*args, user=None, cwd=None):
    kw = {}
    if user is not None:
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
              "env": {"PATH": "/usr/bin:/bin", "HOME": cwd or "/tmp"}}
    return subprocess.run([PROVTRACE, *args], capture_output=True, text=True, timeout=180, cwd=cwd, **kw)


def test_root_run_through_the_daemon(daemon, tmp_path):
    (tmp_path / "in.txt").write_text("x\n")
    out = tmp_path / "r.json"
    r = _cli("run", "--socket", daemon["socket"], "--json-out", str(out), "--label", "via-daemon", "--",
             "sh", "-c", "cat in.txt > out.txt; exit 3", cwd=str(tmp_path))
    assert r.returncode == 3, r.stderr
    doc = json.loads(out.read_text())
    assert doc["run"]["kind"] == "command" and doc["run"]["label"] == "via-daemon"
    assert doc["run"]["exit_code"] == 3 and doc["run"]["complete"] is True
    files = {(f["path"], a) for f in doc["files"] for a in f["access"]}
    assert (f"{tmp_path}/in.txt", "read") in files and (f"{tmp_path}/out.txt", "write") in files


# What `provtrace run` through the daemon may load of provtrace: the client path
# and nothing else (start-up target 150 ms, docs/benchmarks.md). The store, the
# pipeline, bcc, context collection, the records dataclasses, protobuf's
# json_format...: each is a regression here, named by the assertion.
CLIENT_PATH = {"provtrace", "provtrace.tracer", "provtrace.tracer.cli", "provtrace.tracer.commands",
               "provtrace.tracer.output", "provtrace.tracer.errors", "provtrace.tracer.capture",
               "provtrace.tracer.capture.gate", "provtrace.tracer.capture.sigstate", "provtrace.tracer.context",
               "provtrace.tracer.context.redact", "provtrace.tracer.model", "provtrace.tracer.model.paths",
               "provtrace.tracer.model.status", "provtrace.tracer.serve", "provtrace.tracer.serve.auth",
               "provtrace.tracer.serve.client", "provtrace.tracer.serve.sockpath", "provtrace.tracer.serve.gen",
               "provtrace.tracer.serve.gen.service_pb2", "provtrace.tracer.serve.gen.service_pb2_grpc",
               "provtrace.tracer.serve.gen.types_pb2"}


def _loaded(code: str, tmp_path, name: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Runs code in a fresh interpreter; its exit, and the modules it had loaded at the end."""
    listing = tmp_path / f"{name}.modules"
    probe = (f"import sys\ntry:\n{textwrap.indent(code, '    ')}\nfinally:\n"
             f"    open({str(listing)!r}, 'w').write('\\n'.join(sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    return r, set(listing.read_text().split())


def test_run_through_the_daemon_loads_only_the_client_path(daemon, tmp_path):
    """No timing: which modules `provtrace run -- true` through the daemon loads,
    beyond what gRPC and the generated stubs load by themselves."""
    _, transport = _loaded("import grpc\nfrom provtrace.tracer.serve.gen import service_pb2_grpc", tmp_path,
                           "transport")
    r, loaded = _loaded("from provtrace.tracer import cli\n"
                        f"cli.main(['run', '--socket', {daemon['socket']!r}, '--', 'true'])", tmp_path, "run")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # through the daemon: no fallback warning
    extra = loaded - transport
    assert {m for m in extra if m.startswith("provtrace")} <= CLIENT_PATH, \
        sorted(m for m in extra if m.startswith("provtrace") and m not in CLIENT_PATH)
    known = {*sys.stdlib_module_names, *(m.split(".")[0] for m in transport)}  # grpc opens a channel: grpc._channel
    assert not {m for m in extra if m.split(".")[0] not in known}, \
        sorted(m for m in extra if m.split(".")[0] not in known)  # bcc, elftools, jinja2, textual...
    assert not {"sqlite3", "tempfile"} & extra  # no store opened; tempfile only for `demo`


def _run_ids(db: str) -> set[str]:
    if not os.path.exists(db):
        return set()
    store = S.Store(db, readonly=True)
    try:
        return {r["id"] for r in Q.list_runs(store)}
    finally:
        store.close()


def test_root_run_uses_the_daemon_on_the_default_socket(daemon, tmp_path):
    """As root, `provtrace run` with no --socket and no store named hands its
    command to whatever answers on the default socket ($PROVTRACE_SOCKET here),
    as a user's run does: the run is in the daemon's store, under uid 0."""
    out = tmp_path / "r.json"
    env = {**os.environ, "PROVTRACE_SOCKET": daemon["socket"]}
    env.pop("PROVTRACE_DB", None)
    r = subprocess.run([PROVTRACE, "run", "--json-out", str(out), "--", "sh", "-c", "echo x > out.txt; exit 4"],
                       capture_output=True, text=True, timeout=180, cwd=str(tmp_path), env=env)
    assert r.returncode == 4 and r.stderr == "", r.stderr
    run_id = json.loads(out.read_text())["run"]["id"]
    stored = _doc(daemon["db"], run_id)["run"]
    assert stored["uid"] == 0 and stored["exit_code"] == 4 and stored["backend"] == "ebpf"


@pytest.mark.parametrize("named", ["--db", "PROVTRACE_DB"])
def test_root_run_with_a_store_named_is_standalone_into_it(daemon, tmp_path, named):
    """A store file named (--db, or $PROVTRACE_DB) is where the run goes, daemon or not."""
    db, out = str(tmp_path / "own.db"), tmp_path / "r.json"
    env = {**os.environ, "PROVTRACE_SOCKET": daemon["socket"]}
    opts = ["--db", db] if named == "--db" else []
    if named == "PROVTRACE_DB":
        env["PROVTRACE_DB"] = db
    before = _run_ids(daemon["db"])
    r = subprocess.run([PROVTRACE, "run", *opts, "--json-out", str(out), "--", "true"],
                       capture_output=True, text=True, timeout=180, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(out.read_text())["run"]["id"]
    assert _run_ids(db) == {run_id} and run_id not in _run_ids(daemon["db"]) | before


def test_non_root_user_is_traced_by_the_daemon_and_stored_under_its_uid(daemon, test_user):
    work = tempfile.mkdtemp(prefix="provtrace-user-", dir="/tmp")
    os.chown(work, test_user.pw_uid, test_user.pw_gid)
    try:
        r = _cli("run", "--socket", daemon["socket"], "--json-out", f"{work}/r.json", "--",
                 "sh", "-c", "echo mine > mine.txt", user=test_user, cwd=work)
        assert r.returncode == 0, r.stderr
        doc = json.loads(open(f"{work}/r.json").read())
        assert doc["run"]["uid"] == test_user.pw_uid and doc["run"]["user"] == USER
        assert doc["run"]["backend"] == "ebpf"
        assert any(f["path"] == f"{work}/mine.txt" and "write" in f["access"] for f in doc["files"])
        assert all(p["uid"] == test_user.pw_uid for p in doc["processes"])
        stored = _doc(daemon["db"], doc["run"]["id"])  # the daemon's store has it, under that uid
        assert stored["run"]["uid"] == test_user.pw_uid
        missing = _cli("run", "--socket", daemon["socket"], "--", "no-such-command-xyz", user=test_user, cwd=work)
        assert missing.returncode == 127 and "command not found" in missing.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_user_sees_only_its_own_runs_through_the_daemon(daemon, test_user):
    code = textwrap.dedent(f"""
        import json
        from provtrace.tracer.serve.client import ProvtraceClient, ApiError
        with ProvtraceClient({daemon["socket"]!r}) as c:
            runs = c.list_runs()
            try:
                c.export("last", "json")
                last = "OK"
            except ApiError as e:
                last = e.code.name
        print(json.dumps({{"uids": sorted({{r.uid for r in runs}}), "n": len(runs), "last": last}}))
    """)
    # a root run exists (from the test above or made here), and one of the user's own
    _cli("run", "--socket", daemon["socket"], "--", "true")
    _cli("run", "--socket", daemon["socket"], "--", "true", user=test_user, cwd="/tmp")
    out = subprocess.run([sys.executable, "-c", code], user=test_user.pw_uid, group=test_user.pw_gid,
                         extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/tmp",
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["n"] >= 1 and seen["uids"] == [test_user.pw_uid]
    store = S.Store(daemon["db"], readonly=True)
    assert {r["uid"] for r in Q.list_runs(store)} >= {0, test_user.pw_uid}  # root's runs exist
    store.close()


def test_second_daemon_on_the_same_socket_fails_clearly(daemon):
    r = subprocess.run([PROVTRACE, "daemon", "--socket", daemon["socket"], "--db", daemon["db"] + ".2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert daemon["socket"] in r.stderr
    assert daemon["proc"].poll() is None  # the first one is still serving


CODE = {
    "python3": ["open('a.txt', 'w').write('x')",
                "import subprocess\nsubprocess.run(['sh', '-c', 'cat a.txt > b.txt'])",
                "1/0"],
    "ir": ["writeLines('x', 'a.txt')", "system('cat a.txt > b.txt')", "stop('no')"],
}




@pytest.mark.parametrize("kernel", ["python3", "ir"])
def test_unregistered_kernel_is_followed_through_iopub(daemon, kernel, tmp_path):
    if kernel not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"kernelspec {kernel!r} not installed (setup.sh installs it)")
    before = {r["id"] for r in _sessions(daemon["db"])}
    km = KernelManager(kernel_name=kernel)
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        pid = km.provisioner.process.pid
        session = _wait(lambda: [r for r in _sessions(daemon["db"]) if r["id"] not in before],
                        60, "the daemon to discover the kernel")[0]
        _until_followed(kc, daemon["db"], session["id"])
        for code in CODE[kernel]:
            kc.execute_interactive(code, timeout=60)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    doc = _wait(lambda: (lambda d: d if d["run"]["ended"] else None)(_doc(daemon["db"], session["id"])),
                60, "the session to end")
    assert doc["run"]["kind"] == "session" and doc["run"]["lost_events"] == 0
    cells = [c for c in doc["cells"] if c.get("execution_count")]
    assert [c["status"] for c in cells][-3:] == ["ok", "ok", "error"]
    write, child, fail = cells[-3:]
    assert write["writes"] == [f"{tmp_path}/a.txt"]
    assert child["reads"] == [f"{tmp_path}/a.txt"] and child["writes"] == [f"{tmp_path}/b.txt"]
    assert child["processes"] and fail["writes"] == []
    kernel_procs = [p for p in doc["processes"] if p["pid"] == pid]
    assert kernel_procs and kernel_procs[0]["cell"] is None


def test_kernel_killed_mid_cell_ends_the_session_and_its_cell(daemon, tmp_path):
    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("ipykernel not installed")
    before = {r["id"] for r in _sessions(daemon["db"])}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        session = _wait(lambda: [r for r in _sessions(daemon["db"]) if r["id"] not in before],
                        60, "the daemon to discover the kernel")[0]
        _until_followed(kc, daemon["db"], session["id"])
        kc.execute("open('partial.txt', 'w').write('1')\nimport time\ntime.sleep(60)")
        _wait(lambda: (tmp_path / "partial.txt").exists(), 30, "the cell to start writing")
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        doc = _wait(lambda: (lambda d: d if d["run"]["ended"] else None)(_doc(daemon["db"], session["id"])),
                    60, "the session to end")
    finally:
        kc.stop_channels()
        km.cleanup_resources()
    (cell,) = [c for c in doc["cells"] if c["writes"]]
    assert cell["status"] == "error" and cell["end_reason"] == "died"
    assert cell["writes"] == [f"{tmp_path}/partial.txt"]


def test_query_verbs_through_the_daemon(daemon, test_user, tmp_path):
    mine = _cli("run", "--socket", daemon["socket"], "--label", "user-run", "--", "true",
                user=test_user, cwd="/tmp")
    assert mine.returncode == 0, mine.stderr
    runs = _cli("runs", "--socket", daemon["socket"], "--json", user=test_user, cwd="/tmp")
    assert runs.returncode == 0, runs.stderr
    listed = json.loads(runs.stdout)
    assert listed and {r["uid"] for r in listed} == {test_user.pw_uid}
    shown = _cli("show", "last", "--socket", daemon["socket"], "--json", user=test_user, cwd="/tmp")
    doc = json.loads(shown.stdout)
    assert doc["schema"] == "provtrace.run/1" and doc["run"]["label"] == "user-run"
    out = tmp_path / "all.graphml"
    root_export = _cli("export", "--all", "--socket", daemon["socket"], "--format", "graphml", "-o", str(out))
    assert root_export.returncode == 0, root_export.stderr
    assert out.read_text().startswith("<?xml")
    other = _cli("show", listed[0]["id"] + "-nope", "--socket", daemon["socket"], user=test_user, cwd="/tmp")
    assert other.returncode != 0 and "Traceback" not in other.stderr


def test_registered_kernel_that_exits_unfollowed_ends_its_session(daemon):
    """A registered process the IOPub follower never found (here: no connection
    file at all) still has its session ended when it exits."""
    from provtrace.tracer.serve.client import ProvtraceClient

    proc = subprocess.Popen(["sleep", "600"])
    try:
        with ProvtraceClient(daemon["socket"]) as c:
            sid = c.register_kernel(proc.pid, kernel_name="stand-in").session_id
            assert not _session_ended(c, sid)
            proc.kill()
            proc.wait()
            _wait(lambda: _session_ended(c, sid), 60, "the session of an exited kernel to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _session_ended(client, sid: str) -> bool:
    run = next(r for r in client.list_runs("session") if r.id == sid)
    return run.ended is not None
