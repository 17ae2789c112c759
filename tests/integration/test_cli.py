"""The CLI as users run it: real processes, real probes, real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import pytest

from .helpers import pt

pytestmark = pytest.mark.privileged


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "cli.db")


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


def test_run_writes_contract_json_and_keeps_exit_code(tmp_path, db):
    require_root()
    out = tmp_path / "run.json"
    r = pt("run", "--db", db, "--json-out", str(out), "--label", "t1", "--",
           "sh", "-c", "echo x > made.txt; exit 5", cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "provtrace.run/1"
    run = doc["run"]
    for key in ("id", "kind", "backend", "argv", "cwd", "host", "user", "started", "ended",
                "exit_code", "lost_events", "complete"):
        assert key in run
    assert run["kind"] == "command" and run["backend"] == "ebpf" and run["exit_code"] == 5
    assert run["label"] == "t1"
    for key in ("processes", "files", "renames", "network", "cells", "context"):
        assert key in doc
    for p in doc["processes"]:
        assert {"pid", "ppid", "exe", "argv", "cwd", "uid", "started", "ended", "exit_code", "cell"} <= set(p)
    made = [f for f in doc["files"] if f["path"] == str(tmp_path / "made.txt")]
    assert made and set(made[0]["access"]) == {"create", "write"} and made[0]["kind"] == "data"
    for f in doc["files"]:
        assert {"path", "pid", "exe", "access", "bytes_read", "bytes_written", "kind", "cell"} <= set(f)
        assert f["path"].startswith("/")
    assert run["started"].endswith("Z") and "." in run["started"]

    runs = json.loads(pt("runs", "--db", db, "--json", check=True).stdout)
    assert [r_["id"] for r_ in runs] == [run["id"]]
    assert set(runs[0]) == {"id", "kind", "label", "backend", "user", "uid", "started", "ended",
                            "exit_code", "lost_events", "complete"}
    shown = json.loads(pt("show", "last", "--db", db, "--json", check=True).stdout)
    assert shown["run"]["id"] == run["id"]
    assert pt("show", run["id"][:12], "--db", db, check=True).stdout.startswith(f"run {run['id']}")


def test_lineage_text_and_json(tmp_path, db):
    require_root()
    (tmp_path / "in.csv").write_text("b\na\n")
    pt("run", "--db", db, "--", "sh", "-c", "sort in.csv > mid.csv", cwd=tmp_path, check=True)
    pt("run", "--db", db, "--", "sh", "-c", "head -1 mid.csv > out.csv", cwd=tmp_path, check=True)
    res = json.loads(pt("lineage", str(tmp_path / "out.csv"), "--db", db, "--json", check=True).stdout)
    files = {n["path"] for n in res["nodes"] if n["kind"] == "file"}
    assert {str(tmp_path / "mid.csv"), str(tmp_path / "in.csv")} <= files, "across runs"
    runs = {n["run"] for n in res["nodes"] if n["kind"] == "process"}
    assert len(runs) == 2
    down = json.loads(pt("lineage", "in.csv", "--downstream", "--db", db, "--json",
                         cwd=tmp_path, check=True).stdout)
    assert str(tmp_path / "out.csv") in {n.get("path") for n in down["nodes"]}
    text = pt("lineage", str(tmp_path / "out.csv"), "--db", db, check=True).stdout
    assert "written by" in text and "in.csv" in text
    shallow = json.loads(pt("lineage", str(tmp_path / "out.csv"), "--depth", "1", "--db", db,
                            "--json", check=True).stdout)
    assert str(tmp_path / "in.csv") not in {n.get("path") for n in shallow["nodes"]}


def test_verify_detects_tampering(tmp_path, db):
    require_root()
    pt("run", "--db", db, "--", "true", check=True)
    assert "chain intact" in pt("verify", "--db", db, check=True).stdout
    con = sqlite3.connect(db)
    seq = con.execute("SELECT seq FROM records WHERE kind=3 ORDER BY seq LIMIT 1").fetchone()[0]
    con.execute("UPDATE records SET body=replace(body, '0', '1') WHERE seq=?", (seq,))
    con.commit()
    con.close()
    r = pt("verify", "--db", db)
    assert r.returncode != 0
    assert f"record {seq}" in r.stderr and "Traceback" not in r.stderr


def test_errors_are_one_line(tmp_path, db):
    r = pt("run", "--db", db, "--", "no-such-command-xyz")
    assert r.returncode == 127
    assert r.stderr.strip().count("\n") == 0 and "no-such-command-xyz" in r.stderr
    r = pt("show", "nope", "--db", db)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    bad = tmp_path / "notadb.db"
    bad.write_text("this is not sqlite")
    r = pt("runs", "--db", str(bad))
    assert r.returncode != 0 and r.stderr.startswith("provtrace:") and "Traceback" not in r.stderr
    r = pt("runs", "--db", str(tmp_path / "missing.db"))
    assert r.returncode != 0 and "no store" in r.stderr
    r = pt("run", "--db", db)
    assert r.returncode == 2 and "no command" in r.stderr


def test_doctor_reports_backends():
    require_root()
    r = pt("doctor", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 0
    assert rep["usable_backends"] == ["ebpf", "ptrace"]
    names = {c["check"] for c in rep["checks"]}
    assert {"root", "bcc", "kernel headers", "BTF", "tracefs", "probes", "ptrace backend"} <= names
    # the Debian side of the set-up is recorded, with versions as dpkg knows them
    pkgs = rep["system"]["packages"]
    assert rep["system"]["os"].startswith("Debian GNU/Linux")
    for name in ("python3-bpfcc", "libbpfcc", "r-base-core", "r-cran-irkernel"):
        assert pkgs[name], f"{name} not reported"
    assert any(n.startswith("libllvm") and v for n, v in pkgs.items()), pkgs
    assert any(n.startswith("linux-headers-") and v for n, v in pkgs.items()), pkgs
    assert "apt packages:" in pt("doctor", "--no-load").stdout
