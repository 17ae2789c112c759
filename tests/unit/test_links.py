"""Links and directories without root: decoded records, the Tracker's folding,
and hard-link versions (issue 13). The same on real kernels:
tests/integration/test_capture_links.py."""

from __future__ import annotations

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.capture.decode import Decoder
from provtrace.tracer.lineage import versions as V
from provtrace.tracer.model import events as E

from .test_decode import PID, TAG, TID, TS, _put, _rec, _trim
from .test_model import AT_FDCWD, CREATED, O_WRONLY, P, REG, T


class LinkSink(T):
    """test_model's T, with a sink that also keeps link and directory records."""

    def __init__(self) -> None:
        super().__init__()
        self.sink.links, self.sink.dirs = [], []
        self.sink.on_link = self.sink.links.append
        self.sink.on_dir = self.sink.dirs.append

    def resolved(self, pid, fd, path):
        self.tr.handle(E.Resolved(self._t(), pid, pid, 1, fd, path))

    def link(self, pid, old, new, op=L.LINK_HARD, olddirfd=AT_FDCWD, flags=0):
        self.tr.handle(E.Link(self._t(), pid, pid, 1, op, olddirfd, AT_FDCWD, flags, old, new))


@pytest.fixture
def t():
    t = LinkSink()
    t.tr.add_root(P, t._t(), ["x"], "/w", 1000)
    return t


def _files(t, pid=P):
    return {fa.path: fa for fa in t.done().by_pid(pid)[0].files.values()}


# -- decode ----------------------------------------------------------------------

def test_resolved_names_come_leaf_first():
    names = b"a.csv\0raw\0data\0"
    obj = _rec(L.ResolvedEvent, L.EV_RESOLVED, fd=4, len=len(names), truncated=0)
    _put(obj, "names", names)
    ev = Decoder().decode(_trim(obj, "names", len(names)))
    assert ev == E.Resolved(TS, PID, TID, TAG, 4, "/data/raw/a.csv")


def test_resolved_cut_short_has_no_path():
    obj = _rec(L.ResolvedEvent, L.EV_RESOLVED, fd=4, len=2, truncated=1)
    _put(obj, "names", b"x\0")
    assert Decoder().decode(_trim(obj, "names", 2)).path is None


def test_link_and_mkdir_records():
    obj = _rec(L.LinkEvent, L.EV_LINK, op=L.LINK_SYMBOLIC, olddirfd=-100, newdirfd=5, flags=0,
               old_len=5, new_len=4)
    _put(obj, "oldpath", b"../a\0")
    _put(obj, "newpath", b"sym\0")
    d = Decoder()
    assert d.decode(_trim(obj, "newpath", 4)) == E.Link(TS, PID, TID, TAG, L.LINK_SYMBOLIC, -100, 5, 0,
                                                        "../a", "sym")
    m = _rec(L.MkdirEvent, L.EV_MKDIR, dirfd=-100, mode=0o755, path_len=3)
    _put(m, "path", b"d1\0")
    assert d.decode(_trim(m, "path", 3)) == E.Mkdir(TS, PID, TID, TAG, -100, 0o755, "d1")
    assert d.bad == 0


# -- the Tracker -----------------------------------------------------------------

def test_open_through_a_symlink_is_recorded_on_the_file_reached(t):
    t.resolved(P, 3, "/data/a")
    t.open(P, 3, "sym", ino=7)
    t.io(P, 3, ino=7, r=10)
    fa = _files(t)["/data/a"]
    assert fa.access == {"read"} and fa.bytes_read == 10 and fa.via == {"/w/sym"}


def test_a_resolved_path_for_another_fd_is_not_taken(t):
    t.resolved(P, 9, "/data/a")
    t.open(P, 3, "plain", ino=7)
    t.io(P, 3, ino=7, r=1)
    files = _files(t)
    assert "/w/plain" in files and files["/w/plain"].via is None


def test_a_cut_resolution_keeps_the_name_used_and_says_so(t):
    t.resolved(P, 3, None)
    t.open(P, 3, "sym", ino=7)
    t.io(P, 3, ino=7, r=1)
    assert "/w/sym" in _files(t)
    assert t.tr.gaps == {"resolved_path_truncated": 1}


