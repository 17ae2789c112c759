"""Fleet provenance on a real PostgreSQL 15 (issue 18): several hosts, each a
store of its own with its own host id, shipped to one central store.

Done when: a command on host A writes a shared file, a command on host B
reads it and writes an output, and `provtrace lineage OUTPUT --db
postgresql://...` goes back across both hosts to A's input. Then the fault
tests: after each, nothing committed is missing centrally, nothing is
duplicated, and every host's chain verifies (fleet_helpers.assert_central_matches).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psycopg
import pytest

from provtrace.tracer.fleet.ship import Shipper
from provtrace.tracer.fleet.migrate import latest

from .fleet_helpers import (Proxy, assert_central_matches, central_head, held_mid_batch, shipper_waiting,
                            synthetic_store)
from .helpers import PROVTRACE, pt, wait_for


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Two hosts' folders and a shared one, declared in [fleet] shared."""
    for d in ("a", "b", "shared"):
        (tmp_path / d).mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[fleet]\nshared = ["{tmp_path / "shared"}"]\n')
    monkeypatch.setenv("PROVTRACE_CONFIG", str(cfg))
    return tmp_path


def traced(site, db: str, script: str) -> None:
    r = pt("run", "--backend", "ptrace", "--db", db, "--", "sh", "-c", script, cwd=site)
    assert r.returncode == 0, r.stderr


def ship(db: str, url: str, host: str, *extra: str, check: bool = True):
    r = pt("ship", "--db", db, "--to", url, "--host-id", host, *extra)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_lineage_goes_back_across_hosts(site, fleet_db):
    (site / "a" / "in.csv").write_text("x,y\n")
    a_db, b_db = str(site / "A.db"), str(site / "B.db")
    traced(site, a_db, "tr a-z A-Z < a/in.csv > shared/mid.csv")   # host A
    traced(site, b_db, "sort shared/mid.csv > b/out.csv")          # host B
    ship(a_db, fleet_db, "host-a")
    ship(b_db, fleet_db, "host-b")

    r = pt("lineage", str(site / "b" / "out.csv"), "--db", fleet_db, "--host-id", "host-b", "--json", check=True)
    doc = json.loads(r.stdout)
    files = {n["path"]: n for n in doc["nodes"] if n["kind"] == "file"}
    procs = [n for n in doc["nodes"] if n["kind"] == "process"]
    mid = files[str(site / "shared" / "mid.csv")]
    assert mid["shared"] and sorted(mid["hosts"]) == ["host-a", "host-b"]
    assert files[str(site / "a" / "in.csv")]["host"] == "host-a"   # the original input, on A
    assert files[str(site / "b" / "out.csv")]["host"] == "host-b"
    assert {p["host"] for p in procs} == {"host-a", "host-b"}
    assert all(p["boot"] and p["started"] and p["pid"] for p in procs)  # (host, boot, pid, start)
    # a path of edges: A's input -> a process on A -> the shared file -> a process on B -> B's output
    edges = {(e["from"], e["to"]) for e in doc["edges"]}
    hosts = {p["id"]: p["host"] for p in procs}
    src, out = "file:" + files[str(site / "a" / "in.csv")]["key"], "file:" + files[str(site / "b" / "out.csv")]["key"]
    assert any((src, pa) in edges and (pa, "file:" + mid["key"]) in edges for pa in hosts if hosts[pa] == "host-a")
    assert any(("file:" + mid["key"], pb) in edges and (pb, out) in edges for pb in hosts if hosts[pb] == "host-b")

    text = pt("lineage", str(site / "b" / "out.csv"), "--db", fleet_db, "--host-id", "host-b", check=True).stdout
    assert "on host host-a" in text and str(site / "a" / "in.csv") in text
    # depth-bounded: one step back stops at the shared file
    one = json.loads(pt("lineage", str(site / "b" / "out.csv"), "--db", fleet_db, "--host-id", "host-b",
                        "--depth", "1", "--json", check=True).stdout)
    assert one["truncated"] and str(site / "a" / "in.csv") not in {n.get("path") for n in one["nodes"]}
    # downstream from A's input reaches B's output
    down = json.loads(pt("lineage", str(site / "a" / "in.csv"), "--db", fleet_db, "--host-id", "host-a",
                         "--downstream", "--json", check=True).stdout)
    assert str(site / "b" / "out.csv") in {n.get("path") for n in down["nodes"]}

    runs = json.loads(pt("runs", "--db", fleet_db, "--json", check=True).stdout)
    assert sorted(r["host_id"] for r in runs) == ["host-a", "host-b"]
    run_b = next(r["id"] for r in runs if r["host_id"] == "host-b")
    # time-bounded: at a moment before host B's run, out.csv had no writer yet
    before = next(r["started"] for r in runs if r["host_id"] == "host-a")
    then = json.loads(pt("lineage", str(site / "b" / "out.csv"), "--db", fleet_db, "--host-id", "host-b",
                         "--at", before, "--json", check=True).stdout)
    assert not [n for n in then["nodes"] if n["kind"] == "process"]
    shown = json.loads(pt("show", run_b, "--db", fleet_db, "--json", check=True).stdout)
    assert shown["run"]["host_id"] == "host-b"
    assert {f["host"] for f in shown["files"]} == {"host-b"}
    assert any(f["shared"] for f in shown["files"] if f["path"].endswith("mid.csv"))
    assert_central_matches(fleet_db, "host-a", a_db)
    assert_central_matches(fleet_db, "host-b", b_db)


