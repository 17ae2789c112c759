"""One user's queries cannot starve the daemon (issue 12: RPC starvation).

A real daemon, a real non-root user (provtrace-test) with a run big enough
that `stale` takes real work, and that user firing 64 concurrent Stale calls
over raw gRPC without pause, as a hostile user would. Meanwhile root's
`provtrace run --socket` and `provtrace runs --socket` must still complete.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from provtrace.tracer.serve.client import ProvtraceClient

from .helpers import PROVTRACE, pt, running_daemon

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

N_FILES = 3000  # files the user's run writes and reads: each Stale compares them all
FLOOD_THREADS = 64

# Run as the user: FLOOD_THREADS threads share one channel and each calls
# Stale back to back, without the client's retry, for `seconds`; then prints
# how the calls were answered.
_FLOOD = r"""
import json, sys, threading, time
import grpc
from provtrace.tracer.serve.gen import service_pb2 as svc, service_pb2_grpc as svc_grpc
sock, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stub = svc_grpc.ProvtraceStub(grpc.insecure_channel(f"unix:{sock}"))
codes, lock = {}, threading.Lock()
stop = time.monotonic() + seconds
def fire():
    while time.monotonic() < stop:
        try:
            stub.Stale(svc.StaleRequest(), timeout=600)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        with lock:
            codes[code] = codes.get(code, 0) + 1
threads = [threading.Thread(target=fire) for _ in range(n)]
for t in threads:
    t.start()
print("firing", flush=True)
for t in threads:
    t.join()
print(json.dumps(codes), flush=True)
"""

_MAKE_FILES = f"""
import os
os.makedirs("data", exist_ok=True)
for i in range({N_FILES}):
    with open(f"data/f{{i}}.txt", "w") as f:
        f.write(str(i) * 100)
for i in range({N_FILES}):
    with open(f"data/f{{i}}.txt") as f:
        f.read()
"""


def _promptly(*args: str) -> subprocess.CompletedProcess:
    """The real CLI as root; a generous bound, not a timing assertion: starved, it waited minutes."""
    return subprocess.run([PROVTRACE, *args], capture_output=True, text=True, timeout=30)


def _as(user) -> dict:
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}}


@pytest.fixture
def work(test_user):
    d = tempfile.mkdtemp(prefix="provtrace-shares-", dir="/tmp")
    os.chown(d, test_user.pw_uid, test_user.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_stale_flood_does_not_starve_root(test_user, work):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with running_daemon() as d:
        sock = d["socket"]
        made = pt("run", "--socket", sock, "--", sys.executable, "-c", _MAKE_FILES, cwd=work, **_as(test_user))
        assert made.returncode == 0, made.stderr
        t0 = time.monotonic()
        with ProvtraceClient(sock) as c:
            assert c.stale()["fresh"]  # root sees the user's run: the store has work in it
        one_stale_s = time.monotonic() - t0

        flood = subprocess.Popen([sys.executable, "-c", _FLOOD, sock, str(FLOOD_THREADS), "20"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **_as(test_user))
        try:
            assert flood.stdout.readline().strip() == "firing", flood.stderr.read()
            time.sleep(2)  # the flood is at full pressure
            out = os.path.join(work, "root.json")
            run = _promptly("run", "--socket", sock, "--json-out", out, "--", "true")
            assert run.returncode == 0 and run.stderr == "", run.stderr  # through the daemon, no fallback
            with open(out) as f:
                run_id = json.load(f)["run"]["id"]
            runs = _promptly("runs", "--socket", sock, "--json")
            assert runs.returncode == 0, runs.stderr
            assert run_id in {r["id"] for r in json.loads(runs.stdout)}
        finally:
            codes = json.loads(flood.communicate(timeout=120)[0].splitlines()[-1])
        # the user got answers, and was refused at once when over its share
        assert codes.get("OK", 0) > 0 and codes.get("RESOURCE_EXHAUSTED", 0) > 0, codes
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, codes  # UNAVAILABLE: streams over the per-connection cap
        print(f"one stale {one_stale_s:.2f}s; flood answers {codes}")


def test_stale_is_cached_until_the_store_or_a_file_changes(test_user, work):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with running_daemon() as d:
        sock = d["socket"]
        made = pt("run", "--socket", sock, "--", sys.executable, "-c", _MAKE_FILES, cwd=work, **_as(test_user))
        assert made.returncode == 0, made.stderr
        code = ("import json, sys, time\n"
                "from provtrace.tracer.serve.client import ProvtraceClient\n"
                "c = ProvtraceClient(sys.argv[1])\n"
                "t = []\n"
                "for _ in range(3):\n"
                "    t0 = time.monotonic(); r = c.stale(); t.append(time.monotonic() - t0)\n"
                "print(json.dumps({'times': t, 'stale': len(r['stale'])}))\n")
        first = subprocess.run([sys.executable, "-c", code, sock], capture_output=True, text=True,
                               timeout=120, **_as(test_user))
        got = json.loads(first.stdout)
        assert got["stale"] == 0
        assert max(got["times"][1:]) < got["times"][0], got  # the repeats are served from the cache
        with open(os.path.join(work, "data", "f7.txt"), "a") as f:
            f.write("changed outside any trace")
        again = subprocess.run([sys.executable, "-c", code, sock], capture_output=True, text=True,
                               timeout=120, **_as(test_user))
        assert json.loads(again.stdout)["stale"] == 1  # a file it compared changed: computed afresh


@pytest.mark.parametrize("daemon_state", ["absent", "silent"])
def test_run_always_runs_the_command_when_the_daemon_cannot_take_it(tmp_path, daemon_state):
    """No daemon on the socket, or one that accepts and never answers: the
    command still runs, traced here (as root: the probes loaded by the client), with its
    exit code and one warning."""
    sock = str(tmp_path / "provtrace.sock")
    listener = None
    if daemon_state == "silent":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock)
        listener.listen(16)  # the kernel accepts; nothing ever answers
    try:
        db, out = str(tmp_path / "store.db"), tmp_path / "out.txt"
        r = subprocess.run([PROVTRACE, "run", "--socket", sock, "--db", db, "--",
                            "sh", "-c", f"echo ran > {out}; exit 3"],
                           capture_output=True, text=True, timeout=120)
    finally:
        if listener is not None:
            listener.close()
    assert r.returncode == 3 and out.read_text() == "ran\n", r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("provtrace: warning: "), r.stderr
    assert "loading the probes here instead" in r.stderr and "Traceback" not in r.stderr
    runs = json.loads(pt("runs", "--db", db, "--json", check=True).stdout)
    assert [(x["backend"], x["exit_code"]) for x in runs] == [("ebpf", 3)]
