"""Links, directories and nested interpreters against the real kernel (issue 13,
section 2), each scenario on both backends: the loaded probes and ptrace.

What a user expects: a file read through a symlink or a hard link is a read of
the file the bytes came from, so lineage reaches it; a write through one name
of a hard-linked file is a new version of its other names; an O_TMPFILE file
linked into place is a write of its final name; link, symlink, mkdir and rmdir
show in `provtrace show --json`; and a link cycle, a dangling symlink or a
path at PATH_MAX through a symlink give a correct record or a recorded gap.
"""

from __future__ import annotations

import json
import os

import pytest

from provtrace.tracer.capture.ptrace import PtraceCapture

from .helpers import accesses, entries, pt, trace, trace_py

pytestmark = pytest.mark.privileged


@pytest.fixture(params=["ebpf", "ptrace", "ptrace-stepping"])
def cap(request):
    """The probes (the session's loaded set), or ptrace with its seccomp filter or
    stopping at every syscall (its fallback)."""
    if request.param == "ebpf":
        return request.getfixturevalue("capture")
    return PtraceCapture(seccomp=request.param == "ptrace")


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    return d


def _db(work) -> str:
    return str(work.parent / "store.db")


def _lineage(work, path, *opts) -> dict:
    return json.loads(pt("lineage", str(path), "--db", _db(work), "--json", *opts, check=True).stdout)


def _file_paths(doc: dict) -> set[str]:
    return {n["path"] for n in doc["nodes"] if n["kind"] == "file"}


def test_link_symlink_mkdir_rmdir_are_recorded(cap, work):
    (work / "a").write_text("a\n")
    code, doc = trace_py(cap, """
        import os
        os.symlink("a", "sym")                       # symlink
        d = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        os.symlink("../a", "sym2", dir_fd=d)         # symlinkat: target text kept as written
        os.link("a", "hard")                         # linkat(AT_FDCWD, ...)
        os.mkdir("d1")                               # mkdir
        os.mkdir("d2", dir_fd=d)                     # mkdirat
        os.link("a", "d2/hard2", dst_dir_fd=d)
        os.rmdir("d1")                               # rmdir
        os.unlink("d2/hard2")
        os.rmdir("d2", dir_fd=d)                     # unlinkat(AT_REMOVEDIR)
    """, cwd=work)
    assert code == 0
    w = str(work)
    links = {(x["op"], x["from"], x["to"], x["target"]) for x in doc["links"]}
    assert ("symlink", f"{w}/a", f"{w}/sym", "a") in links
    assert ("symlink", os.path.dirname(w) + "/a", f"{w}/sym2", "../a") in links
    assert ("link", f"{w}/a", f"{w}/hard", None) in links
    assert ("link", f"{w}/a", f"{w}/d2/hard2", None) in links
    dirs = [(x["op"], x["path"]) for x in doc["directories"]]
    assert dirs == [("mkdir", f"{w}/d1"), ("mkdir", f"{w}/d2"), ("rmdir", f"{w}/d1"), ("rmdir", f"{w}/d2")]
    assert all(x["time"] and x["pid"] for x in doc["links"] + doc["directories"])
    assert doc["run"]["complete"] is True


def test_reading_through_links_reaches_the_file(cap, work):
    """The issue's example: lineage of out reaches a, through both the symlink and the hard link."""
    (work / "a").write_text("from a\n")
    code, doc = trace(cap, ["sh", "-c", "ln -s a sym; ln a hard; cat sym hard > out"], cwd=work, db=_db(work))
    assert code == 0
    # the read through sym is a read of a, made by the name sym
    read_a = [f for f in entries(doc, work / "a") if "read" in f["access"]]
    assert read_a and read_a[0]["via"] == [str(work / "sym")]
    assert not entries(doc, work / "sym"), "sym holds no bytes: the read is a's"
    assert "read" in accesses(doc, work / "hard")
    up = _lineage(work, work / "out")
    assert str(work / "a") in _file_paths(up), up
    assert _lineage(work, work / "sym")["root"] == str(work / "a"), "a symlink's lineage is its file's"
    linked = [e for e in up["edges"] if e["rel"] == "linked"]
    assert linked and linked[0]["from"].startswith(f"file:{work}/a@"), up["edges"]
    # show --json carries the same: the link records and the via
    shown = json.loads(pt("show", "last", "--db", _db(work), "--json", check=True).stdout)
    assert {x["op"] for x in shown["links"]} == {"symlink", "link"}
    assert any(f.get("via") == [str(work / "sym")] for f in shown["files"])
    text = pt("show", "last", "--db", _db(work), check=True).stdout
    assert f"{work}/a  (via {work}/sym)" in text and f"symlink {work}/sym -> {work}/a" in text


