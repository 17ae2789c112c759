"""The SQLite store end to end: Tracker -> RunWriter -> Store -> load_run, then tampering."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.clock import Clock
from provtrace.tracer.errors import ChainBroken, RunNotFound, StoreError, StoreWriteError
from provtrace.tracer.model import events as E
from provtrace.tracer.model.processes import AT_FDCWD, CellPolicy, Tracker
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.queries import SCHEMA, list_runs, load_run, resolve_run
from provtrace.tracer.store.writer import RunWriter

CREATED = 0x100000
REG = stat.S_IFREG | 0o644
P, C = 4_100_000, 4_100_001
RUN_ID = "20240101T000000-abc123"
CAFE = os.fsdecode(b"/home/u/caf\xe9.csv")


def _header(run_id=RUN_ID, uid=1000):
    return {"id": run_id, "kind": "command", "backend": "ebpf", "label": "demo",
            "argv": ["python3", "job.py"], "cwd": "/home/u", "host": "h", "user": "u",
            "uid": uid, "started": "2024-01-01T00:00:00.000000Z"}


def _end(exit_code=0, gaps=None):
    return {"ended": "2024-01-01T00:00:05.000000Z", "exit_code": exit_code, "signal": None,
            "lost_events": 0, "lost_by_reason": {}, "complete": True, "gaps": gaps or {}}


def _events():
    """A parent that forks a child; the child writes via a temp file renamed into place."""
    ts = iter(range(1_000_000_000, 2_000_000_000, 1_000_000))
    t = lambda: next(ts)  # noqa: E731
    yield E.Exec(t(), P, P, 1, P, 1000, "/nonexistent/bin/python3")
    yield E.Open(t(), P, P, 1, 3, AT_FDCWD, 0, 0, 11, 8, REG, "/home/u/in.csv")
    yield E.FdIO(t(), P, P, 1, 3, L.FLUSH_CLOSE, 300, 0, 2, 0, 11, 8, REG, 0, 1, 0)
    yield E.Open(t(), P, P, 1, 4, AT_FDCWD, 0, 0, 12, 8, REG, CAFE)
    yield E.FdIO(t(), P, P, 1, 4, L.FLUSH_CLOSE, 5, 0, 1, 0, 12, 8, REG, 0, 1, 0)
    yield E.Fork(t(), P, P, 1, C, C, 1000, False)
    yield E.Open(t(), C, C, 1, 5, AT_FDCWD, 0o1101, CREATED, 13, 8, REG, "/home/u/out.csv.tmp")
    yield E.FdIO(t(), C, C, 1, 5, L.FLUSH_CLOSE, 0, 900, 0, 3, 13, 8, REG, 0, 1, 0)
    yield E.Rename(t(), C, C, 1, AT_FDCWD, AT_FDCWD, 0, "/home/u/out.csv.tmp", "/home/u/out.csv")
    yield E.Open(t(), C, C, 1, 6, AT_FDCWD, 0, 0, 14, 8, REG, "/usr/lib/libm.so.6")
    yield E.Net(t(), C, C, 1, L.NET_CONNECT, 7, 0, b"\x02\x00\x01\xbb\x01\x02\x03\x04" + b"\0" * 8)
    yield E.Exit(t(), C, C, 1, 9, 7)
    yield E.Exit(t(), P, P, 1, 0, 7)


def _write_run(store, run_id=RUN_ID, uid=1000, end=True):
    rid = store.new_run(run_id, _header(run_id, uid))
    writer = RunWriter(store, rid, Clock(offset_ns=0))
    tracker = Tracker(writer, CREATED)
    for ev in _events():
        tracker.handle(ev)
    tracker.finish_all(3_000_000_000)
    store.append(rid, S.CONTEXT, {"python": {"version": "3.11"}})
    if end:
        store.end_run(rid, _end())
    else:
        store.flush()
    return rid


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "prov.db")


@pytest.fixture
def store(db):
    s = S.Store(db)
    yield s
    s.close()


def test_load_run_shape(store, db):
    rid = _write_run(store)
    doc = load_run(store, rid)
    assert doc["schema"] == SCHEMA == "provtrace.run/1"
    assert set(doc) == {"schema", "run", "processes", "files", "renames", "links", "directories",
                        "network", "pipes", "cells", "attempts", "context"}
    run = doc["run"]
    assert run["id"] == RUN_ID and run["kind"] == "command" and run["exit_code"] == 0
    assert run["complete"] is True and run["gaps"] == {}
    assert doc["context"] == {"python": {"version": "3.11"}}

    procs = {p["pid"]: p for p in doc["processes"]}
    assert procs[C]["ppid"] == P and procs[C]["exit_code"] == 137 and procs[C]["signal"] == 9
    assert procs[P]["exe"] == "/nonexistent/bin/python3"
    assert procs[C]["started"].endswith("Z")

    files = {(f["pid"], f["path"]): f for f in doc["files"]}
    inp = files[(P, "/home/u/in.csv")]
    assert inp["access"] == ["read"] and inp["bytes_read"] == 300 and inp["kind"] == "data"
    assert inp["exe"] == "/nonexistent/bin/python3"
    tmp = files[(C, "/home/u/out.csv.tmp")]
    assert tmp["access"] == ["write", "create"] and tmp["bytes_written"] == 900
    assert tmp["kind"] == "temp"  # created, then renamed away within the run
    assert files[(C, "/usr/lib/libm.so.6")]["kind"] == "library"
    assert files[(P, "/nonexistent/bin/python3")]["access"] == ["exec"]
    assert not any(k.startswith("_") for f in doc["files"] for k in f)

    assert doc["renames"] == [{"pid": C, "from": "/home/u/out.csv.tmp", "to": "/home/u/out.csv",
                               "time": doc["renames"][0]["time"], "cell": None}]
    assert [(n["op"], n["family"], n["address"], n["port"]) for n in doc["network"]] == [
        ("connect", "inet", "1.2.3.4", 443)]

    n = store.verify()
    assert n == sum(1 for _ in store.records())
    print(f"\n{os.path.getsize(db) / n:.0f} bytes/record over {n} records (WAL not checkpointed)")


def test_non_utf8_path_gets_path_b64(store):
    doc = load_run(store, _write_run(store))
    (f,) = [f for f in doc["files"] if "path_b64" in f]
    assert base64.b64decode(f["path_b64"]) == b"/home/u/caf\xe9.csv"
    assert f["path"] == "/home/u/caf\\xe9.csv"
    assert f["access"] == ["read"]
    # the raw bytes are what the store holds
    raw = {r[0] for r in store.db.execute("SELECT path FROM paths")}
    assert b"/home/u/caf\xe9.csv" in raw
    assert CAFE in {p1 for _s, _r, _k, p1, _p2, _b in store.records()}


def test_non_utf8_exe_argv_and_cwd_are_stored(store):
    rid = store.new_run(RUN_ID, _header())
    tracker = Tracker(RunWriter(store, rid, Clock(offset_ns=0)), CREATED)
    tracker.handle(E.Chdir(1, P, P, 1, AT_FDCWD, os.fsdecode(b"/home/caf\xe9")))
    tracker.handle(E.Argv(2, P, P, 1, ("run", os.fsdecode(b"caf\xe9")), False))
    tracker.handle(E.Exec(3, P, P, 1, P, 0, os.fsdecode(b"/opt/caf\xe9/bin")))
    tracker.finish_all(4)
    store.end_run(rid, _end())
    (p,) = load_run(store, rid)["processes"]
    # JSON output shows undecodable bytes as \xNN (valid UTF-8); the store keeps them exactly.
    assert p["argv"][1] == "caf\\xe9" and p["exe"] == "/opt/caf\\xe9/bin"
    body = store.db.execute("SELECT body FROM records WHERE kind=2").fetchone()[0]
    import json
    assert os.fsencode(json.loads(body)["argv"][1]) == b"caf\xe9"
    store.verify()


def test_verify_passes_and_head_matches(store):
    _write_run(store)
    _write_run(store, run_id="20240102T000000-def456")
    n = store.verify()
    assert n > 10
    last_hash = store.db.execute("SELECT hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()[0]
    assert store.head() == last_hash.hex()


def _seq_of(store, kind, nth=0):
    return store.db.execute("SELECT seq FROM records WHERE kind=? ORDER BY seq LIMIT 1 OFFSET ?",
                            (kind, nth)).fetchone()[0]


def test_tampered_body_names_its_seq(store):
    _write_run(store)
    seq = _seq_of(store, S.FILE, 1)
    store.db.execute("UPDATE records SET body=body || ' ' WHERE seq=?", (seq,))  # still valid JSON
    with pytest.raises(ChainBroken) as ei:
        store.verify()
    assert ei.value.seq == seq and f"record {seq}" in str(ei.value)


def test_deleted_middle_record_names_the_next_seq(store):
    _write_run(store)
    seq = _seq_of(store, S.RENAME)
    store.db.execute("DELETE FROM records WHERE seq=?", (seq,))
    with pytest.raises(ChainBroken) as ei:
        store.verify()
    assert ei.value.seq == seq + 1


def test_deleted_last_record_is_caught_by_the_head(store):
    _write_run(store)
    last = store.db.execute("SELECT max(seq) FROM records").fetchone()[0]
    store.db.execute("DELETE FROM records WHERE seq=?", (last,))
    with pytest.raises(ChainBroken) as ei:
        store.verify()
    # the chain itself still verifies up to the new last record: the head names the cut
    assert ei.value.seq == last - 1
    assert "removed from the end" in str(ei.value)


def test_changed_path_names_the_first_record_using_it(store):
    _write_run(store)
    pid_row = store.db.execute("SELECT id FROM paths WHERE path=?", (b"/home/u/in.csv",)).fetchone()[0]
    first = store.db.execute("SELECT min(seq) FROM records WHERE p1=? OR p2=?",
                             (pid_row, pid_row)).fetchone()[0]
    store.db.execute("UPDATE paths SET path=? WHERE id=?", (b"/home/u/innocent.csv", pid_row))
    with pytest.raises(ChainBroken) as ei:
        store.verify()
    assert ei.value.seq == first


def test_deleted_path_row_is_reported(store):
    _write_run(store)
    pid_row = store.db.execute("SELECT id FROM paths WHERE path=?", (b"/home/u/in.csv",)).fetchone()[0]
    first = store.db.execute("SELECT min(seq) FROM records WHERE p1=? OR p2=?",
                             (pid_row, pid_row)).fetchone()[0]
    store.db.execute("DELETE FROM paths WHERE id=?", (pid_row,))
    with pytest.raises(ChainBroken, match="missing from the paths table") as ei:
        store.verify()
    assert ei.value.seq == first


def test_runs_index_disagreeing_with_end_record(store):
    rid = _write_run(store)
    store.db.execute("UPDATE runs SET exit_code=1 WHERE rid=?", (rid,))
    with pytest.raises(ChainBroken, match="runs index") as ei:
        store.verify()
    assert ei.value.seq == _seq_of(store, S.RUN_END)


def test_newer_schema_is_refused_with_a_clear_message(db):
    S.Store(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(S.SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    for kw in ({}, {"readonly": True}):
        with pytest.raises(StoreError, match=r"newer than this provtrace .*upgrade provtrace"):
            S.Store(db, **kw)


def test_non_sqlite_file_is_a_store_error(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_bytes(b"this is not a database\n" * 200)
    for kw in ({}, {"readonly": True}):
        with pytest.raises(StoreError, match="cannot open store"):
            S.Store(str(bogus), **kw)


def test_plain_sqlite_file_readonly_is_not_a_provtrace_store(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a provtrace store"):
        S.Store(str(other), readonly=True)


def test_missing_store_readonly(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        S.Store(str(tmp_path / "absent.db"), readonly=True)


def test_reopen_readonly_reads_the_same(store, db):
    rid = _write_run(store)
    ro = S.Store(db, readonly=True)
    try:
        assert load_run(ro, rid) == load_run(store, rid)
        assert ro.verify() == store.verify()
    finally:
        ro.close()


def test_resolve_run_and_list_runs(store):
    a = _write_run(store, "20240101T000000-aaa111", uid=1000)
    b = _write_run(store, "20240102T000000-bbb222", uid=0)
    c = _write_run(store, "20240102T000000-bbb333", uid=1000, end=False)
    assert resolve_run(store, "last") == c
    assert resolve_run(store, "last", uid=0) == b
    assert resolve_run(store, "20240101") == a
    assert resolve_run(store, "20240102T000000-bbb2") == b
    assert resolve_run(store, "20240101T000000-aaa111") == a
    with pytest.raises(RunNotFound, match="ambiguous"):
        resolve_run(store, "20240102")
    with pytest.raises(RunNotFound, match="nope"):
        resolve_run(store, "nope")
    with pytest.raises(RunNotFound):
        resolve_run(store, "%")  # LIKE wildcards are not a way to match everything
    runs = list_runs(store)
    assert [r["rid"] for r in runs] == [a, b, c]
    assert runs[0]["complete"] is True and runs[2]["complete"] is None
    assert [r["rid"] for r in list_runs(store, uid=1000)] == [a, c]
    assert load_run(store, c)["run"]["gaps"] == {"run_not_finished": 1}


def test_resolve_last_on_empty_store(store):
    with pytest.raises(RunNotFound):
        resolve_run(store, "last")


def test_cells_collect_reads_and_final_writes(store):
    rid = store.new_run(RUN_ID, _header())
    writer = RunWriter(store, rid, Clock(offset_ns=0))
    class InCell1(CellPolicy):
        def child_cell(self, parent, tid, ts_ns):
            return "cell-1"

    tracker = Tracker(writer, CREATED, cells=InCell1())
    tracker.handle(E.Exec(1_000, P, P, 1, P, 0, "/nonexistent/py"))
    tracker.handle(E.Fork(2_000, P, P, 1, C, C, 0, False))  # the child gets cell-1 from the policy
    for ev in list(_events())[1:]:
        if ev.pid == C and not isinstance(ev, E.Fork):
            tracker.handle(ev)
    tracker.finish_all(3_000_000_000)
    store.append(rid, S.CELL, {"id": "cell-1", "source": "!python job.py"})
    store.end_run(rid, _end())
    (cell,) = load_run(store, rid)["cells"]
    assert cell["writes"] == ["/home/u/out.csv"]  # the temp name followed to its final name
    assert cell["reads"] == []
    assert cell["processes"] == [C]


def test_chain_hash_is_the_documented_digest():
    # Stores written before the one-call hash must still verify: same bytes, same digest.
    import hashlib
    prev, p1, p2, body = b"\x07" * 32, b"/home/u/caf\xe9.csv", None, '[1,"\\udce9"]'
    h = hashlib.sha256(prev)
    for part in (b"12|3|", p1, b"\0", b"", b"\0", body.encode("utf-8", "surrogateescape")):
        h.update(part)
    assert S.chain_hash(prev, 12, 3, p1, p2, body) == h.digest()


def test_dumps_matches_json_dumps_compact():
    import json
    obj = [1, None, "x", CAFE, {"a": [True, 1.5]}, "é"]
    assert S.dumps(obj) == json.dumps(obj, separators=(",", ":"))


def test_paths_shared_across_runs_and_store_handles(db):
    """A second Store on the same file (empty id cache) reuses the rows the first wrote."""
    first = S.Store(db)
    a = _write_run(first, "20240101T000000-aaa111")
    first.close()
    second = S.Store(db)
    b = _write_run(second, "20240102T000000-bbb222")
    rid = second.new_run("20240103T000000-ccc333", _header("20240103T000000-ccc333"))
    second.append(rid, S.FINGERPRINT, {"x": 1}, p1="/home/u/brand-new.csv", p2=CAFE)
    second.end_run(rid, _end())
    raws = [r[0] for r in second.db.execute("SELECT path FROM paths")]
    assert len(raws) == len(set(raws))
    assert b"/home/u/brand-new.csv" in raws
    files_a = sorted((f["pid"], f["path"]) for f in load_run(second, a)["files"])
    files_b = sorted((f["pid"], f["path"]) for f in load_run(second, b)["files"])
    assert files_a == files_b and (P, "/home/u/in.csv") in files_a
    (fp,) = [r for r in second.records(rid, (S.FINGERPRINT,))]
    assert fp[3:5] == ("/home/u/brand-new.csv", CAFE)
    assert second.verify() == sum(1 for _ in second.records())
    second.close()


def test_rolled_back_flush_does_not_leave_stale_path_ids(store):
    """A flush that fails rolls back its new paths rows; later records must not
    point at ids that were handed out in it (they are reused by the next names)."""
    rid = store.new_run(RUN_ID, _header())
    store.append(rid, S.GAP, {"x": 1}, p1="/home/u/lost.csv")
    store.append(rid, S.GAP, "not JSON", p1="/home/u/also-lost.csv")
    store.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.body = 'not JSON' "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(StoreWriteError, match="refused"):  # one line, the batch counted as lost
        store.flush()
    assert store.lost_records == {rid: 2}
    store.db.execute("DROP TRIGGER refuse")
    assert store.db.execute("SELECT count(*) FROM paths").fetchone()[0] == 0
    store.append(rid, S.GAP, {"x": 2}, p1="/home/u/kept.csv")
    store.append(rid, S.GAP, {"x": 3}, p1="/home/u/lost.csv")
    store.end_run(rid, _end())
    named = [p1 for _s, _r, k, p1, _p2, _b in store.records(rid) if k == S.GAP]
    assert named == ["/home/u/kept.csv", "/home/u/lost.csv"]
    assert store.verify() == 4
    end = json.loads(next(b for _s, _r, k, _p1, _p2, b in store.records(rid) if k == S.RUN_END))
    assert end["complete"] is False and end["lost_records"] == 2
    assert end["gaps"]["store_write_failed"] == 2 and store.lost_records == {}


def test_failed_end_is_written_again_later(store):
    """An end that cannot be written raises StoreWriteError and leaves the run
    open; written again once the store takes writes, it is the run's only end."""
    rid = store.new_run(RUN_ID, _header())
    store.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'full'); END")
    with pytest.raises(StoreWriteError, match="full"):
        store.end_run(rid, _end())
    assert store.write_error and "full" in store.write_error
    store.db.execute("DROP TRIGGER refuse")
    store.end_run(rid, _end())
    assert store.write_error is None
    assert [k for _s, _r, k, *_ in store.records(rid)] == [S.RUN_START, S.RUN_END]
    assert store.verify() == 2


