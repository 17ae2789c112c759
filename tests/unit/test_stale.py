"""Fingerprints and `stale` on a real SQLite store with real files.

Runs are written the way the runner writes them: decoded events go through
the real Tracker and RunWriter into the Store, then record_fingerprints and
end_run. The events mirror file operations this test really performs on
files in tmp_path, so the fingerprints are of real content.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import stat
import time
from pathlib import Path

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.clock import Clock
from provtrace.tracer.clock import us_to_iso as iso
from provtrace.tracer.lineage.diff import diff_runs
from provtrace.tracer.lineage.stale import render, staleness
from provtrace.tracer.model import events as E
from provtrace.tracer.model.processes import AT_FDCWD, CellPolicy, Tracker
from provtrace.tracer.privs import Creds
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.fingerprint import HASH_CAP_BYTES, fingerprint, record_fingerprints
from provtrace.tracer.store.queries import load_run
from provtrace.tracer.store.writer import RunWriter

CREATED = 0x100000
REG = stat.S_IFREG | 0o644
O_WRITE_NEW = 0o1101  # O_WRONLY | O_CREAT | O_TRUNC
PIDS = itertools.count(4_300_000)
RUN_IDS = itertools.count(1)


class _CurrentCell(CellPolicy):
    """Actions belong to whichever cell the test says is running."""

    def __init__(self) -> None:
        self.cell: str | None = None

    def action_cell(self, p, tid, ts_ns):
        return self.cell


class Run:
    """One traced run into a real store: real file operations, mirrored as events."""

    def __init__(self, store: S.Store, uid: int = 0) -> None:
        self.store = store
        self.id = f"20240101T0000{next(RUN_IDS):02d}-abcdef"
        self.uid = uid  # the owner, as the daemon records it: fingerprints are taken as this user
        start_us = time.time_ns() // 1000
        self.rid = store.new_run(self.id, {
            "id": self.id, "kind": "command", "backend": "ebpf", "label": None, "argv": ["tool"],
            "cwd": "/", "host": "h", "user": None, "uid": uid, "started": iso(start_us),
            "start_us": start_us})
        # offset 0: the events' "monotonic" stamps are wall-clock ns, so write
        # times compare with fingerprint times as they would in a real run
        self.writer = RunWriter(store, self.rid, Clock(offset_ns=0), base_us=start_us)
        self.cells = _CurrentCell()
        self.tracker = Tracker(self.writer, CREATED, cells=self.cells)
        self.pid = next(PIDS)
        self.fd = 3
        self.cell_paths: set[str] = set()
        self.tracker.handle(E.Exec(time.time_ns(), self.pid, self.pid, 1, self.pid, 0, "/nonexistent/tool"))

    def _io(self, path, flags, fmode, nread, nwrite):
        st = os.stat(path)
        self.fd += 1
        p = self.pid
        self.tracker.handle(E.Open(time.time_ns(), p, p, 1, self.fd, AT_FDCWD, flags, fmode,
                                   st.st_ino, st.st_dev, REG, str(path)))
        self.tracker.handle(E.FdIO(time.time_ns(), p, p, 1, self.fd, L.FLUSH_CLOSE, nread, nwrite,
                                   int(nread > 0), int(nwrite > 0), st.st_ino, st.st_dev, REG, 0,
                                   flags, 0))
        self.cell_paths.add(str(path))

    def read(self, path) -> bytes:
        data = open(path, "rb").read()
        self._io(path, 0, 0, len(data), 0)
        return data

    def write(self, path, data: bytes) -> None:
        existed = os.path.exists(path)
        with open(path, "wb") as f:
            f.write(data)
        self._io(path, O_WRITE_NEW, 0 if existed else CREATED, 0, len(data))

    def rename(self, src, dst) -> None:
        os.rename(src, dst)
        self.tracker.handle(E.Rename(time.time_ns(), self.pid, self.pid, 1, AT_FDCWD, AT_FDCWD, 0,
                                     str(src), str(dst)))
        self.cell_paths.add(str(dst))

    def cell(self, cid: str | None) -> None:
        """End the running cell (fingerprints at its end, as a session would), start cid."""
        if self.cells.cell is not None:
            record_fingerprints(self.store, self.rid, self.cell_paths, cell=self.cells.cell)
            self.store.append(self.rid, S.CELL, {"id": self.cells.cell, "ended": iso(time.time_ns() // 1000)})
        self.cells.cell, self.cell_paths = cid, set()

    def end(self) -> Run:
        self.cell(None)
        self.tracker.handle(E.Exit(time.time_ns(), self.pid, self.pid, 1, 0, 7))
        self.tracker.finish_all(time.time_ns())
        record_fingerprints(self.store, self.rid,
                            self.writer.touched.union(*self.writer.renamed_to.values()),
                            creds=None if self.uid == os.geteuid() else Creds.of_user(self.uid))
        self.store.end_run(self.rid, {"ended": iso(time.time_ns() // 1000), "exit_code": 0,
                                      "lost_events": 0, "complete": True, "gaps": {}})
        return self


@pytest.fixture
def store(tmp_path):
    s = S.Store(str(tmp_path / "prov.db"))
    yield s
    s.close()


def _unit(result, run, cell=None):
    for group in ("stale", "fresh"):
        for u in result[group]:
            if u["run"] == run.id and u["cell"] == cell:
                return group, u
    raise AssertionError(f"no unit {run.id} {cell} in {result}")


def _why(result, run, path, cell=None):
    group, u = _unit(result, run, cell)
    assert group == "stale", u
    return {r["why"] for r in u["reasons"] if r["path"] == str(path)}


def _pipeline(store, d):
    """run a: in.csv -> mid.tmp, renamed to mid.csv; run b: mid.csv -> out.csv."""
    (d / "in.csv").write_bytes(b"b\na\n")
    a = Run(store)
    a.write(d / "mid.tmp", bytes(sorted(a.read(d / "in.csv"))))
    a.rename(d / "mid.tmp", d / "mid.csv")
    a.end()
    b = Run(store)
    b.write(d / "out.csv", b.read(d / "mid.csv")[:2])
    b.end()
    return a, b


def test_unchanged_inputs_are_fresh_and_fingerprints_reach_the_document(store, tmp_path):
    a, b = _pipeline(store, tmp_path)
    result = staleness(store)
    assert result["stale"] == []
    assert {(u["run"], u["inputs"], u["outputs"]) for u in result["fresh"]} == {(a.id, 1, 2), (b.id, 1, 1)}
    files = {f["path"]: f for f in load_run(store, a.rid)["files"]}
    inp = files[str(tmp_path / "in.csv")]
    assert inp["sha256"] == fingerprint(str(tmp_path / "in.csv"))["sha256"]
    assert inp["size_bytes"] == 4 and inp["mtime"].endswith("Z")
    assert "fingerprint_error" in files[str(tmp_path / "mid.tmp")]  # renamed away: vanished
    assert store.verify() > 0
    assert render(result).endswith("0 stale, 2 fresh")


def test_touch_without_content_change_stays_fresh(store, tmp_path):
    a, _b = _pipeline(store, tmp_path)
    os.utime(tmp_path / "in.csv", ns=(1, 1))
    assert staleness(store)["stale"] == []


def test_edited_input_is_stale_and_staleness_is_transitive(store, tmp_path):
    a, b = _pipeline(store, tmp_path)
    (tmp_path / "in.csv").write_bytes(b"c\nb\n")
    result = staleness(store)
    assert _why(result, a, tmp_path / "in.csv") == {"content changed"}
    (reason,) = _unit(result, a)[1]["reasons"]
    assert reason["basis"] == "sha256" and reason["role"] == "input"
    # b read mid.csv, produced by a (through the rename), which is now stale
    (up,) = _unit(result, b)[1]["reasons"]
    assert up["why"] == "upstream stale" and up["path"] == str(tmp_path / "mid.csv")
    assert up["from"] == {"run": a.id, "cell": None}
    text = render(result)
    assert f"stale run {a.id}: {tmp_path / 'in.csv'}: content changed (sha256)" in text
    assert f"upstream stale (from run {a.id})" in text and text.endswith("2 stale, 0 fresh")
    only_b = staleness(store, b.rid)
    assert [u["run"] for u in only_b["stale"]] == [b.id] and only_b["fresh"] == []


def test_deleted_input_is_stale(store, tmp_path):
    a, _b = _pipeline(store, tmp_path)
    os.unlink(tmp_path / "in.csv")
    assert _why(staleness(store), a, tmp_path / "in.csv") == {"deleted"}


def test_later_run_rewriting_an_input_is_named(store, tmp_path):
    a, b = _pipeline(store, tmp_path)
    c = Run(store)
    c.write(tmp_path / "in.csv", b"z\n")
    c.end()
    result = staleness(store)
    assert _why(result, a, tmp_path / "in.csv") == {f"rewritten by run {c.id}"}
    (reason,) = _unit(result, a)[1]["reasons"]
    assert reason["by"] == {"run": c.id, "cell": None} and reason["content"] == "changed"
    assert _unit(result, c)[0] == "fresh"  # c's output is as c left it
    assert _unit(result, b)[0] == "stale"  # through a


def test_edited_output_is_modified_since_and_a_rerun_supersedes(store, tmp_path):
    a, b = _pipeline(store, tmp_path)
    (tmp_path / "out.csv").write_bytes(b"hand edited\n")
    assert _why(staleness(store), b, tmp_path / "out.csv") == {"modified since"}
    again = Run(store)
    again.write(tmp_path / "out.csv", again.read(tmp_path / "mid.csv")[:2])
    again.end()
    result = staleness(store)
    # the later run now owns out.csv: b is not blamed for it; nothing is stale
    assert result["stale"] == [] and _unit(result, again)[0] == "fresh"


def test_cells_are_judged_one_by_one(store, tmp_path):
    (tmp_path / "in.csv").write_bytes(b"1\n")
    (tmp_path / "other.txt").write_bytes(b"o\n")
    nb = Run(store)
    nb.cell("c1")
    nb.write(tmp_path / "mid.csv", nb.read(tmp_path / "in.csv") * 2)
    nb.cell("c2")
    nb.write(tmp_path / "out.csv", nb.read(tmp_path / "mid.csv"))
    nb.cell("c3")
    nb.read(tmp_path / "other.txt")
    nb.end()
    assert staleness(store)["stale"] == []
    (tmp_path / "in.csv").write_bytes(b"2\n")
    result = staleness(store)
    assert _why(result, nb, tmp_path / "in.csv", "c1") == {"content changed"}
    assert {r["why"] for r in _unit(result, nb, "c2")[1]["reasons"]} == {"upstream stale"}
    assert _unit(result, nb, "c2")[1]["reasons"][0]["from"] == {"run": nb.id, "cell": "c1"}
    assert _unit(result, nb)[0] == "stale" and _unit(result, nb, "c3")[0] == "fresh"
    assert f"stale run {nb.id} cell c2:" in render(result)


def test_later_cell_rewriting_an_earlier_cells_input(store, tmp_path):
    (tmp_path / "cfg").write_bytes(b"a")
    nb = Run(store)
    nb.cell("load")
    nb.read(tmp_path / "cfg")
    nb.cell("save")
    nb.write(tmp_path / "cfg", b"b")
    nb.end()
    result = staleness(store)
    assert _why(result, nb, tmp_path / "cfg", "load") == {f"rewritten by run {nb.id} cell save"}
    assert _unit(result, nb, "save")[0] == "fresh"


def test_huge_file_is_fingerprinted_by_size_and_mtime(store, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(HASH_CAP_BYTES + 1)  # sparse: costs no disk
    fp = fingerprint(str(big))
    assert fp["sha256"] is None and fp["hash_skipped"] == "too large"
    assert fp["size_bytes"] == HASH_CAP_BYTES + 1
    (tmp_path / "four").write_bytes(b"1234")
    assert fingerprint(str(tmp_path / "four"), cap_bytes=3)["hash_skipped"] == "too large"
    assert len(fingerprint(str(tmp_path / "four"), cap_bytes=4)["sha256"]) == 64
    a = Run(store)
    a._io(big, 0, 0, 10, 0)
    a.end()
    files = [f for f in load_run(store, a.rid)["files"] if f["path"] == str(big)]
    assert files[0]["sha256"] is None and files[0]["hash_skipped"] == "too large"
    assert staleness(store)["stale"] == []
    os.utime(big, ns=(1, 1))
    (reason,) = staleness(store)["stale"][0]["reasons"]
    assert reason["why"] == "content changed" and reason["basis"] == "size/mtime/inode"


def test_non_utf8_path_is_kept(store, tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.csv"
    path = os.fsdecode(raw)
    with open(raw, "wb") as f:
        f.write(b"x\n")
    a = Run(store)
    a.read(path)
    a.end()
    (entry,) = [f for f in load_run(store, a.rid)["files"] if "path_b64" in f]
    assert base64.b64decode(entry["path_b64"]) == raw and len(entry["sha256"]) == 64
    with open(raw, "ab") as f:
        f.write(b"y\n")
    (unit,) = staleness(store)["stale"]
    (reason,) = unit["reasons"]
    assert base64.b64decode(reason["path_b64"]) == raw and reason["why"] == "content changed"
    assert reason["path"].endswith("caf\\xe9.csv")
    json.dumps(unit, ensure_ascii=False).encode("utf-8")  # valid UTF-8 JSON
    assert "caf\\xe9.csv: content changed" in render(staleness(store))


def _fingerprint_as_nobody(path: str) -> dict:
    """fingerprint() in a child that has dropped root, so permissions apply."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(fingerprint(path)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def test_unreadable_and_vanished_files_give_reasons(store, tmp_path):
    secret = tmp_path / "sealed" / "secret.csv"
    secret.parent.mkdir()
    secret.write_bytes(b"s")
    os.chmod(secret, 0)
    if os.geteuid() == 0:
        fp = _fingerprint_as_nobody(str(secret))
    else:
        fp = fingerprint(str(secret))
    # root's tmp dirs are 0700, so the stat itself may be what is refused
    assert fp.get("error") == "permission denied" or fp.get("hash_skipped") == "unreadable: permission denied"
    assert fingerprint(str(tmp_path / "never-there")) == {"error": "vanished"}

    os.chmod(secret, 0o600)
    a = Run(store)
    a.read(secret)
    a.end()
    # a baseline that could not be taken is listed, not guessed
    store.append(a.rid, S.FINGERPRINT, {"cell": None, "at_us": time.time_ns() // 1000,
                                        "error": "permission denied"}, p1=str(secret))
    store.flush()
    result = staleness(store)
    (fresh,) = result["fresh"]
    assert fresh["unchecked"] == [{"path": str(secret), "role": "input",
                                   "why": "not fingerprinted: permission denied"}]
    assert "1 file(s) could not be checked" in render(result)


