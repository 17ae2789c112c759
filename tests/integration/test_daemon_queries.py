"""lineage, stale and diff asked of a live daemon (--socket) give what the same
verbs give on the daemon's store file, and a user's answers cover its own
runs only. Real daemon process, real probes, real socket, real non-root user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest


pytestmark = pytest.mark.privileged

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")



def _cli(*args, user=None, cwd=None, check=True):
    kw = {}
    if user is not None:
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
              "env": {"PATH": "/usr/bin:/bin", "HOME": cwd or "/tmp"}}
    r = subprocess.run([PROVTRACE, *args], capture_output=True, text=True, timeout=180, cwd=cwd, **kw)
    if check:
        assert r.returncode == 0, f"{args}: {r.stderr}"
    return r


def _run(daemon, work, script, user=None) -> str:
    out = os.path.join(work, f"r{len(os.listdir(work))}.json")
    _cli("run", "--socket", daemon["socket"], "--json-out", out, "--", "sh", "-c", script, user=user, cwd=work)
    with open(out) as f:
        return json.load(f)["run"]["id"]


def _json(*args, **kw):
    return json.loads(_cli(*args, "--json", **kw).stdout)


@pytest.fixture
def work():
    d = tempfile.mkdtemp(prefix="provtrace-q-", dir="/tmp")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_socket_answers_match_the_store(daemon, work):
    with open(f"{work}/in.txt", "w") as f:
        f.write("one\n")
    a = _run(daemon, work, "cat in.txt > mid.txt")
    b = _run(daemon, work, "tr a-z A-Z < mid.txt > out.txt")
    sock, db = ("--socket", daemon["socket"]), ("--db", daemon["db"])

    up = _json("lineage", f"{work}/out.txt", *sock)
    assert up == _json("lineage", f"{work}/out.txt", *db)
    runs = {n["run"] for n in up["nodes"] if n["kind"] == "process"}
    assert runs == {a, b} and up["found"] is True
    text = _cli("lineage", f"{work}/out.txt", *sock).stdout
    assert f"{work}/in.txt" in text and "written by" in text

    assert _json("stale", b, *sock)["stale"] == []
    with open(f"{work}/in.txt", "a") as f:
        f.write("two\n")
    for run in (a, b):
        assert _json("stale", run, *sock) == _json("stale", run, *db)
    first, second = _json("stale", a, *sock)["stale"], _json("stale", b, *sock)["stale"]
    assert [r["why"] for r in first[0]["reasons"]] == ["content changed"]
    assert second[0]["reasons"][0]["why"] == "upstream stale"

    assert _json("diff", a, b, *sock) == _json("diff", a, b, *db)
    assert "No differences" in _cli("diff", a, a, *sock).stdout


def test_a_user_gets_answers_about_its_own_runs_only(daemon, work, test_user):
    os.chown(work, test_user.pw_uid, test_user.pw_gid)
    root_run = _run(daemon, work, "echo root > root.txt")
    mine = _run(daemon, work, "cat root.txt > mine.txt", user=test_user)
    sock = ("--socket", daemon["socket"])

    stale = _json("stale", *sock, user=test_user, cwd=work)
    seen = {u["run"] for u in stale["stale"] + stale["fresh"]}
    assert mine in seen and root_run not in seen
    up = _json("lineage", f"{work}/mine.txt", *sock, user=test_user, cwd=work)
    assert {n.get("run") for n in up["nodes"] if n["kind"] == "process"} == {mine}

    # another user's run id is answered exactly as an id that does not exist
    denied = _cli("stale", root_run, *sock, user=test_user, cwd=work, check=False)
    absent = _cli("stale", "no-such-run", *sock, user=test_user, cwd=work, check=False)
    assert denied.returncode != 0 and "visible to you" in denied.stderr and "uid" not in denied.stderr
    assert denied.stderr.replace(root_run, "ID") == absent.stderr.replace("no-such-run", "ID")
    denied = _cli("diff", root_run, mine, *sock, user=test_user, cwd=work, check=False)
    assert denied.returncode != 0 and root_run in denied.stderr
    assert root_run in {u["run"] for u in _json("stale", *sock)["fresh"] + _json("stale", *sock)["stale"]}


def test_lost_counts_say_whose_they_are(daemon, tmp_path):
    """A daemon's loss counters are shared by the runs it traces at once; a standalone
    run's are its own. The record says which (issue 12: loss is daemon-wide)."""
    out = tmp_path / "d.json"
    _cli("run", "--socket", daemon["socket"], "--json-out", str(out), "--", "true")
    assert json.loads(out.read_text())["run"]["lost_scope"] == "daemon"
    out = tmp_path / "s.json"
    _cli("run", "--db", str(tmp_path / "s.db"), "--json-out", str(out), "--", "true")
    assert json.loads(out.read_text())["run"]["lost_scope"] == "run"
