"""Lineage: a walk over file versions (lineage/versions.py), across runs.

`lineage PATH` answers about one version of PATH: the bytes on disk now by
default (a fingerprint taken now is matched against the last traced version,
so a change made outside tracing is a version of its own), the version
current at a moment with `at`, or every version with `all_versions`.

Upstream of a version: the activity that wrote it (a process, or the notebook
cell it ran in) or the rename that moved another version here; then the
versions that activity had read before that write, the processes that fed it
through pipes, and, for a cell, the cell before it in the same kernel
(kernel state, a labelled edge that `kernel_state=False` cuts), transitively.
Downstream is the mirror image: the activities that read this very version,
what they wrote after reading it, and where renames moved it. Each step keeps
to time order, so nothing is derived through a step that ran after it.

The walk is a networkx DiGraph whose edges point from input to output
(version -> activity -> version), so the same graph feeds the exporters.
A node at the depth limit with neighbours left unwalked is marked
`truncated`, and so is the result.

The walk goes through data and temp files only. The library, system and
other files an activity read (upstream) or wrote (downstream) are counted
on its node as `hidden_files` ({kind: distinct paths}), so a picture can
summarise them in one node; `all_files` walks them too, as ordinary
versions whose nodes carry their `file_kind`.

Given a uid (the daemon's non-root caller), the versions are built from that
uid's runs only (versions.Model): a process of another run is never entered,
and what other users' runs did to a file shows as a change outside tracing.
"""

from __future__ import annotations

import math
from collections import deque

import networkx as nx

from ..clock import us_to_iso
from ..model.paths import DATA, TEMP
from ..store import sqlite as S
from ..store.writer import KIND_CODES, KIND_NAMES
from .versions import FOREVER, READ_BITS, WRITE_BITS, Model, Version

SHOWN_KINDS = (KIND_CODES[DATA], KIND_CODES[TEMP])
_HOPS = 64  # renames followed to find a moved version's fingerprint


def lineage(store: S.Store, path: str, direction: str = "upstream", depth: int = 10,
            uid: int | None = None, *, at_us: int | None = None, all_versions: bool = False,
            kernel_state: bool = True, now: dict | None = None, config=None,
            all_files: bool = False) -> dict:
    """Walk from a version of path; returns {root, direction, current, nodes, edges,
    found, truncated} (JSON-ready). `now`: path's fingerprint as it is now (taken
    by the caller, as the user asking); ignored with at_us. config: its
    [classify] rules decide which files the walk goes through; all_files: every
    kind of file, not only data and temp files."""
    model = Model(store, uid, now={path: now} if now is not None and at_us is None else None,
                  config=config)
    hist = model.history(path)
    key = FOREVER if at_us is None else (at_us, math.inf, math.inf)
    cur = hist.at(key)
    # absent then: the last version before, marked gone (where it went, what it came from)
    last = cur or next((v for v in reversed(hist.versions) if v.start <= key), None)
    roots = hist.versions if all_versions else ([last] if last is not None else [])
    w = _Walk(model, direction, kernel_state, all_files)
    g = w.g
    for v in roots:
        w.add_version(v, depth=0, root=True)
    if cur is None and last is not None and not all_versions:
        g.nodes[_vkey(last)]["gone"] = True
    queue = deque((_vkey(v), 0, None) for v in roots)  # (node, depth, time bound in us)
    bounds: dict[tuple, float] = {}
    truncated = False
    while queue:
        node, d, bound = queue.popleft()
        steps = list(w.steps(node, bound))
        if d >= depth:
            if any(nxt not in g for nxt, _b, _a in steps):
                g.nodes[node]["truncated"] = truncated = True
            continue
        for nxt, bound2, (a, b, attrs) in steps:
            new = nxt not in g
            w.add(nxt, d + 1)
            g.add_edge(a, b, **attrs)
            # an activity met again with a later (upstream) or earlier (downstream) bound has more to give
            better = bound2 is not None and nxt in bounds and (
                bound2 > bounds[nxt] if direction == "upstream" else bound2 < bounds[nxt])
            if new or better:
                if bound2 is not None:
                    bounds[nxt] = bound2
                queue.append((nxt, d + 1, bound2))
    traced = any(v.act is not None or v.reads for v in hist.versions)
    current = _current(model, cur, hist, key)
    result = {"root": path, "direction": direction, "current": current,
              "nodes": _nodes(g), "edges": [{"from": _id(a), "to": _id(b), **attrs}
                                            for a, b, attrs in g.edges(data=True)],
              "found": traced, "truncated": truncated}
    if cur is None:
        result["absent"] = _absent(hist, key, current)
    return result


