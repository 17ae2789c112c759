"""The finisher (store/finisher.py) on a real SQLite store with real files:
a file's fingerprint describes it as the run left it, or says it changed."""

from __future__ import annotations

import hashlib
import json
import os
import time

from provtrace.tracer.store import finisher as F
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.queries import list_runs, load_run


def _run(store: S.Store, name: str) -> int:
    now = time.time_ns() // 1000
    return store.new_run(name, {"id": name, "kind": "command", "uid": os.getuid(), "start_us": now,
                                "started": "2026-12-08T00:00:00.000000Z"})


def _job(store: S.Store, name: str, paths: list[str]) -> F.Completion:
    rid = _run(store, name)
    end = {"ended": "2026-12-08T00:00:01.000000Z", "exit_code": 0, "complete": True, "gaps": {}}
    released = time.time_ns() // 1000
    job = F.Completion(name, rid, end, released, snapshots=F.snapshot(paths), uid=os.getuid(),
                       context=lambda: {"host": "test"})
    F.release(store, rid, end, released)
    return job


def _fingerprints(store: S.Store, rid: int) -> dict:
    return {p1: json.loads(b) for _s, _r, _k, p1, _p2, b in store.records(rid, (S.FINGERPRINT,))}


def test_unchanged_file_keeps_its_hash_and_the_release_time(tmp_path):
    store = S.Store(str(tmp_path / "p.db"))
    out = tmp_path / "out.csv"
    out.write_text("a,b\n1,2\n")
    job = _job(store, "20261208T000000-aaaaaa", [str(out)])
    F.complete(store, job)
    fp = _fingerprints(store, job.rid)[str(out)]
    assert fp["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert fp["at_us"] == job.released_us
    assert "changed_before_hash" not in fp
    doc = load_run(store, job.rid)
    assert doc["run"]["ended"] and "finishing" not in doc["run"]
    assert "changed_before_hash" not in doc["run"]["gaps"]
    assert doc["context"] == {"host": "test"}


def test_file_rewritten_after_release_gets_the_marker_and_no_hash(tmp_path):
    store = S.Store(str(tmp_path / "p.db"))
    out, kept = tmp_path / "out.csv", tmp_path / "kept.csv"
    out.write_text("the run's version\n")
    kept.write_text("kept\n")
    job = _job(store, "20261208T000000-bbbbbb", [str(out), str(kept)])
    before = os.stat(out)
    doc = load_run(store, job.rid)  # released, not complete: a direct reader sees it finishing
    assert doc["run"]["finishing"] is True and doc["run"]["exit_code"] == 0
    assert doc["run"]["gaps"] == {"completion_pending": 1}
    assert list_runs(store)[-1]["finishing"] is True
    # same size, and the old mtime put back: only ctime tells
    out.write_text("a later version!!\n")
    assert os.stat(out).st_size == before.st_size
    os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns))
    F.complete(store, job)
    fps = _fingerprints(store, job.rid)
    fp = fps[str(out)]
    assert fp["sha256"] is None and fp["changed_before_hash"] is True
    assert (fp["size_bytes"], fp["mtime_ns"], fp["inode"]) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert fps[str(kept)]["sha256"] == hashlib.sha256(b"kept\n").hexdigest()
    doc = load_run(store, job.rid)
    assert doc["run"]["gaps"]["changed_before_hash"] == 1
    assert {"what": "changed_before_hash", "count": 1, "paths": [str(out)]} in doc["run"]["gap_details"]
    assert "finishing" not in doc["run"] and "finishing" not in list_runs(store)[-1]


def test_file_gone_or_replaced_before_hashing_is_changed(tmp_path):
    store = S.Store(str(tmp_path / "p.db"))
    gone, replaced = tmp_path / "gone.csv", tmp_path / "replaced.csv"
    gone.write_text("x\n")
    replaced.write_text("y\n")
    job = _job(store, "20261208T000000-cccccc", [str(gone), str(replaced)])
    gone.unlink()
    (tmp_path / "new.csv").write_text("y\n")
    os.replace(tmp_path / "new.csv", replaced)  # same bytes, another inode: not the run's file
    F.complete(store, job)
    fps = _fingerprints(store, job.rid)
    for p in (gone, replaced):
        assert fps[str(p)]["changed_before_hash"] is True and fps[str(p)]["sha256"] is None


def test_file_absent_at_release_records_that_not_what_came_later(tmp_path):
    store = S.Store(str(tmp_path / "p.db"))
    later = tmp_path / "later.csv"
    job = _job(store, "20261208T000000-dddddd", [str(later)])
    later.write_text("made after the run\n")
    F.complete(store, job)
    assert _fingerprints(store, job.rid)[str(later)] == {"cell": None, "at_us": job.released_us,
                                                          "error": "vanished"}


def test_close_completes_everything_queued(tmp_path):
    store = S.Store(str(tmp_path / "p.db"))
    fin = F.Finisher(store)
    fin.start()
    jobs = []
    for i in range(5):
        f = tmp_path / f"o{i}.csv"
        f.write_text(f"{i}\n")
        jobs.append(_job(store, f"20261208T00000{i}-eeeeee", [str(f)]))
    for j in jobs:
        fin.submit(j)
    fin.close()
    assert fin.pending() == [] and all(j.done.is_set() for j in jobs)
    assert all(r["ended"] for r in list_runs(store))
    assert fin.wait(None, 0.0)


def test_recovery_keeps_the_exit_status_of_a_released_run(tmp_path):
    """A writer that dies between release and completion: its run is closed at
    recovery with the exit status it had released, and says what is missing."""
    db = str(tmp_path / "p.db")
    S.Store(db).close()
    pid = os.fork()
    if pid == 0:  # the writer: its own connection, released, gone before completing
        try:
            store = S.Store(db)
            rid = _run(store, "20261208T000000-ffffff")
            F.release(store, rid, {"exit_code": 3, "signal": None}, time.time_ns() // 1000)
            store.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    from provtrace.tracer.store.recover import close_abandoned

    store = S.Store(db)
    assert close_abandoned(store) == ["20261208T000000-ffffff"]
    run = load_run(store, 1)["run"]
    assert run["exit_code"] == 3 and run["complete"] is False and "finishing" not in run
    assert run["gaps"] == {"run_not_finished": 1} and "before its context" in run["end_reason"]


def test_a_name_that_was_no_regular_file_at_release_is_recorded_as_it_was(tmp_path):
    """A symlink (or folder) when the run ended, a regular file by hashing time:
    recorded as the symlink it was, never with the later file's hash."""
    store = S.Store(str(tmp_path / "p.db"))
    link, target = tmp_path / "out.csv", tmp_path / "target.csv"
    target.write_text("t\n")
    link.symlink_to(target)
    job = _job(store, "20261208T000000-gggggg", [str(link)])
    link.unlink()
    link.write_text("a regular file now\n")
    F.complete(store, job)
    fp = _fingerprints(store, job.rid)[str(link)]
    assert fp["type"] == "symlink" and fp["sha256"] is None