def test_recovery_closes_only_runs_whose_writer_is_gone(store, db):
    """A run written by a process that died without its end is closed, incomplete,
    at its last record's time; a run whose writer still lives is left open."""
    from provtrace.tracer.store.recover import close_abandoned

    mine = store.new_run(RUN_ID, _header())
    pid = os.fork()
    if pid == 0:  # a writer that dies mid-run, as kill -9 would leave it
        child = S.Store(db)
        rid = child.new_run("20240101T000000-dead00", {**_header("20240101T000000-dead00"), "start_us": 10})
        child.append(rid, S.PROCESS, {"pid": 5, "ppid": 1, "exe": "/bin/sh", "argv": [], "cwd": "/",
                                      "uid": 0, "started_us": 20, "ended_us": 30_000_000,
                                      "exit_code": 0, "signal": None, "cell": None})
        child.flush()
        os._exit(0)
    os.waitpid(pid, 0)
    assert close_abandoned(store) == ["20240101T000000-dead00"]
    rows = {r["id"]: r for r in list_runs(store)}
    assert rows[RUN_ID]["ended"] is None  # its writer (this process) may still finish it
    dead = rows["20240101T000000-dead00"]
    assert dead["complete"] is False and dead["exit_code"] is None
    assert dead["ended"] == "1970-01-01T00:00:30.000000Z"
    doc = load_run(store, dead["rid"])
    assert doc["run"]["gaps"] == {"run_not_finished": 1} and "pid" in doc["run"]["end_reason"]
    assert close_abandoned(store) == [] and store.verify() == 4
    store.end_run(dead["rid"], _end())  # a writer that comes back late: one run, one end
    assert store.verify() == 4
    store.end_run(mine, _end())