def _linked(model: Model, v: Version) -> dict:
    """Attributes of the edge into a link version: who made the link, or wrote
    the other name."""
    act = v.act
    return {"rel": "linked", "run": model.run_ids.get(act.rid) if act else None,
            "pid": act.pid if act else None}


def _absent(hist, key: tuple, current: dict) -> str:
    """Why there is no version to answer about."""
    if current["changed_outside_tracing"]:
        return "deleted outside tracing"
    if not any(v.start <= key for v in hist.versions):
        return "no version recorded at that time" if key != FOREVER else "not on disk, never traced"
    return "deleted or moved away by a traced run"


def _vkey(v: Version) -> tuple:
    return ("ver", v.path, v.n)


def _id(node: tuple) -> str:
    kind = node[0]
    if kind == "ver":
        return f"file:{node[1]}@{node[2]}"
    return f"{kind}:{node[1]}:{node[2]}"


def content_fp(model: Model, v: Version | None) -> dict | None:
    """v's fingerprint, else that of the version a rename moved here."""
    for _ in range(_HOPS):
        if v is None or v.fp is not None:
            break
        v = model.source_of(v)
    return v.fp if v is not None else None


def _written(model: Model, v: Version) -> str | None:
    if v.act is not None:
        return us_to_iso(v.t_us)
    fp = v.fp or {}
    return fp.get("mtime")


def _current(model: Model, v: Version | None, hist, key: tuple) -> dict:
    """The contract's `current`: the version at key, or nulls when the path is absent then."""
    if v is None:
        gone_outside = bool(hist.versions) and hist.versions[-1].end is not None and \
            not math.isfinite(hist.versions[-1].end[0])
        return {"run": None, "cell": None, "pid": None, "sha256": None, "written": None,
                "changed_outside_tracing": gone_outside}
    act = v.act
    return {"run": model.run_ids.get(act.rid) if act else None, "cell": act.cell if act else None,
            "pid": act.pid if act else None, "sha256": (content_fp(model, v) or {}).get("sha256"),
            "written": _written(model, v), "changed_outside_tracing": act is None}


