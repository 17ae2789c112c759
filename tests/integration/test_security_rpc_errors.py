"""What the daemon tells a hostile user, and what it writes to its log (issue 12, small leaks).

A real daemon process and a real non-root user (provtrace-test): asking about
another user's run id answers exactly as for an id that does not exist, and
hundreds of malformed requests leave a few log lines, never tracebacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from .helpers import PROVTRACE, running_daemon

pytestmark = pytest.mark.privileged


def _as(user) -> dict:
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": "/tmp",
            "env": {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}}


def _cli(*args, user=None) -> subprocess.CompletedProcess:
    return subprocess.run([PROVTRACE, *args], capture_output=True, text=True, timeout=120,
                          **(_as(user) if user else {}))


def test_another_users_run_id_is_not_confirmed(daemon, test_user):
    sock = ("--socket", daemon["socket"])
    made = _cli("run", *sock, "--json-out", "/tmp/provtrace-leak-root.json", "--", "true")
    assert made.returncode == 0, made.stderr
    with open("/tmp/provtrace-leak-root.json") as f:
        root_run = json.load(f)["run"]["id"]
    os.unlink("/tmp/provtrace-leak-root.json")
    for verb in (("show",), ("export", "--format", "json", "-o", "-"), ("stale",)):
        for ref in (root_run, root_run[:8]):  # the id, and a prefix that matches only root's run
            theirs = _cli(*verb, ref, *sock, user=test_user)
            absent = _cli(*verb, "zz" + ref[2:], *sock, user=test_user)
            assert theirs.returncode == absent.returncode != 0, (verb, theirs.stderr)
            assert theirs.stderr.replace(ref, "ID") == absent.stderr.replace("zz" + ref[2:], "ID"), verb
            assert "uid" not in theirs.stderr and "belongs" not in theirs.stderr


# As the user: `n` calls of each method with bytes that are not its request
# message, then `n` well-formed calls that the daemon refuses. grpc's server
# leaves a call it could not decode open on its connection, so a connection
# takes 8 bad calls (of its 16) and is then replaced.
_MALFORMED = r"""
import sys, grpc
from provtrace.tracer.serve.gen import service_pb2 as svc, service_pb2_grpc as svc_grpc
sock, n = sys.argv[1], int(sys.argv[2])
codes = {}
def count(e):
    codes[e.code().name] = codes.get(e.code().name, 0) + 1
for method in ("Stale", "ListCells", "TraceCommand", "ReportCellStart"):
    for i in range(n):
        if i % 8 == 0:
            channel = grpc.insecure_channel(f"unix:{sock}", options=[("grpc.use_local_subchannel_pool", 1)])
            call = channel.unary_unary(f"/provtrace.v1.Provtrace/{method}")  # raw bytes in and out
        try:
            call(b"\xff\xff\xff\x0f" + bytes([i % 256]) * 7, timeout=30)
        except grpc.RpcError as e:
            count(e)
        if i % 8 == 7:
            channel.close()
stub = svc_grpc.ProvtraceStub(grpc.insecure_channel(f"unix:{sock}"))
for i in range(n):
    try:
        stub.ListCells(svc.ListCellsRequest(session_id=f"nope-{i}"), timeout=30)
    except grpc.RpcError as e:
        count(e)
print(codes)
"""


def test_malformed_requests_leave_a_few_log_lines(test_user):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with running_daemon() as d:
        lines: list[str] = []
        drain = threading.Thread(target=lambda: lines.extend(d["proc"].stderr), daemon=True)
        drain.start()  # a daemon that logs a flood must not block on a full pipe
        r = subprocess.run([sys.executable, "-c", _MALFORMED, d["socket"], "130"],
                           capture_output=True, text=True, timeout=300, **_as(test_user))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "{'INTERNAL': 520, 'NOT_FOUND': 130}"  # 650 requests, all answered
        health = _cli("runs", "--socket", d["socket"], user=test_user)
        assert health.returncode == 0, health.stderr  # still serving
    drain.join(timeout=30)
    text = "".join(lines)
    assert "Traceback" not in text, text[:3000]
    assert len(lines) <= 10, text[:3000]  # was 3,884 lines for ~650 requests
    assert any("deserializing" in line and "suppressed_since_last" in line for line in lines), text