def test_migrate_is_versioned_and_idempotent(fleet_db):
    r = pt("fleet", "migrate", fleet_db, check=True)
    assert "nothing to do" in r.stdout
    with psycopg.connect(fleet_db) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, latest() + 1))


def test_same_batch_twice(site, fleet_db):
    db = synthetic_store(str(site / "A.db"), 3000)
    ship(db, fleet_db, "host-a", "--batch", "700")
    again = ship(db, fleet_db, "host-a", "--resend-from", "1", "--batch", "700")
    assert " 0 new" in again.stdout and "0 losses" in again.stdout
    assert_central_matches(fleet_db, "host-a", db)


def test_shipper_killed_mid_batch(site, fleet_db):
    db = synthetic_store(str(site / "A.db"), 20000)
    first = Shipper(db, fleet_db, "host-a", batch=1000)
    first.ship(max_batches=3)  # some batches committed before the kill
    first.close()
    hold = held_mid_batch(fleet_db, "host-a")
    proc = subprocess.Popen([PROVTRACE, "ship", "--db", db, "--to", fleet_db, "--host-id", "host-a",
                             "--batch", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: shipper_waiting(fleet_db), 60, "the shipper to stage its next batch")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        hold.rollback()
        hold.close()
    assert central_head(fleet_db, "host-a") == 3000  # the killed batch left nothing
    ship(db, fleet_db, "host-a")
    assert_central_matches(fleet_db, "host-a", db)


def test_network_cut_mid_batch(site, pg, fleet_db):
    db = synthetic_store(str(site / "A.db"), 6000)
    first = Shipper(db, fleet_db, "host-a", batch=1000)
    first.ship(max_batches=1)
    first.close()
    proxy = Proxy(pg.port)
    via = fleet_db.replace(f":{pg.port}/", f":{proxy.port}/")
    hold = held_mid_batch(fleet_db, "host-a")
    proc = subprocess.Popen([PROVTRACE, "ship", "--db", db, "--to", via, "--host-id", "host-a",
                             "--batch", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: shipper_waiting(fleet_db), 60, "the shipper to stage its next batch")
        proxy.cut()
        _out, err = proc.communicate(timeout=120)
    finally:
        hold.rollback()
        hold.close()
    assert proc.returncode == 1
    assert err.startswith("provtrace: shipping to") and "nothing is lost" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err
    # the database is not reachable at all: one line, non-zero
    closed = ship(db, via, "host-a", check=False)
    assert closed.returncode != 0 and len(closed.stderr.splitlines()) == 1
    ship(db, fleet_db, "host-a")  # the network is back: it resumes
    assert_central_matches(fleet_db, "host-a", db)


def test_rewritten_history_and_gaps_are_recorded(site, fleet_db):
    a = synthetic_store(str(site / "A.db"), 50)
    other = synthetic_store(str(site / "other.db"), 80, start_us=1)  # another history, longer
    ship(a, fleet_db, "host-a")
    # the same host id now ships a store with a different history
    r = ship(other, fleet_db, "host-a", "--resend-from", "1")
    assert "losses noted" in r.stdout and " 0 losses" not in r.stdout
    status = pt("fleet", "status", fleet_db)
    assert status.returncode == 1
    assert "conflict" in status.stdout and "broken" in status.stdout
    # a gap: records never received
    gap = synthetic_store(str(site / "gap.db"), 30)
    first = Shipper(gap, fleet_db, "host-g", batch=10)
    first.ship(max_batches=1)
    first.close()
    ship(gap, fleet_db, "host-g", "--resend-from", "21")
    losses = json.loads(pt("fleet", "status", fleet_db, "--json").stdout)["losses"]
    assert {"host_id": "host-g", "from": 11, "to": 20, "reason": "gap"}.items() <= \
        next(x for x in losses if x["host_id"] == "host-g").items()


def _local_head(db: str) -> int:
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
    finally:
        conn.close()


@pytest.mark.privileged
def test_database_away_while_daemon_traces(pg, fleet_db, tmp_path):
    """daemon --ship: PostgreSQL stops while the host keeps tracing; when it is
    back the daemon's shipper catches up by itself."""
    if os.geteuid() != 0:
        pytest.skip("the daemon needs root for eBPF")
    from .helpers import running_daemon  # noqa: PLC0415

    work = tmp_path / "w"
    work.mkdir()
    with running_daemon(args=("--ship", fleet_db, "--host-id", "host-d", "--ship-every", "0.5")) as d:
        def run(i: int) -> None:
            r = pt("run", "--socket", d["socket"], "--", "sh", "-c", f"echo {i} > out{i}.txt", cwd=work)
            assert r.returncode == 0, r.stderr

        run(0)
        mark = _local_head(d["db"])
        wait_for(lambda: central_head(fleet_db, "host-d") >= mark, 120, "the daemon to ship the first run")
        pg.stop()
        try:
            for i in range(1, 4):  # tracing goes on while the database is away
                run(i)
            away = _local_head(d["db"])
            assert away > mark
        finally:
            pg.start()
        wait_for(lambda: central_head(fleet_db, "host-d") >= away, 120, "the shipper to catch up")
        d["proc"].send_signal(signal.SIGTERM)
        assert d["proc"].wait(timeout=120) == 0
        # what the daemon wrote as it stopped (sessions of kernels it followed) goes by one ship
        ship(d["db"], fleet_db, "host-d")
        assert_central_matches(fleet_db, "host-d", d["db"])
        runs = json.loads(pt("runs", "--db", fleet_db, "--json", check=True).stdout)
        assert len([r for r in runs if r["host_id"] == "host-d" and r["kind"] == "command"]) == 4


@pytest.fixture
def open_site(monkeypatch):
    """A site folder the `nobody` user can work in, with [fleet] shared declared."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    base = Path(tempfile.mkdtemp(prefix="provtrace-fleet-", dir="/tmp"))
    try:
        for d in ("a", "c", "shared"):
            (base / d).mkdir()
            os.chmod(base / d, 0o777)
        os.chmod(base, 0o755)
        cfg = base / "config.toml"
        cfg.write_text(f'[fleet]\nshared = ["{base / "shared"}"]\n')
        os.chmod(cfg, 0o644)
        monkeypatch.setenv("PROVTRACE_CONFIG", str(cfg))
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_analysts_see_only_their_runs(open_site, pg, fleet_db):
    """Row-level security: the central store refuses what the daemon would."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as nobody")
    site = open_site
    (site / "a" / "in.csv").write_text("x\n")
    a_db, c_db = str(site / "A.db"), str(site / "c" / "C.db")
    traced(site, a_db, "cat a/in.csv > shared/mid.csv && chmod 644 shared/mid.csv")   # root, host A
    r = subprocess.run(["runuser", "-u", "nobody", "--", PROVTRACE, "run", "--backend", "ptrace", "--db", c_db,
                        "--", "sh", "-c", "cat shared/mid.csv > c/out.txt"], cwd=site, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ship(a_db, fleet_db, "host-a")
    dbname = fleet_db.rsplit("/", 1)[1]
    pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='nobody') THEN "
            "CREATE ROLE nobody LOGIN IN ROLE provtrace_reader; END IF; "
            "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='alice') THEN "
            "CREATE ROLE alice LOGIN IN ROLE provtrace_reader; END IF; "
            "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='ship_c') THEN "
            "CREATE ROLE ship_c LOGIN IN ROLE provtrace_shipper; END IF; END $$", dbname)
    pg.psql("INSERT INTO user_map VALUES ('host-a', 0, 'alice')", dbname)
    # host C ships as its own shipper role, which may write but not read
    ship(c_db, pg.url(dbname, "ship_c"), "host-c")
    denied = pt("runs", "--db", pg.url(dbname, "ship_c"))
    assert denied.returncode != 0 and "permission denied" in denied.stderr and len(denied.stderr.splitlines()) == 1

    def runs(role: str) -> set[tuple[str, str]]:
        out = json.loads(pt("runs", "--db", pg.url(dbname, role), "--json", check=True).stdout)
        return {(x["host_id"], x["user"]) for x in out}

    assert runs("nobody") == {("host-c", "nobody")}
    assert runs("alice") == {("host-a", "root")}          # root's runs on host-a, mapped to alice
    assert runs("postgres") == {("host-c", "nobody"), ("host-a", "root")}  # the owner sees all (root)

    out = str(site / "c" / "out.txt")
    mine = json.loads(pt("lineage", out, "--db", pg.url(dbname, "nobody"), "--host-id", "host-c", "--json",
                         check=True).stdout)
    assert {n["host"] for n in mine["nodes"] if n["kind"] == "process"} == {"host-c"}
    assert str(site / "a" / "in.csv") not in {n.get("path") for n in mine["nodes"]}
    everything = json.loads(pt("lineage", out, "--db", fleet_db, "--host-id", "host-c", "--json",
                               check=True).stdout)
    assert str(site / "a" / "in.csv") in {n.get("path") for n in everything["nodes"]}
    seen = json.loads(pt("stale", "--db", pg.url(dbname, "nobody"), "--json", check=True).stdout)
    assert {(u["host_id"], u["cell"]) for u in seen["stale"] + seen["fresh"]} == {("host-c", None)}
    root_run = next(x["id"] for x in json.loads(pt("runs", "--db", fleet_db, "--json").stdout)
                    if x["host_id"] == "host-a")
    refused = pt("show", root_run, "--db", pg.url(dbname, "nobody"))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert_central_matches(fleet_db, "host-c", c_db)
    # a host bound to its shipping role: another role may not ship as it
    pg.psql("UPDATE hosts SET ship_role = 'ship_c' WHERE host_id = 'host-a'", dbname)
    other = ship(c_db, pg.url(dbname, "ship_c"), "host-c", "--resend-from", "1")
    assert other.returncode == 0
    taken = ship(a_db, fleet_db, "host-a", "--resend-from", "1", check=False)
    assert taken.returncode != 0 and "may not ship for host host-a" in taken.stderr