class _Walk:
    """The graph and one step of the walk in either direction."""

    def __init__(self, model: Model, direction: str, kernel_state: bool, all_files: bool = False) -> None:
        self.m = model
        self.up = direction == "upstream"
        self.kernel_state = kernel_state
        self.all_files = all_files
        self.g = nx.DiGraph()
        self._versions: dict[tuple, Version] = {}
        self._kinds: dict[tuple, str] = {}  # version node -> kind code of the record that reached it

    # -- nodes ---------------------------------------------------------------------
    def add_version(self, v: Version, depth: int, root: bool = False) -> tuple:
        node = _vkey(v)
        self._versions[node] = v
        if node not in self.g:
            fp = content_fp(self.m, v) or {}
            self.g.add_node(node, kind="file", path=v.path, version=v.n, sha256=fp.get("sha256"),
                            written=_written(self.m, v), changed_outside_tracing=v.act is None,
                            depth=depth)
            code = self._kinds.get(node)
            if self.all_files and code is not None and code != KIND_CODES[DATA]:
                self.g.nodes[node]["file_kind"] = KIND_NAMES.get(code, code)
            if root:
                self.g.nodes[node]["root"] = True
        return node

    def add(self, node: tuple, depth: int) -> None:
        if node in self.g:
            return
        if node[0] == "ver":
            self.add_version(self._versions[node], depth)
            return
        kind, rid, who = node
        run = self.m.run_ids.get(rid)
        if kind == "proc":
            p = self.m.procs(rid).get(who, {})
            self.g.add_node(node, kind="process", run=run, pid=who, exe=p.get("exe"),
                            argv=p.get("argv"), cell=p.get("cell"), depth=depth)
        else:
            pids = sorted({f.act.pid for f in self.m.files_of(node)})
            self.g.add_node(node, kind="cell", run=run, cell=who, pid=pids[0] if pids else None,
                            depth=depth)

    def _ver(self, v: Version, kind: str | None = None) -> tuple:
        node = _vkey(v)
        self._versions.setdefault(node, v)
        if kind is not None:
            self._kinds.setdefault(node, kind)
        return node

    def _shown(self, unit: tuple, files: list) -> list:
        """The files the walk goes through; the others are counted on the unit's node."""
        if self.all_files:
            return files
        hidden: dict[str, set[str]] = {}
        for f in files:
            if f.kind not in SHOWN_KINDS:
                hidden.setdefault(KIND_NAMES.get(f.kind, f.kind), set()).add(f.path)
        if hidden and unit in self.g:
            self.g.nodes[unit]["hidden_files"] = {k: len(v) for k, v in sorted(hidden.items())}
        return [f for f in files if f.kind in SHOWN_KINDS]

    # -- steps: (next node, its time bound, (edge from, edge to, attrs)) ------------
    def steps(self, node: tuple, bound: float | None):
        if node[0] == "ver":
            v = self._versions[node]
            yield from (self._up_version(node, v) if self.up else self._down_version(node, v))
        else:
            yield from (self._up_unit(node, bound) if self.up else self._down_unit(node, bound))

    def _up_version(self, node: tuple, v: Version):
        if v.how == "write" and v.act is not None:
            unit = v.act.unit
            yield unit, v.start[0], (unit, node, {"rel": "wrote"})
        if v.prev is not None:
            p = self._ver(v.prev)
            yield p, None, (p, node, {"rel": "updated"})
        src = self.m.renamed_from(v)
        if src is not None:
            s = self._ver(src)
            yield s, None, (s, node, {"rel": "renamed", "run": self.m.run_ids.get(v.act.rid),
                                      "pid": v.act.pid})
        if v.linked_from is not None:  # the same file under another name
            s = self._ver(v.linked_from)
            yield s, None, (s, node, _linked(self.m, v))

    def _down_version(self, node: tuple, v: Version):
        for r in v.reads:
            unit = r.act.unit
            yield unit, r.key[0], (node, unit, {"rel": "read"})
        for w in self.m.renamed_to(v):
            n = self._ver(w)
            yield n, None, (node, n, {"rel": "renamed", "run": self.m.run_ids.get(w.act.rid),
                                      "pid": w.act.pid})
        for w in v.updated_by:
            n = self._ver(w)
            yield n, None, (node, n, {"rel": "updated"})
        for w in v.linked_to:
            n = self._ver(w)
            yield n, None, (node, n, _linked(self.m, w))

    def _up_unit(self, unit: tuple, bound: float | None):
        reads = [f for f in self.m.files_of(unit) if f.bits & READ_BITS and (bound is None or f.first <= bound)]
        for f in self._shown(unit, reads):
            v = self.m.read_version(f)
            if v is not None and not (v.act is not None and v.act.unit == unit):
                n = self._ver(v, f.kind)
                yield n, None, (n, unit, {"rel": "read"})
        for other, attrs in self._pipes(unit, into=True):
            yield other, bound, (other, unit, attrs)
        before = self._cell_beside(unit, -1)
        if before is not None:
            yield before, bound, (before, unit, {"rel": "kernel_state"})

    def _down_unit(self, unit: tuple, bound: float | None):
        writes = [f for f in self.m.files_of(unit) if f.bits & WRITE_BITS and (bound is None or f.last >= bound)]
        for f in self._shown(unit, writes):
            v = self.m.written_version(f)
            if v is not None:
                n = self._ver(v, f.kind)
                yield n, None, (unit, n, {"rel": "wrote"})
        for other, attrs in self._pipes(unit, into=False):
            yield other, bound, (unit, other, attrs)
        after = self._cell_beside(unit, +1)
        if after is not None:
            yield after, None, (unit, after, {"rel": "kernel_state"})

    def _pipes(self, unit: tuple, into: bool):
        """Activities that fed this one through a pipe (into) or that it fed: the
        other end's process, or the notebook cell it ran in."""
        kind, rid, who = unit
        procs = self.m.procs(rid)
        pids = ({who} if kind == "proc" else
                {pid for pid, p in procs.items() if p.get("cell") == who})
        for ino, writers, readers in self.m.pipes(rid):
            mine, theirs = (readers, writers) if into else (writers, readers)
            if pids & set(mine):
                for other in theirs:
                    cell = procs.get(other, {}).get("cell")
                    end = ("cell", rid, cell) if cell is not None else ("proc", rid, other)
                    if end != unit:
                        yield end, {"rel": "pipe", "inode": ino}

    def _cell_beside(self, unit: tuple, step: int) -> tuple | None:
        """The cell run just before (step -1) or after (+1) this one in the same kernel."""
        kind, rid, cell = unit
        if kind != "cell" or not self.kernel_state:
            return None
        order = self.m.cells(rid)
        if cell not in order:
            return None
        i = order.index(cell) + step
        return ("cell", rid, order[i]) if 0 <= i < len(order) else None