def test_failed_opens_round_trip_as_attempts(store):
    """Failed opens (Open with fd = -errno) leave as `attempts`, never as files."""
    rid = store.new_run(RUN_ID, _header())
    tracker = Tracker(RunWriter(store, rid, Clock(offset_ns=0)), CREATED)
    for ev in (E.Exec(1_000_000_000, P, P, 1, P, 1000, "/nonexistent/bin/python3"),
               E.Chdir(1_100_000_000, P, P, 1, AT_FDCWD, "/home/u"),
               E.Open(1_200_000_000, P, P, 1, -2, AT_FDCWD, 0, 0, 0, 0, 0, "data/2024.csv"),
               E.Open(1_300_000_000, P, P, 1, -2, AT_FDCWD, 0, 0, 0, 0, 0, "data/2024.csv"),
               E.Open(1_400_000_000, P, P, 1, -13, AT_FDCWD, 0o101, 0, 0, 0, 0, CAFE),
               E.Exit(1_500_000_000, P, P, 1, 0, 3)):
        tracker.handle(ev)
    tracker.finish_all(2_000_000_000)
    store.end_run(rid, _end())
    doc = load_run(store, rid)
    assert doc["files"] == [] or all(f["access"] == ["exec"] for f in doc["files"])
    got = [(a["path"], a.get("path_b64"), a["pid"], a["errno"], a["access"], a["cell"]) for a in doc["attempts"]]
    assert got == [("/home/u/data/2024.csv", None, P, "ENOENT", "read", None),
                   ("/home/u/caf\\xe9.csv", base64.b64encode(os.fsencode(CAFE)).decode(), P, "EACCES", "write",
                    None)]
    assert doc["attempts"][0]["exe"] == "/nonexistent/bin/python3"
    assert doc["attempts"][0]["time"].endswith("Z")