def test_fleet_errors_are_one_line(tmp_path):
    """No database listening, a verb that needs a store file, a bad URL: one line each, no traceback."""
    closed = "postgresql://nobody@127.0.0.1:1/none"
    for args in (("runs", "--db", closed), ("lineage", "/x", "--db", closed, "--host-id", "h"),
                 ("fleet", "migrate", closed), ("stale", "--db", closed), ("tui", "--db", closed),
                 ("fleet", "status", "not-a-url"),
                 ("ship", "--db", str(tmp_path / "none.db"), "--to", closed, "--host-id", "h")):
        r = pt(*args)
        assert r.returncode != 0, args
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (args, r.stderr)


@pytest.mark.privileged
def test_lineage_from_a_notebook_cell_on_another_host(site, fleet_db):
    """Host A: a notebook cell writes the shared file; host B: a command reads it."""
    from jupyter_client.kernelspec import KernelSpecManager  # noqa: PLC0415
    from nbformat import write  # noqa: PLC0415
    from nbformat.v4 import new_code_cell, new_notebook  # noqa: PLC0415

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("kernelspec python3 is not installed (setup.sh installs it)")
    (site / "a" / "in.csv").write_text("x,y\n")
    nb = new_notebook(cells=[new_code_cell("data = open('a/in.csv').read()"),
                             new_code_cell("open('shared/mid.csv', 'w').write(data.upper())")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    write(nb, str(site / "analysis.ipynb"))
    a_db, b_db = str(site / "A.db"), str(site / "B.db")
    r = pt("notebook", "run", str(site / "analysis.ipynb"), "--db", a_db, "--json-out", str(site / "nb.json"))
    assert r.returncode == 0, r.stderr
    cells = json.loads((site / "nb.json").read_text())["cells"]
    traced(site, b_db, "sort shared/mid.csv > b/out.csv")
    ship(a_db, fleet_db, "host-a")
    ship(b_db, fleet_db, "host-b")
    doc = json.loads(pt("lineage", str(site / "b" / "out.csv"), "--db", fleet_db, "--host-id", "host-b", "--json",
                        check=True).stdout)
    files = {n["path"]: n for n in doc["nodes"] if n["kind"] == "file"}
    assert files[str(site / "a" / "in.csv")]["host"] == "host-a"
    mid = "file:" + files[str(site / "shared" / "mid.csv")]["key"]
    wrote = [e for e in doc["edges"] if e["to"] == mid and e["rel"] == "wrote"]
    assert any(cells[1]["id"] in e["cells"] for e in wrote)  # the second cell wrote it, on host A
    assert_central_matches(fleet_db, "host-a", a_db)


def test_diff_and_export_over_the_fleet(site, fleet_db, tmp_path):
    (site / "a" / "in.csv").write_text("x\n")
    a_db, b_db = str(site / "A.db"), str(site / "B.db")
    traced(site, a_db, "cat a/in.csv > shared/mid.csv")
    traced(site, b_db, "cat shared/mid.csv > b/out.csv")
    ship(a_db, fleet_db, "host-a")
    ship(b_db, fleet_db, "host-b")
    runs = {r["host_id"]: r["id"] for r in json.loads(pt("runs", "--db", fleet_db, "--json", check=True).stdout)}
    d = json.loads(pt("diff", f"host-a:{runs['host-a']}", f"host-b:{runs['host-b']}", "--db", fleet_db, "--json",
                      check=True).stdout)
    assert str(site / "b" / "out.csv") in json.dumps(d["outputs"])
    out = tmp_path / "all.json"
    pt("export", "--all", "--format", "json", "-o", str(out), "--db", fleet_db, check=True)
    docs = json.loads(out.read_text())
    assert sorted(doc["run"]["host_id"] for doc in docs) == ["host-a", "host-b"]
    prov = tmp_path / "b.prov.json"
    pt("export", runs["host-b"], "--format", "prov-json", "-o", str(prov), "--db", fleet_db, check=True)
    assert "out.csv" in prov.read_text()


def test_names_that_are_not_utf8_ship_and_join(site, fleet_db):
    """A non-UTF-8 file name and argv (bodies with lone-surrogate escapes, which
    jsonb refuses) ship, derive and show: the shipper must never wedge on one."""
    name = os.fsencode(str(site / "shared")) + b"/caf\xe9 \xe2\x82\xac.csv"
    db = str(site / "A.db")
    r = subprocess.run([os.fsencode(PROVTRACE), b"run", b"--backend", b"ptrace", b"--db", os.fsencode(db), b"--",
                        b"cp", b"/etc/hostname", name], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ship(db, fleet_db, "host-a")
    assert_central_matches(fleet_db, "host-a", db)
    run = json.loads(pt("runs", "--db", fleet_db, "--json", check=True).stdout)[0]["id"]
    doc = json.loads(pt("show", run, "--db", fleet_db, "--json", check=True).stdout)
    shown = [f for f in doc["files"] if f.get("path_b64")]
    assert shown and shown[0]["shared"] and shown[0]["fkey"].startswith("shared:")
    with psycopg.connect(fleet_db) as conn:
        argv = conn.execute("SELECT argv FROM processes WHERE host_id='host-a'").fetchall()
    assert any("caf" in json.dumps(a) for (a,) in argv)


def test_backlog_is_reported(site, fleet_db, caplog):
    from provtrace.tracer.fleet import ship as shipmod  # noqa: PLC0415

    db = synthetic_store(str(site / "A.db"), 2000)
    loop = shipmod.ShipLoop(Shipper(db, fleet_db, "host-a", batch=500), batches_per_step=1)
    caplog.set_level("WARNING", logger="provtrace.tracer.fleet.ship")
    old = shipmod.BACKLOG_WARN
    shipmod.BACKLOG_WARN = 100
    try:
        loop.step()
    finally:
        shipmod.BACKLOG_WARN = old
        loop.shipper.close()
    assert loop.last.backlog > 1000
    assert any("event=ship-backlog" in m for m in caplog.messages)
    status = json.loads(pt("fleet", "status", fleet_db, "--json", check=True).stdout)
    assert status["hosts"][0]["backlog"] == loop.last.backlog


def test_stale_across_hosts(site, fleet_db):
    """Host A writes a shared file, host B reads it, then A rewrites it: B's run
    is stale because of that file, and what B made from it is upstream stale."""
    (site / "a" / "in.csv").write_text("x\n")
    a_db, b_db = str(site / "A.db"), str(site / "B.db")
    traced(site, a_db, "cat a/in.csv > shared/x.csv")        # host A: v1
    traced(site, b_db, "sort shared/x.csv > b/out.csv")      # host B reads v1
    traced(site, b_db, "cat b/out.csv > b/final.csv")        # host B: from B's output
    ship(a_db, fleet_db, "host-a")
    ship(b_db, fleet_db, "host-b")
    fresh = pt("stale", "--db", fleet_db, "--fail-if-stale")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "0 stale" in fresh.stdout

    traced(site, a_db, "echo y > shared/x.csv")               # host A: v2
    ship(a_db, fleet_db, "host-a")
    runs = json.loads(pt("runs", "--db", fleet_db, "--json", check=True).stdout)
    a1, a2 = [r["id"] for r in runs if r["host_id"] == "host-a"]
    b1, b2 = [r["id"] for r in runs if r["host_id"] == "host-b"]
    r = pt("stale", "--db", fleet_db, "--json", "--fail-if-stale")
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    stale = {(s["host_id"], s["run"]): s for s in doc["stale"]}
    assert set(stale) == {("host-b", b1), ("host-b", b2)}
    why = stale[("host-b", b1)]["reasons"]
    assert [(x["path"], x["why"], x["by"]["host_id"], x["by"]["run"]) for x in why] == \
        [(str(site / "shared" / "x.csv"), f"rewritten by run {a2} on host host-a", "host-a", a2)]
    assert why[0]["fkey"].startswith("shared:")
    up = stale[("host-b", b2)]["reasons"]
    assert [(x["path"], x["why"], x["from"]["run"]) for x in up] == \
        [(str(site / "b" / "out.csv"), "upstream stale", b1)]
    assert {(f["host_id"], f["run"], f["inputs"], f["outputs"]) for f in doc["fresh"]} == \
        {("host-a", a1, 1, 1), ("host-a", a2, 0, 1)}

    text = pt("stale", "--db", fleet_db).stdout
    assert f"stale run {b1} on host host-b: {site / 'shared' / 'x.csv'}: rewritten by run {a2} on host host-a" in text
    assert "2 stale, 2 fresh" in text
    plan = json.loads(pt("stale", "--db", fleet_db, "--plan", "--json", check=True).stdout)["plan"]
    assert [p["run"] for p in plan] == [b1, b2]   # the producer first
    one = pt("stale", f"host-a:{a1}", "--db", fleet_db, "--fail-if-stale")
    assert one.returncode == 0 and "0 stale, 1 fresh" in one.stdout


def test_stale_from_a_fingerprint_across_hosts(site, fleet_db):
    """A change made outside tracing shows once a later run on any host fingerprints the file."""
    a_db, b_db = str(site / "A.db"), str(site / "B.db")
    traced(site, a_db, "echo 1 > shared/x.csv")
    traced(site, b_db, "cat shared/x.csv > b/out.csv")
    (site / "shared" / "x.csv").write_text("changed by hand, longer than before\n")   # untraced
    traced(site, a_db, "cat shared/x.csv > a/copy.csv")      # A reads it again: its fingerprint is shipped
    ship(a_db, fleet_db, "host-a")
    ship(b_db, fleet_db, "host-b")
    doc = json.loads(pt("stale", "--db", fleet_db, "--json", check=True).stdout)
    b_runs = [s for s in doc["stale"] if s["host_id"] == "host-b"]
    assert len(b_runs) == 1 and [(x["why"], x.get("basis")) for x in b_runs[0]["reasons"]] == \
        [("content changed", "fingerprint")]
    assert not [s for s in doc["stale"] if s["host_id"] == "host-a"]


def test_lineage_follows_the_version_read(site, fleet_db):
    """Host A writes shared/x.csv three times; host B reads it between the
    second and third writes and after the third. Each output's lineage reaches
    the writer of the version it read, not every writer of the path."""
    for i in (1, 2, 3):
        (site / "a" / f"in{i}.csv").write_text(f"{i}\n")
    a_db, b_db = str(site / "A.db"), str(site / "B.db")
    traced(site, a_db, "cat a/in1.csv > shared/x.csv")   # v1, replaced before anyone read it
    traced(site, a_db, "cat a/in2.csv > shared/x.csv")   # v2
    traced(site, b_db, "sort shared/x.csv > b/out1.csv")  # B reads v2
    traced(site, a_db, "cat a/in3.csv > shared/x.csv")   # v3
    traced(site, b_db, "sort shared/x.csv > b/out2.csv")  # B reads v3
    ship(a_db, fleet_db, "host-a")
    ship(b_db, fleet_db, "host-b")

    def reached(path: str, *extra: str) -> set[str]:
        doc = json.loads(pt("lineage", str(site / path), "--db", fleet_db, "--json", *extra, check=True).stdout)
        return {os.path.relpath(n["path"], site) for n in doc["nodes"] if n["kind"] == "file"}

    assert reached("b/out1.csv", "--host-id", "host-b") == {"b/out1.csv", "shared/x.csv", "a/in2.csv"}
    assert reached("b/out2.csv", "--host-id", "host-b") == {"b/out2.csv", "shared/x.csv", "a/in3.csv"}
    # downstream, the mirror: only the readers of the version an input went into
    assert reached("a/in2.csv", "--host-id", "host-a", "--downstream") == {"a/in2.csv", "shared/x.csv", "b/out1.csv"}
    assert reached("a/in1.csv", "--host-id", "host-a", "--downstream") == {"a/in1.csv", "shared/x.csv"}
    # the file asked about stands for all its versions
    assert reached("shared/x.csv", "--host-id", "host-a", "--downstream") == \
        {"shared/x.csv", "b/out1.csv", "b/out2.csv"}


def test_tui_over_the_fleet(site, fleet_db, tmp_path):
    """`provtrace tui --db postgresql://...` in a real terminal (tmux): every
    host's runs, a run of host B, and the lineage of its output back to host A."""
    import shutil  # noqa: PLC0415
    import time  # noqa: PLC0415

    from tests.tui.test_terminal import COLS, ROWS, POLLS, Tmux  # noqa: PLC0415

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (setup.sh installs it)")
    (site / "a" / "in.csv").write_text("x\n")
    a_db, b_db = str(site / "A.db"), str(site / "B.db")
    traced(site, a_db, "cat a/in.csv > shared/mid.csv")
    traced(site, b_db, "sort shared/mid.csv > b/out.csv")
    ship(a_db, fleet_db, "host-a")
    ship(b_db, fleet_db, "host-b")
    runs = {r["host_id"]: r["id"] for r in json.loads(pt("runs", "--db", fleet_db, "--json", check=True).stdout)}
    status = tmp_path / "status"
    tmux = Tmux()
    try:
        tmux("new-session", "-d", "-s", "tui", "-x", str(COLS), "-y", str(ROWS),
             f"{PROVTRACE} tui --db {fleet_db} >{tmp_path}/stdout; echo $? > {status}; sleep 60")
        screen = tmux.wait_for(f"host-a:{runs['host-a']}", f"host-b:{runs['host-b']}", "q Quit")
        assert screen.index(f"host-b:{runs['host-b']}") < screen.index(f"host-a:{runs['host-a']}")  # newest first
        tmux("send-keys", "-t", "tui", "Enter")  # host B's run
        screen = tmux.wait_for(f"run {runs['host-b']}", "out.csv", "mid.csv", "l Lineage")
        rows = [line for line in screen.splitlines() if "out.csv" in line or "mid.csv" in line]
        if "mid.csv" in rows[0]:
            tmux("send-keys", "-t", "tui", "Down")
        tmux("send-keys", "-t", "tui", "l")
        # the root is named by its fleet key; A's process wrote the shared file B's process read
        screen = tmux.wait_for("upstream: 6 nodes", "upstream lineage of host:host-b:",
                               f"[host host-b run {runs['host-b']}", f"[host host-a run {runs['host-a']}")
        assert screen.index("sort shared/") < screen.index("reads ") < screen.index("[host host-a")
        tmux("send-keys", "-t", "tui", "q")
        for _ in range(POLLS):
            if status.exists() and status.read_text().strip():
                break
            time.sleep(0.1)
        assert status.read_text().strip() == "0"
        assert (tmp_path / "stdout").read_text() == ""
    finally:
        tmux.kill()