def _nodes(g: nx.DiGraph) -> list[dict]:
    return [{"id": _id(n), **attrs} for n, attrs in g.nodes(data=True)]


def now_fingerprint(path: str, creds=None) -> dict | None:
    """path's fingerprint as it is now, as the asking user reads it (None: cannot tell)."""
    from ..store.fingerprint import fingerprint  # noqa: PLC0415

    fp = fingerprint(path, creds=creds)
    if fp.get("error") and fp["error"] != "vanished":
        return None  # unreadable to the asker: no claim either way
    return fp


def render(result: dict) -> str:
    """Readable text: the version asked about, then each step away from it, indented."""
    nodes = {n["id"]: n for n in result["nodes"]}
    up = result["direction"] == "upstream"
    children: dict[str, list[tuple[str, str]]] = {}
    for e in result["edges"]:
        a, b = (e["to"], e["from"]) if up else (e["from"], e["to"])
        children.setdefault(a, []).append((b, e["rel"]))
    lines = [f"{result['direction']} lineage of {result['root']}"]
    if not result["found"]:
        lines.append("  (nothing recorded: no traced run touched this path)")
        return "\n".join(lines)
    roots = [n["id"] for n in result["nodes"] if n.get("root")]
    if result.get("absent"):
        lines.append(f"  (absent: {result['absent']}" + ("; its last version:)" if roots else ")"))
    printed = set()

    def label(nid: str) -> str:
        n = nodes[nid]
        if n["kind"] == "file":
            if n.get("changed_outside_tracing"):
                what = ("changed outside tracing" if n["version"] > 1
                        else "no traced process wrote it")
            else:
                what = f"written {n.get('written') or '?'}"
            sha = f", sha256 {n['sha256'][:12]}" if n.get("sha256") else ""
            cut = " … (depth limit: more not shown)" if n.get("truncated") else ""
            gone = ", no longer there" if n.get("gone") else ""
            return f"{n['path']} (version {n['version']}: {what}{sha}{gone}){cut}"
        cut = " … (depth limit: more not shown)" if n.get("truncated") else ""
        if n["kind"] == "cell":
            return f"[run {n['run']} cell {n['cell']}]{cut}"
        argv = " ".join(n.get("argv") or [])[:80]
        cell = f" cell {n['cell']}" if n.get("cell") else ""
        return f"[run {n['run']} pid {n['pid']}{cell}] {argv}{cut}"

    verbs = {"wrote": ("written by", "writes"), "read": ("reads", "read by"),
             "renamed": ("renamed from", "renamed to"), "pipe": ("piped from", "pipes to"),
             "updated": ("updated from", "updated into"),
             "kernel_state": ("kernel state from", "kernel state to")}

    def visit(nid: str, indent: int) -> None:
        for child, rel in children.get(nid, []):
            verb = verbs.get(rel, (rel, rel))[0 if up else 1]
            again = " (see above)" if child in printed else ""
            lines.append(f"{'  ' * indent}{verb} {label(child)}{again}")
            if child not in printed:
                printed.add(child)
                visit(child, indent + 1)

    for root in roots:
        lines.append(f"  {label(root)}")
        printed.add(root)
        visit(root, 2)
    if result.get("truncated"):
        lines.append("  (cut at the depth limit: --depth N shows more)")
    return "\n".join(lines)


def parse_at(text: str) -> int:
    """An ISO-8601 time (UTC when no zone is given) -> wall-clock microseconds."""
    import datetime as dt  # noqa: PLC0415

    from ..clock import parse_iso  # noqa: PLC0415

    when = parse_iso(text)
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
