"""File versions: which write produced the bytes a read saw, computed at query time.

The store keeps what capture saw (one FILE record per process and path, with
its access bits and first and last access times; RENAME records; FINGERPRINT
records taken when a run or cell ended). Nothing here runs per syscall: a
path's history is built from its records when a query first asks about it.

A path's history is a list of versions, in time order:

- ``write``: a traced process wrote, created or truncated the path; the
  version starts at its write-close (the record's last access). A write that
  neither created nor truncated updates the version before it (``prev``).
- ``rename``: a traced rename put another path's version here (``src_path``).
- ``outside``: content no traced process produced: a path that was read before
  any traced write (it existed before tracing), or one whose fingerprint no
  longer matches the last traced version (changed outside tracing). Such a
  version starts right after the last moment the old content was known to be
  there, so reads after that moment see it.

- ``link``: a hard link made the path another name of a file (``linked_from``
  is that file's version under the name it was linked from), or a write
  through another name of the same file changed it (``linked_from`` is the
  version that write made there). Names stay linked until one is deleted,
  renamed away or replaced; a rename carries its name's links along.

A delete, a rename away, or a fingerprint that found the file gone ends the
current version; the path is then absent until the next version.

Every read is bound to the version current when the read began (its first
access). A read by a process that created the path, with no version there
before, is the process reading its own output and is bound to nothing.

Events are ordered by time on one clock (the store's wall-clock microseconds,
converted from CLOCK_MONOTONIC once per run by the writer), ties by the
store's record order. ``Model`` is the query API; ``history`` is the pure
function over one path's events that the property tests exercise.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from ..store import sqlite as S
from ..store.writer import KIND_CODES
from ..store.writer import ACCESS_BITS

WRITE_BITS = ACCESS_BITS["write"] | ACCESS_BITS["create"] | ACCESS_BITS["truncate"]
WHOLE_BITS = ACCESS_BITS["create"] | ACCESS_BITS["truncate"]
READ_BITS = ACCESS_BITS["read"]
DELETE_BITS = ACCESS_BITS["delete"]

# event operations on one path
WRITE, READ, DELETE, RENAME_IN, RENAME_OUT, FP = "write", "read", "delete", "rename_in", "rename_out", "fp"
LINK_IN, LINK_OUT = "link_in", "link_out"  # a hard link made onto this path / from it
# order of a record's own events at one instant: read, then write, then delete
_SUB = {READ: 0, FP: 0, LINK_OUT: 0, WRITE: 1, RENAME_OUT: 1, RENAME_IN: 2, LINK_IN: 2, DELETE: 3}
NEVER = (-math.inf, 0, 0.0)
# most paths built together because renames link them (a name reused by
# thousands of runs); beyond it a moved version's fingerprint may be unknown
_COMPONENT_CAP = 20000
FOREVER = (math.inf, 0, 0.0)


@dataclass(frozen=True, order=True)
class Act:
    """Who did something: a process of a run, or a notebook cell of a run."""

    rid: int
    pid: int | None = None
    cell: str | None = None

    @property
    def unit(self) -> tuple:
        """The activity lineage shows: the cell when there is one, else the process."""
        return ("cell", self.rid, self.cell) if self.cell is not None else ("proc", self.rid, self.pid)


@dataclass(frozen=True)
class Event:
    """One thing that happened to a path. key orders events: (time us, record seq, sub-order)."""

    t: float
    seq: int
    op: str
    act: Act | None = None
    other: str | None = None  # a rename's other path
    fp: dict | None = None  # a fingerprint's body
    whole: bool = True  # a write that created or truncated (else it updated the previous content)
    created: bool = False  # a read by a process that created the path (capture checks it did not exist)
    key: tuple = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.t, self.seq, float(_SUB[self.op])))


@dataclass(frozen=True)
class Read:
    act: Act
    key: tuple


@dataclass(eq=False)
class Version:
    path: str
    n: int  # 1, 2, ... in the path's history
    how: str  # "write" | "rename" | "outside"
    start: tuple  # event key when it became current
    act: Act | None = None  # None: no traced process
    src_path: str | None = None  # rename: where it came from
    prev: Version | None = None  # an update in place: the content it started from
    fp: dict | None = None  # content identity, when a fingerprint saw it
    end: tuple | None = None  # when it stopped being current (None: still is)
    reads: list[Read] = field(default_factory=list)
    moved_to: list[tuple[str, tuple]] = field(default_factory=list)  # (path, key) of renames away
    updated_by: list[Version] = field(default_factory=list)
    observed: tuple = NEVER  # last moment its content was known to be there
    fp_problem: str | None = None  # why the latest fingerprint of it says nothing (a symlink, unreadable)
    ended_by: Act | None = None  # the delete or rename that ended it (None: still current, or not traced)
    linked_from: Version | None = None  # how == "link": the same file's version under another name
    linked_to: list[Version] = field(default_factory=list)  # versions of other names it became

    @property
    def t_us(self) -> int | None:
        return None if not math.isfinite(self.start[0]) else int(self.start[0])

    def __repr__(self) -> str:  # short, for test failures
        return f"<{self.path}@{self.n} {self.how} {self.act}>"


@dataclass
class History:
    path: str
    versions: list[Version]
    moved_out: dict[tuple, Version]  # (t, seq) of a rename away -> the version it moved
    _made: dict[tuple, Version] | None = field(default=None, repr=False)
    _renamed: dict[tuple, Version] | None = field(default=None, repr=False)

    def at(self, key: tuple) -> Version | None:
        """The version current at key (None: the path was absent, or unknown then)."""
        for v in reversed(self.versions):
            if v.start <= key:
                return v if v.end is None or v.end > key else None
        return None

    def made_by(self, act: Act, t: float) -> Version | None:
        """The version act wrote (or renamed here) at time t."""
        if self._made is None:  # one index, not a scan per question (a path may have thousands)
            self._made = {}
            for v in self.versions:
                self._made.setdefault((v.act, v.start[0]), v)
        return self._made.get((act, t))

    def made_by_rename(self, key: tuple) -> Version | None:
        """The version the rename at key (its time and record) put here."""
        if self._renamed is None:
            self._renamed = {v.start[:2]: v for v in self.versions if v.how == "rename"}
        return self._renamed.get(key[:2])


def same_content(a: dict, b: dict) -> bool:
    """Whether two fingerprints show the same bytes: sha256 when both have it,
    else size, mtime and inode."""
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return all(a.get(k) == b.get(k) for k in ("size_bytes", "mtime_ns", "inode"))


def history(path: str, events: list[Event]) -> History:
    """The versions of path from its events (any order), reads bound to them."""
    return build({path: events})[path]


def build(events: dict[str, list[Event]]) -> dict[str, History]:
    """The histories of paths linked by renames, built in one pass in time order,
    so a renamed version keeps the content identity (fingerprint) it had."""
    b = _Builder(events)
    for path, ev in sorted(((p, e) for p, evs in events.items() for e in evs), key=lambda pe: pe[1].key):
        b.step(path, ev)
    return {path: History(path, b.versions[path], b.moved_out[path]) for path in events}


class _Builder:
    """Per-path state of build(): the versions so far, the current one, the last event."""

    def __init__(self, paths) -> None:
        self.versions: dict[str, list[Version]] = {p: [] for p in paths}
        self.moved_out: dict[str, dict[tuple, Version]] = {p: {} for p in paths}
        self.cur: dict[str, Version | None] = dict.fromkeys(paths)
        self.last: dict[str, tuple] = dict.fromkeys(paths, NEVER)
        self.alias: dict[str, set[str]] = {}  # path -> the other names of its file (hard links)
        self.moved_alias: dict[tuple, set[str]] = {}  # (path, rename key) -> the links it took along

    def new(self, path: str, how: str, start: tuple, act: Act | None = None, **kw) -> Version:
        cur = self.cur[path]
        if cur is not None and cur.end is None:
            cur.end = start
        vs = self.versions[path]
        v = Version(path, len(vs) + 1, how, start, act, observed=start, **kw)
        vs.append(v)
        self.cur[path] = v
        return v

    def existing(self, path: str) -> Version:
        """The current version; content nobody traced made when there is none."""
        cur = self.cur[path]
        return cur if cur is not None else self.new(path, "outside", _just_after(self.last[path]))

    def end(self, path: str, key: tuple, act: Act | None = None) -> None:
        cur = self.cur[path]
        if cur is not None:
            cur.end = key
            cur.ended_by = act
        self.cur[path] = None

    def step(self, path: str, ev: Event) -> None:
        key = ev.key
        if ev.op == WRITE:
            prev = None if ev.whole else self.cur[path]
            v = self.new(path, "write", key, ev.act, prev=prev)
            if prev is not None:
                prev.updated_by.append(v)
            for other in sorted(self.alias.get(path, ())):  # the same file under its other names
                self.linked(other, key, ev.act, v)
        elif ev.op == RENAME_IN:
            src = self.moved_out.get(ev.other, {}).get(key[:2])
            self.new(path, "rename", key, ev.act, src_path=ev.other, fp=src.fp if src else None)
            self.unlink(path)
            for other in self.moved_alias.pop((ev.other, key[:2]), ()):
                self.join(path, other)
        elif ev.op == RENAME_OUT:
            v = self.existing(path)
            v.moved_to.append((ev.other, key))
            self.moved_out[path][key[:2]] = v
            self.end(path, key, ev.act)
            self.moved_alias[(path, key[:2])] = self.unlink(path)
        elif ev.op == DELETE:
            self.end(path, key, ev.act)
            self.unlink(path)
        elif ev.op == LINK_OUT:
            self.existing(path)
        elif ev.op == LINK_IN:
            src = self.cur.get(ev.other)
            if src is not None:
                self.linked(path, key, ev.act, src)
                self.join(path, ev.other)
        elif ev.op == READ:
            if not (self.cur[path] is None and ev.created):  # else: it reads back what it created itself
                self.existing(path).reads.append(Read(ev.act, key))
        elif ev.op == FP:
            self.fingerprint(path, ev.fp, key)
        self.last[path] = key

    def linked(self, path: str, key: tuple, act: Act | None, src: Version) -> None:
        """A version of path that is src's file under this name."""
        v = self.new(path, "link", key, act, src_path=src.path, fp=src.fp)
        v.linked_from = src
        src.linked_to.append(v)

    def join(self, path: str, other: str) -> None:
        """path becomes one more name of other's file."""
        group = {other} | self.alias.get(other, set())
        group.discard(path)
        for q in group:
            self.alias.setdefault(q, set()).add(path)
        self.alias[path] = group

    def unlink(self, path: str) -> set[str]:
        """path no longer names its file; the names it shared the file with."""
        group = self.alias.pop(path, set())
        for q in group:
            self.alias.get(q, set()).discard(path)
        return group

    def fingerprint(self, path: str, fp: dict, key: tuple) -> None:
        """Match a fingerprint against the current version: adopt it, confirm it,
        or start a version changed outside tracing; one that found the file gone
        ends the current version."""
        if fp.get("error") == "vanished":
            self.end(path, key)
            return
        if fp.get("error") or fp.get("type") not in (None, "file"):
            # unreadable, or not a regular file: says nothing of the content
            if self.cur[path] is not None:
                self.cur[path].fp_problem = fp.get("error") or fp.get("hash_skipped") or "not a regular file"
            return
        cur = self.cur[path]
        if cur is None:
            self.existing(path).fp = fp
        elif cur.fp is None:
            cur.fp = fp
        elif not same_content(cur.fp, fp):
            # changed after it was last seen as it was: reads since then saw the new content
            v = self.new(path, "outside", _just_after(cur.observed), fp=fp)
            v.reads = [r for r in cur.reads if r.key > v.start]
            cur.reads = [r for r in cur.reads if r.key <= v.start]
        self.cur[path].observed = key
        self.cur[path].fp_problem = None