def test_write_through_a_hard_link_is_a_new_version_of_the_other_name(cap, work):
    (work / "a").write_text("one\n")
    trace(cap, ["ln", "a", "hard"], cwd=work, db=_db(work))
    code, doc = trace(cap, ["sh", "-c", "echo two >> hard"], cwd=work, db=_db(work))
    assert code == 0
    up = _lineage(work, work / "a")
    assert up["current"]["run"] == doc["run"]["id"], "a's current bytes were written through hard"
    assert up["current"]["changed_outside_tracing"] is False
    writers = [n for n in up["nodes"] if n["kind"] == "process" and n["run"] == doc["run"]["id"]]
    assert writers, up


def test_o_tmpfile_linked_into_place_is_a_write_of_the_final_name(cap, work):
    # the two ways open(2) gives: linkat of /proc/self/fd/N with AT_SYMLINK_FOLLOW
    # (os.link with a dir_fd), and linkat(fd, "", ..., AT_EMPTY_PATH) (root may)
    code, doc = trace_py(cap, """
        import ctypes, os
        d = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644)
        os.write(fd, b"atomic")
        os.link(f"/proc/self/fd/{fd}", "final.txt", dst_dir_fd=d)
        os.close(fd)
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644)
        os.write(fd, b"second")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.linkat(fd, b"", -100, b"final2.txt", 0x1000) != 0:   # AT_FDCWD, AT_EMPTY_PATH
            raise OSError(ctypes.get_errno(), "linkat")
        os.close(fd)
    """, cwd=work, db=_db(work))
    assert code == 0
    for name in ("final.txt", "final2.txt"):
        assert {"create", "write"} <= accesses(doc, work / name), name
        assert sum(f["bytes_written"] for f in entries(doc, work / name)) == 6
    # the directory O_TMPFILE was opened in is no file written (Python's import system may list
    # it, which is a read of the directory)
    assert accesses(doc, work) <= {"read"}, "the directory O_TMPFILE was opened in is no file written"
    assert sorted((x["from"], x["to"]) for x in doc["links"]) == [
        (None, str(work / "final.txt")), (None, str(work / "final2.txt"))]
    up = _lineage(work, work / "final.txt")
    assert up["current"]["run"] == doc["run"]["id"]


def test_nested_interpreters_every_level_recorded(cap, work):
    inner = work / "inner.sh"
    inner.write_text('#!/bin/sh\necho "inner $*" > out.txt\n')
    outer = work / "outer.sh"
    outer.write_text(f"#!{inner}\nnot shell\n")
    for s in (inner, outer):
        s.chmod(0o755)
    code, doc = trace(cap, [str(outer), "x"], cwd=work)
    assert code == 0
    assert (work / "out.txt").read_text().startswith("inner ")
    for exe in (outer, inner, "/bin/sh"):
        assert "exec" in accesses(doc, exe), exe
    root = [p for p in doc["processes"] if str(inner) in p["argv"]]
    assert root and root[0]["exe"] == "/bin/sh", "exe is the binary that really runs"


def test_link_cycle_and_dangling_symlink(cap, work):
    code, doc = trace(cap, ["sh", "-c",
                            "ln -s l1 l2; ln -s l2 l1; cat l1; "            # ELOOP: a failed open
                            "ln -s missing dang; echo x > dang; cat dang > copy"], cwd=work)
    assert code == 0
    assert doc["run"]["complete"] is True
    assert {(x["to"], x["target"]) for x in doc["links"]} >= {
        (str(work / "l2"), "l1"), (str(work / "l1"), "l2"), (str(work / "dang"), "missing")}
    # writing through a dangling symlink creates its target: that is the file written and read
    made = entries(doc, work / "missing")
    assert {"create", "write", "read"} <= accesses(doc, work / "missing")
    assert all(f["via"] == [str(work / "dang")] for f in made)
    assert not entries(doc, work / "l1") and not entries(doc, work / "dang")