def test_fifo_and_vanished_paths_do_not_crash_recording(store, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rid = store.new_run("20240101T000000-fifo00", {"id": "x", "kind": "command", "start_us": 0})
    n = record_fingerprints(store, rid, [str(fifo), str(tmp_path / "gone.csv"), "/usr/lib/libc.so.6"])
    store.flush()
    assert n == 2  # the library is not a data file
    bodies = {p: json.loads(b) for _s, _r, k, p, _p2, b in store.records(rid, (S.FINGERPRINT,))}
    assert bodies[str(fifo)]["type"] == "other" and bodies[str(fifo)]["hash_skipped"] == "not a regular file"
    assert bodies[str(tmp_path / "gone.csv")]["error"] == "vanished"


def test_hashes_are_cached_by_identity(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"abc")
    os.link(f, tmp_path / "b.csv")
    cache: dict = {}
    one = fingerprint(str(f), cache)
    assert len(cache) == 1
    two = fingerprint(str(tmp_path / "b.csv"), cache)
    assert one["sha256"] == two["sha256"] and len(cache) == 1
    f.write_bytes(b"abcd")
    assert fingerprint(str(f), cache)["sha256"] != one["sha256"] and len(cache) == 2


def test_diff_reports_a_changed_input(store, tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes(b"1\n")
    a = Run(store)
    a.write(tmp_path / "copy.csv", a.read(src))
    a.end()
    src.write_bytes(b"2\n")
    b = Run(store)
    b.write(tmp_path / "copy.csv", b.read(src))
    b.end()
    d = diff_runs(load_run(store, a.rid), load_run(store, b.rid))
    assert [(c["path"], c["basis"]) for c in d["inputs"]["changed"]] == [(str(src), "sha256")]
    assert [c["path"] for c in d["outputs"]["changed"]] == [str(tmp_path / "copy.csv")]


def _give(path, user) -> None:
    os.lchown(path, user.pw_uid, user.pw_gid)


@pytest.mark.privileged
def test_fingerprints_are_taken_as_the_runs_owner(store, test_user, users_dir):
    """Issue 12, finding 4: a user's output replaced by a symlink to a root-only
    file records nothing of that file; what the user cannot read gets no hash."""
    _base, secret, work = users_dir
    mine, sealed, out = work / "mine.csv", work / "sealed.csv", work / "out.csv"
    mine.write_bytes(b"1,2\n")
    _give(mine, test_user)
    sealed.write_bytes(b"root's numbers\n")  # root's 0600 file in the user's directory
    os.chmod(sealed, 0o600)
    run = Run(store, uid=test_user.pw_uid)
    run.read(mine)
    run.read(sealed)
    run.write(out, b"result\n")
    out.unlink()
    out.symlink_to(secret)  # the user swaps its output for a link to root's file
    _give(out, test_user)
    run.end()
    store.flush()
    fps = {p: json.loads(b) for _s, _r, _k, p, _p2, b in store.records(run.rid, (S.FINGERPRINT,))}
    secret_st = os.stat(secret)
    assert fps[str(out)] == {**{k: fps[str(out)][k] for k in ("cell", "at_us")}, "type": "symlink",
                             "sha256": None, "hash_skipped": "a symlink (not followed)"}
    assert secret_st.st_size not in (fps[str(out)].get("size_bytes"),)
    assert fps[str(sealed)]["sha256"] is None
    assert fps[str(sealed)]["hash_skipped"] == "unreadable: permission denied"
    assert fps[str(mine)]["sha256"] == hashlib.sha256(b"1,2\n").hexdigest()
    doc = load_run(store, run.rid)
    assert {f["path"]: f.get("sha256") for f in doc["files"] if f["path"] == str(out)} == {str(out): None}


@pytest.mark.privileged
def test_stale_is_no_oracle_on_a_root_only_file(store, test_user, users_dir):
    """stale re-reads files on every call: as the owner, never following a symlink,
    so a root-only target changing makes no difference to the user's result."""
    _base, secret, work = users_dir
    linked, swapped = work / "linked.csv", work / "swapped.csv"
    run = Run(store, uid=test_user.pw_uid)
    run.write(linked, b"a\n")
    run.write(swapped, b"b\n")
    for p in (linked, swapped):
        _give(p, test_user)
    linked.unlink()
    linked.symlink_to(secret)  # a symlink at the run's end
    run.end()
    swapped.unlink()
    swapped.symlink_to(secret)  # a symlink after it
    before = staleness(store)
    secret.write_text("root changed it\n")
    after = staleness(store)
    assert before == after
    unchecked = [u for group in before.values() for x in group for u in x["unchecked"]]
    assert {"path": str(linked), "role": "output",
            "why": "not fingerprinted: a symlink (not followed)"} in unchecked
    secret.unlink()
    assert staleness(store) == before  # not even its deletion shows