def _just_after(key: tuple) -> tuple:
    return (key[0], key[1], key[2] + 0.5)


# ---- the store as a source of events ----------------------------------------

@dataclass
class FileRec:
    """One FILE record: one process's accesses to one path in one run."""

    path: str
    act: Act
    bits: int
    first: int
    last: int
    kind: str


class Model:
    """Versions over one store, built per path on first use (indexed queries:
    records by path, renames by source, records by run).

    uid: only that uid's runs count (the daemon's non-root caller); what other
    users' runs did to a path looks like changes made outside tracing.
    now: fingerprints of paths as they are now (path -> fingerprint body),
    matched against the last traced version like any other fingerprint.
    config: its [classify] rules override the kinds stored with FILE records."""

    def __init__(self, store: S.Store, uid: int | None = None, now: dict[str, dict] | None = None,
                 config=None) -> None:
        self.db = store.db
        self.config = config
        self.run_ids = _RunIds(self.db)
        self.visible = None if uid is None else {rid for (rid,) in self.db.execute(
            "SELECT rid FROM runs WHERE uid=?", (uid,))}
        self.now = now or {}
        self._base: dict[int, int] = {}
        self._hist: dict[str, History] = {}
        self._run_files: dict[int, list[FileRec]] = {}
        self._procs: dict[int, dict[int, dict]] = {}
        self._reads: dict[str, dict[tuple, Version]] = {}  # path -> (act, time) of a read -> its version

    def sees(self, rid: int) -> bool:
        return self.visible is None or rid in self.visible

    def base_us(self, rid: int) -> int:
        if rid not in self._base:
            self._bases([rid])
        return self._base[rid]

    def _bases(self, rids) -> None:
        """The start times (every body time is relative to it) of runs, a chunk per query."""
        todo = [r for r in set(rids) if r not in self._base]
        for i in range(0, len(todo), 500):
            chunk = todo[i: i + 500]
            self._base.update(dict.fromkeys(chunk, 0))
            self._base.update((rid, us or 0) for rid, us in self.db.execute(
                f"SELECT rid, json_extract(body, '$.start_us') FROM records WHERE kind={S.RUN_START} "
                f"AND rid IN ({','.join('?' * len(chunk))})", chunk))

    def _path_id(self, path: str) -> int | None:
        row = self.db.execute("SELECT id FROM paths WHERE path=?", (os.fsencode(path),)).fetchone()
        return row[0] if row else None

    def history(self, path: str) -> History:
        """path's versions; built with every path renames link it to (so a moved
        version keeps its content identity), all at once."""
        if path not in self._hist:
            events: dict[str, list[Event]] = {}
            todo = [path]
            while todo and len(events) < _COMPONENT_CAP:
                p = todo.pop()
                if p in events or p in self._hist:
                    continue
                events[p], partners = self._events(p)
                todo += partners
            built = build(events)
            self._hist.update({p: h for p, h in built.items() if p not in self._hist})
        return self._hist[path]

    def _events(self, path: str) -> tuple[list[Event], set[str]]:
        """path's events, and the paths renamed onto it or from it."""
        events: list[Event] = []
        partners: set[str] = set()
        if path in self.now:
            events.append(Event(math.inf, 0, FP, fp=self.now[path]))
        pid = self._path_id(path)
        if pid is None:
            return events, partners
        rows = self.db.execute(
            "SELECT r.seq, r.rid, r.kind, p.path, r.body FROM records r LEFT JOIN paths p ON p.id=r.p2 "
            "WHERE r.p1=? AND r.kind IN (?,?,?)", (pid, S.FILE, S.RENAME, S.FINGERPRINT)).fetchall()
        # kind=4 literally (S.RENAME): it lets SQLite use the partial index on p2
        rows += [(seq, rid, -S.RENAME, dst, body) for seq, rid, dst, body in self.db.execute(
            "SELECT r.seq, r.rid, p.path, r.body FROM records r JOIN paths p ON p.id=r.p1 "
            "WHERE r.kind=4 AND r.p2=?", (pid,))]
        rows += self._link_rows(pid)
        self._bases(rid for _s, rid, _k, _o, _b in rows)
        for seq, rid, kind, other, body in rows:
            if not self.sees(rid):
                continue
            b = json.loads(body)
            base = self.base_us(rid)
            if kind == S.FILE:
                events += file_events(seq, FileRec(path, Act(rid, b[0], b[6]), b[1], base + (b[4] or 0),
                                                   base + (b[5] or 0), self.kind(path, b[7])))
            elif kind in (S.RENAME, -S.RENAME):
                pid_, t, cell = b
                op = RENAME_IN if kind == S.RENAME else RENAME_OUT
                events.append(Event(base + (t or 0), seq, op, Act(rid, pid_, cell), other=os.fsdecode(other)))
                partners.add(os.fsdecode(other))
            elif kind == S.FINGERPRINT and b.get("at_us") is not None:
                events.append(Event(b["at_us"], seq, FP, fp=b))
            elif kind in (S.LINK, -S.LINK):
                pid_, t, cell = b[:3]
                op = LINK_IN if kind == S.LINK else LINK_OUT
                events.append(Event(base + (t or 0), seq, op, Act(rid, pid_, cell), other=os.fsdecode(other)))
                partners.add(os.fsdecode(other))
        return events, partners

    def _link_rows(self, pid: int) -> list[tuple]:
        """Hard links onto the path (kind LINK, the name linked from) and from
        it (kind -LINK, the new name). Symlinks and named O_TMPFILE files are
        not links between two names of a file."""
        rows = [(seq, rid, S.LINK, src, body) for seq, rid, src, body in self.db.execute(
            "SELECT r.seq, r.rid, p.path, r.body FROM records r JOIN paths p ON p.id=r.p2 "
            "WHERE r.p1=? AND r.kind=?", (pid, S.LINK))]
        # kind=20 literally (S.LINK): it lets SQLite use the partial index on p2
        rows += [(seq, rid, -S.LINK, dst, body) for seq, rid, dst, body in self.db.execute(
            "SELECT r.seq, r.rid, p.path, r.body FROM records r JOIN paths p ON p.id=r.p1 "
            "WHERE r.kind=20 AND r.p2=?", (pid,))]
        return [r for r in rows if json.loads(r[4])[3] == "link"]

    # -- what an activity did ------------------------------------------------------
    def run_files(self, rid: int) -> list[FileRec]:
        if rid not in self._run_files:
            base = self.base_us(rid)
            self._run_files[rid] = [
                FileRec(path, Act(rid, b[0], b[6]), b[1], base + (b[4] or 0), base + (b[5] or 0), self.kind(path, b[7]))
                for path, b in ((os.fsdecode(path), json.loads(body)) for path, body in self.db.execute(
                    "SELECT p.path, r.body FROM records r JOIN paths p ON p.id=r.p1 "
                    "WHERE r.rid=? AND r.kind=?", (rid, S.FILE)))]
        return self._run_files[rid]

    def kind(self, path: str, code: str) -> str:
        """The kind code to judge a FILE record by: a config rule's, else the stored one."""
        if self.config is None:
            return code
        name = self.config.kind_of(path)
        return code if name is None else KIND_CODES[name]

    def files_of(self, unit: tuple) -> list[FileRec]:
        """The FILE records of an activity (a cell: every process's accesses in it)."""
        kind, rid, who = unit
        if kind == "cell":
            return [f for f in self.run_files(rid) if f.act.cell == who]
        return [f for f in self.run_files(rid) if f.act.pid == who and f.act.cell is None]

    def renames_by(self, unit: tuple) -> list[tuple[str, str, Event]]:
        """(from, to, event) of the renames an activity made (kind "run": the whole run's)."""
        kind, rid, who = unit
        base = self.base_us(rid)
        out = []
        for seq, dst, src, body in self.db.execute(
                "SELECT r.seq, a.path, b.path, r.body FROM records r JOIN paths a ON a.id=r.p1 "
                "JOIN paths b ON b.id=r.p2 WHERE r.rid=? AND r.kind=?", (rid, S.RENAME)):
            pid, t, cell = json.loads(body)
            if kind == "run" or (kind == "cell" and cell == who) or (kind == "proc" and cell is None and pid == who):
                out.append((os.fsdecode(src), os.fsdecode(dst),
                            Event(base + (t or 0), seq, RENAME_IN, Act(rid, pid, cell))))
        return out

    def procs(self, rid: int) -> dict[int, dict]:
        if rid not in self._procs:
            self._procs[rid] = {b["pid"]: b for b in (json.loads(body) for (body,) in self.db.execute(
                "SELECT body FROM records WHERE rid=? AND kind=?", (rid, S.PROCESS)))}
        return self._procs[rid]

    def pipes(self, rid: int) -> list:
        return [json.loads(body) for (body,) in self.db.execute(
            "SELECT body FROM records WHERE rid=? AND kind=?", (rid, S.PIPE))]

    def cells(self, rid: int) -> list[str]:
        """A notebook run's cell ids in execution order (the order their records were stored)."""
        order: dict[str, None] = {}
        for (body,) in self.db.execute("SELECT body FROM records WHERE rid=? AND kind=? ORDER BY seq",
                                       (rid, S.CELL)):
            cid = json.loads(body).get("id")
            if cid is not None:
                order.setdefault(cid, None)
        return list(order)

    # -- versions ------------------------------------------------------------------
    def renamed_from(self, v: Version) -> Version | None:
        """The version a rename moved onto v's path."""
        if v.how != "rename" or v.src_path is None:
            return None
        return self.history(v.src_path).moved_out.get(v.start[:2])

    def source_of(self, v: Version) -> Version | None:
        """The version v's content came from under another name: a rename's or a link's."""
        return v.linked_from if v.how == "link" else self.renamed_from(v)

    def renamed_to(self, v: Version) -> list[Version]:
        """The versions renames made of v on other paths."""
        out = []
        for dst, key in v.moved_to:
            w = self.history(dst).made_by_rename(key)
            if w is not None:
                out.append(w)
        return out

    def read_version(self, f: FileRec) -> Version | None:
        """The version a FILE record's read saw (None: it read back what it created)."""
        if f.path not in self._reads:
            self._reads[f.path] = {(r.act, r.key[0]): v for v in self.history(f.path).versions for r in v.reads}
        return self._reads[f.path].get((f.act, f.first))

    def written_version(self, f: FileRec) -> Version | None:
        return self.history(f.path).made_by(f.act, f.last)


class _RunIds(dict):
    """rid -> run id, looked up on first use (a store may hold many thousands)."""

    def __init__(self, db) -> None:
        super().__init__()
        self.db = db

    def get(self, rid, default=None):
        if rid not in self:
            row = self.db.execute("SELECT id FROM runs WHERE rid=?", (rid,)).fetchone()
            self[rid] = row[0] if row else default
        return self[rid]


def file_events(seq: int, f: FileRec) -> list[Event]:
    """A FILE record's events on its path: a read at its first access, a write
    and then a delete at its last."""
    out = []
    if f.bits & READ_BITS:
        out.append(Event(f.first, seq, READ, f.act, created=bool(f.bits & ACCESS_BITS["create"])))
    if f.bits & WRITE_BITS:
        out.append(Event(f.last, seq, WRITE, f.act, whole=bool(f.bits & WHOLE_BITS)))
    if f.bits & DELETE_BITS:
        out.append(Event(f.last, seq, DELETE, f.act))
    return out