def test_path_at_path_max_through_a_symlink(cap, work):
    # a file whose path is PATH_MAX - 1 (4095) bytes, read through a short symlink
    parts, total = [], len(str(work))
    while total < 4095 - 300:
        parts.append("d" * 200)
        total += 201
    deep = os.path.join(str(work), *parts)
    os.makedirs(deep)
    target = os.path.join(deep, "f" * (4095 - total - 1))
    assert len(target) == 4095
    with open(target, "w") as f:
        f.write("deep\n")
    os.symlink(target, work / "s")
    code, doc = trace(cap, ["cat", "s"], cwd=work)
    assert code == 0
    if doc["run"]["gaps"].get("resolved_path_truncated"):
        assert "read" in accesses(doc, work / "s"), "cut: recorded under the name used, and said"
    else:
        assert "read" in accesses(doc, target)
        assert entries(doc, target)[0]["via"] == [str(work / "s")]


def test_a_path_too_deep_to_resolve_is_a_recorded_gap(cap, work):
    # 80 components below the symlink's target: deeper than the probes walk (PT_RESOLVE_DEPTH)
    deep = os.path.join(str(work), *(["d"] * 80))
    os.makedirs(deep)
    with open(os.path.join(deep, "f"), "w") as f:
        f.write("deep\n")
    os.symlink(os.path.join(deep, "f"), work / "s")
    code, doc = trace(cap, ["cat", "s"], cwd=work)
    assert code == 0
    assert doc["run"]["gaps"].get("resolved_path_truncated") == 1
    assert "read" in accesses(doc, work / "s"), "recorded under the name used"


def test_through_the_daemon(daemon, work):
    """The daemon traces with the same probes and serves the same document over its socket."""
    (work / "a").write_text("from a\n")
    out = work / "r.json"
    pt("run", "--socket", daemon["socket"], "--json-out", str(out), "--", "sh", "-c",
       "ln -s a sym; ln a hard; mkdir d; cat sym hard > out", cwd=work, check=True)
    run_id = json.loads(out.read_text())["run"]["id"]
    shown = json.loads(pt("show", run_id, "--socket", daemon["socket"], "--json", check=True).stdout)
    assert {(x["op"], x["to"]) for x in shown["links"]} == {("symlink", str(work / "sym")),
                                                          ("link", str(work / "hard"))}
    assert [(d["op"], d["path"]) for d in shown["directories"]] == [("mkdir", str(work / "d"))]
    assert any(f["path"] == str(work / "a") and f.get("via") == [str(work / "sym")] for f in shown["files"])
    up = json.loads(pt("lineage", str(work / "out"), "--socket", daemon["socket"], "--json", check=True).stdout)
    assert str(work / "a") in _file_paths(up)


def test_symlinks_with_the_same_file_name_and_symlinked_folders(cap, work):
    """The forms data projects use: a link named like its target in another
    folder, a folder that is a symlink, and a bare name read in the link's folder."""
    for d in ("raw", "in", "real"):
        (work / d).mkdir()
    (work / "raw" / "data.csv").write_text("1\n")
    (work / "real" / "x.csv").write_text("2\n")
    os.symlink("../raw/data.csv", work / "in" / "data.csv")
    os.symlink(work / "real", work / "datalink")
    code, doc = trace(cap, ["sh", "-c", "cat in/data.csv datalink/x.csv; cd in && cat data.csv ./data.csv"],
                      cwd=work)
    assert code == 0
    raw = entries(doc, work / "raw" / "data.csv")
    assert len(raw) == 2 and all(f["via"] == [str(work / "in" / "data.csv")] for f in raw)
    assert entries(doc, work / "real" / "x.csv")[0]["via"] == [str(work / "datalink" / "x.csv")]
    assert not entries(doc, work / "in" / "data.csv") and not entries(doc, work / "datalink" / "x.csv")