@pytest.mark.parametrize("how", ["proc", "empty_path"])
def test_o_tmpfile_linked_into_place_is_written_under_its_final_name(t, how):
    t.open(P, 3, ".", ino=9, flags=0o20200000 | O_WRONLY, fmode=CREATED, imode=REG)
    if how == "proc":
        t.link(P, "/proc/self/fd/3", "out.csv", flags=0x400)  # AT_SYMLINK_FOLLOW
    else:
        t.link(P, "", "out.csv", olddirfd=3, flags=0x1000)  # AT_EMPTY_PATH
    t.io(P, 3, ino=9, w=6)
    files = _files(t)
    assert set(files) == {"/w/out.csv"}
    assert files["/w/out.csv"].access == {"create", "write"} and files["/w/out.csv"].bytes_written == 6
    assert [(r.op, r.src, r.dst) for r in t.sink.links] == [("link", None, "/w/out.csv")]
    assert t.tr.gaps == {}


def test_links_and_directories_are_records(t):
    t.link(P, "a", "hard")
    t.link(P, "../a", "sub/sym", op=L.LINK_SYMBOLIC)
    t.tr.handle(E.Mkdir(t._t(), P, P, 1, AT_FDCWD, 0o755, "d"))
    t.tr.handle(E.Unlink(t._t(), P, P, 1, AT_FDCWD, 0x200, "d"))
    t.done()
    assert [(r.op, r.src, r.dst, r.target) for r in t.sink.links] == [
        ("link", "/w/a", "/w/hard", None), ("symlink", "/w/a", "/w/sub/sym", "../a")]
    assert [(d.op, d.path) for d in t.sink.dirs] == [("mkdir", "/w/d"), ("rmdir", "/w/d")]


def test_nested_interpreters_are_followed(t, tmp_path):
    inner = tmp_path / "inner"
    inner.write_text("#!/bin/sh\n")
    outer = tmp_path / "outer"
    outer.write_text(f"#!{inner} -x\n")
    loop = tmp_path / "loop"
    loop.write_text(f"#!{loop}\n")
    t.exec(P, str(outer))
    t.fork(P, P + 1)
    t.exec(P + 1, str(loop))
    sink = t.done()
    p = sink.by_pid(P)[0]
    assert p.exe == "/bin/sh"
    assert {fa.path for fa in p.files.values() if "exec" in fa.access} == {str(outer), str(inner), "/bin/sh"}
    assert sink.by_pid(P + 1)[0].exe == str(loop), "a script naming itself stops, no loop"


# -- versions ----------------------------------------------------------------------

W, R = V.Act(1, 10), V.Act(2, 20)


def _link(t, seq, act, src, dst):
    """A LINK record's events: link from on src, link onto dst."""
    return {src: [V.Event(t, seq, V.LINK_OUT, act, other=dst)], dst: [V.Event(t, seq, V.LINK_IN, act, other=src)]}


def _merge(*dicts):
    out: dict[str, list] = {}
    for d in dicts:
        for k, v in d.items():
            out.setdefault(k, []).extend(v)
    return out


def test_a_hard_link_is_the_file_it_names():
    h = V.build(_merge(_link(10, 1, W, "/a", "/hard"), {"/hard": [V.Event(20, 2, V.READ, R)]}))
    (a1,), (h1,) = h["/a"].versions, h["/hard"].versions
    assert a1.how == "outside" and h1.how == "link" and h1.linked_from is a1 and a1.linked_to == [h1]
    assert h1.reads and h1.reads[0].act == R


def test_a_write_through_one_name_is_a_new_version_of_the_other():
    h = V.build(_merge(_link(10, 1, W, "/a", "/hard"),
                       {"/hard": [V.Event(20, 2, V.WRITE, R, whole=False)]}))
    a2 = h["/a"].versions[-1]
    h2 = h["/hard"].versions[-1]
    assert h2.how == "write" and h2.act == R
    assert a2.how == "link" and a2.linked_from is h2 and h["/a"].at(V.FOREVER) is a2


def test_a_deleted_name_is_no_longer_linked():
    h = V.build(_merge(_link(10, 1, W, "/a", "/hard"),
                       {"/hard": [V.Event(20, 2, V.DELETE, W)], "/a": [V.Event(30, 3, V.WRITE, R)]}))
    assert [v.how for v in h["/hard"].versions] == ["link"]
    assert h["/hard"].at(V.FOREVER) is None


def test_a_rename_carries_the_link_along():
    h = V.build(_merge(_link(10, 1, W, "/a", "/hard"),
                       {"/hard": [V.Event(20, 2, V.RENAME_OUT, W, other="/moved")],
                        "/moved": [V.Event(20, 2, V.RENAME_IN, W, other="/hard")],
                        "/a": [V.Event(30, 3, V.WRITE, R)]}))
    moved = h["/moved"].at(V.FOREVER)
    assert moved.how == "link" and moved.linked_from is h["/a"].at(V.FOREVER)
