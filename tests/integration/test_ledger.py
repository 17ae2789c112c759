"""The ledger can be anchored, and verify checks SQLite's storage too (issue 17).

Real traced runs into a real store; the attacks are done with sqlite3 and
byte edits on the file, as a user who can write the store would.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import pytest

from provtrace.tracer.store.sqlite import GENESIS, chain_hash

from .helpers import pt, running_daemon

pytestmark = pytest.mark.privileged


def _runs(db, n: int, tmp_path) -> None:
    for i in range(n):
        r = pt("run", "--db", str(db), "--", "sh", "-c", f"echo {i} > {tmp_path}/o{i}.txt")
        assert r.returncode == 0, r.stderr


def _head(db) -> str:
    r = pt("head", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["line"].split()[2] == f"{doc['head']}@{doc['seq']}"
    return f"{doc['head']}@{doc['seq']}"


def _rechain(con: sqlite3.Connection) -> None:
    """What a forger does after editing history: recompute every hash and the head."""
    prev = GENESIS
    rows = con.execute("SELECT r.seq, r.rid, r.kind, a.path, b.path, r.body FROM records r LEFT JOIN paths a "
                       "ON a.id=r.p1 LEFT JOIN paths b ON b.id=r.p2 ORDER BY r.seq").fetchall()
    for seq, rid, kind, a, b, body in rows:
        prev = chain_hash(prev, rid, kind, a, b, body)
        con.execute("UPDATE records SET hash=? WHERE seq=?", (prev, seq))
    con.execute("INSERT OR REPLACE INTO meta VALUES('head', ?)", (prev.hex(),))
    con.commit()


@pytest.fixture
def store(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    db = tmp_path / "s.db"
    _runs(db, 2, tmp_path)
    return db


def test_anchor_holds_while_the_store_grows(store, tmp_path):
    anchor = _head(store)
    _runs(store, 1, tmp_path)
    r = pt("verify", "--db", str(store), "--expect-head", anchor)
    assert r.returncode == 0, r.stderr
    assert "storage intact, chain intact" in r.stdout and "1 anchor(s) hold" in r.stdout
    r = pt("verify", "--db", str(store), "--expect-head", anchor.split("@")[0])  # hash alone
    assert r.returncode == 0, r.stderr


def test_cut_and_rechained_end_passes_plain_verify_but_not_the_anchor(store, tmp_path):
    anchor = _head(store)
    con = sqlite3.connect(store)
    last = con.execute("SELECT max(rid) FROM runs").fetchone()[0]
    con.execute("DELETE FROM records WHERE rid=?", (last,))
    con.execute("DELETE FROM runs WHERE rid=?", (last,))
    _rechain(con)
    con.close()
    assert pt("verify", "--db", str(store)).returncode == 0  # the chain alone cannot tell
    r = pt("verify", "--db", str(store), "--expect-head", anchor)
    assert r.returncode == 5
    assert "records were removed" in r.stderr and len(r.stderr.splitlines()) == 1


def test_rewritten_history_fails_the_anchor(store, tmp_path):
    anchor = _head(store)
    con = sqlite3.connect(store)
    seq, body = con.execute("SELECT seq, body FROM records WHERE kind=1 ORDER BY seq LIMIT 1").fetchone()
    doc = json.loads(body)
    doc["argv"] = ["sh", "-c", "something innocent"]
    con.execute("UPDATE records SET body=? WHERE seq=?", (json.dumps(doc), seq))
    _rechain(con)
    con.close()
    assert pt("verify", "--db", str(store)).returncode == 0
    r = pt("verify", "--db", str(store), "--expect-head", anchor)
    assert r.returncode == 5 and "rewritten" in r.stderr


def test_a_flipped_byte_in_an_index_is_storage_corruption(store):
    con = sqlite3.connect(store)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='records_rid'").fetchone()[0]
    con.close()
    with open(store, "r+b") as f:  # the last byte of the index's root page: inside its cell content
        f.seek(root * page_size - 1)
        b = f.read(1)
        f.seek(root * page_size - 1)
        f.write(bytes([b[0] ^ 0x01]))
    r = pt("verify", "--db", str(store))
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert "storage of" in r.stderr and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_signed_head(store, tmp_path):
    key = tmp_path / "anchor_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "auditor", "-f", str(key)], check=True)
    r = pt("head", "--db", str(store), "--json", "--sign-ssh", str(key))
    assert r.returncode == 0, r.stderr
    sig = json.loads(r.stdout)["ssh_signature"]
    (tmp_path / "head.sig").write_text(sig["signature"])
    pub = (tmp_path / "anchor_key.pub").read_text().split()
    (tmp_path / "allowed").write_text(f"auditor namespaces=\"provtrace-head\" {pub[0]} {pub[1]}\n")
    ok = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "auditor",
                         "-n", "provtrace-head", "-s", str(tmp_path / "head.sig")],
                        input=sig["signed"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    forged = sig["signed"].replace("@", "@9")
    bad = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "auditor",
                          "-n", "provtrace-head", "-s", str(tmp_path / "head.sig")],
                         input=forged, capture_output=True, text=True)
    assert bad.returncode != 0


def test_daemon_appends_anchors_that_verify(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    log = tmp_path / "anchors.log"
    with running_daemon(args=("--anchor-log", str(log), "--anchor-every", "0.5")) as d:
        r = pt("run", "--socket", d["socket"], "--", "true")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
            time.sleep(0.2)
        lines = log.read_text().splitlines()
        assert lines and all(" provtrace-head " in line and f"db={d['db']}" in line for line in lines)
        r = pt("verify", "--db", d["db"], "--anchor-log", str(log))
        assert r.returncode == 0, r.stderr
        assert "anchor(s) hold" in r.stdout
    # at shutdown the daemon anchors its last head too
    assert len(log.read_text().splitlines()) >= len(lines)