@pytest.mark.parametrize("cell, via, directory", [(None, None, False), ("c-1", None, False),
                                                   (None, {"/l/b", "/l/a"}, False), (None, None, True)])
def test_file_record_body_is_the_documented_array(store, cell, via, directory):
    """The writer spells the common file body itself (no list, no encoder): it
    must be exactly what dumps() writes for BODY_FILE."""
    from provtrace.tracer.model.processes import FileAccess
    from provtrace.tracer.store.writer import KIND_CODES, bits_of

    rid = store.new_run("r-body", {"kind": "command"})
    writer = RunWriter(store, rid, Clock(offset_ns=5_000), base_us=3)
    fa = FileAccess("/data/x.csv", {"read", "write", "create"}, bytes_read=1 << 40, bytes_written=7,
                    first_ns=12_345_678, last_ns=99_999_999, cell=cell, via=via, directory=directory)
    body, p1, p2 = writer._file_record(4242, fa)
    expect = [4242, bits_of(fa.access), 1 << 40, 7, (12_345_678 + 5_000) // 1000 - 3,
              (99_999_999 + 5_000) // 1000 - 3, cell, KIND_CODES["data"]]
    extra = {**({"via": sorted(via)} if via else {}), **({"dir": 1} if directory else {})}
    assert body == S.dumps(expect + ([extra] if extra else []))
    assert (p1, p2) == ("/data/x.csv", None)
