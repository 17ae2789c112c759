"""Lineage: a walk over the store's file, rename and pipe records, across runs.

Upstream of a path: the processes that wrote it (or renamed a file onto it),
then the data files those processes read before they finished writing, and
the processes that fed them through pipes, transitively. Downstream is the
mirror image. The walk is a networkx DiGraph whose edges point from input to
output (file -> process -> file), so the same graph feeds the exporters.

Given a uid (the daemon's non-root caller), the walk runs over that uid's
runs only: a process of another run is never entered, and a file appears
only when one of the caller's own processes read or wrote it or one of the
caller's own renames named it. Filtering the finished graph instead would
keep the files (and rename edges) reached through other users' processes.
"""

from __future__ import annotations

import json
from collections import deque

import networkx as nx

from ..model.paths import DATA, TEMP
from ..store import sqlite as S
from ..store.writer import ACCESS_BITS, KIND_NAMES

WRITE_BITS = ACCESS_BITS["write"] | ACCESS_BITS["create"] | ACCESS_BITS["truncate"]
READ_BITS = ACCESS_BITS["read"]
SHOWN_KINDS = (DATA, TEMP)


class _Index:
    """Small cached queries over one store."""

    def __init__(self, store: S.Store, uid: int | None = None) -> None:
        self.s = store
        self.run_ids = dict(store.db.execute("SELECT rid, id FROM runs"))
        # the runs the walk may use; None: all (a store's own reader, root)
        self.visible = None if uid is None else {rid for (rid,) in store.db.execute(
            "SELECT rid FROM runs WHERE uid=?", (uid,))}
        self.base_us = {rid: json.loads(body).get("start_us", 0) for rid, body in store.db.execute(
            "SELECT rid, body FROM records WHERE kind=?", (S.RUN_START,))}
        self._procs: dict[int, dict[int, dict]] = {}
        self._pipes: dict[int, list] = {}

    def _file(self, rid: int, b: list) -> list:
        """A file body with absolute times and the kind's name."""
        base = self.base_us.get(rid, 0)
        b = list(b)
        for i in (4, 5):
            if b[i] is not None:
                b[i] += base
        b[7] = KIND_NAMES.get(b[7], b[7])
        return b

    def _when(self, rid: int, b: list) -> list:
        b = list(b)
        if b[1] is not None:
            b[1] += self.base_us.get(rid, 0)
        return b

    def path_id(self, path: str) -> int | None:
        import os  # noqa: PLC0415

        row = self.s.db.execute("SELECT id FROM paths WHERE path=?", (os.fsencode(path),)).fetchone()
        return row[0] if row else None

    def file_records(self, path: str) -> list[tuple[int, list]]:
        pid = self.path_id(path)
        if pid is None:
            return []
        return [(rid, self._file(rid, json.loads(body))) for rid, body in self.s.db.execute(
            "SELECT rid, body FROM records WHERE kind=? AND p1=? ORDER BY seq", (S.FILE, pid))
            if self._sees(rid)]

    def renames_to(self, path: str) -> list[tuple[int, str, list]]:
        pid = self.path_id(path)
        if pid is None:
            return []
        return [(rid, _dec(src), self._when(rid, json.loads(body))) for rid, src, body in self.s.db.execute(
            "SELECT r.rid, p.path, r.body FROM records r JOIN paths p ON p.id=r.p2 "
            "WHERE r.kind=? AND r.p1=?", (S.RENAME, pid)) if self._sees(rid)]

    def renames_from(self, path: str) -> list[tuple[int, str, list]]:
        pid = self.path_id(path)
        if pid is None:
            return []
        # kind=4 literally (S.RENAME): it lets SQLite use the partial index on p2
        return [(rid, _dec(dst), self._when(rid, json.loads(body))) for rid, dst, body in self.s.db.execute(
            "SELECT r.rid, p.path, r.body FROM records r JOIN paths p ON p.id=r.p1 "
            "WHERE r.kind=4 AND r.p2=?", (pid,)) if self._sees(rid)]

    def _sees(self, rid: int) -> bool:
        """Every step away from a file goes through here: processes and renames
        are reached only from a file's records, so only in visible runs."""
        return self.visible is None or rid in self.visible

    def files_of(self, rid: int, pid: int) -> list[tuple[str, list]]:
        return [(_dec(path), b) for path, b in (
            (path, self._file(rid, json.loads(body))) for path, body in self.s.db.execute(
                "SELECT p.path, r.body FROM records r JOIN paths p ON p.id=r.p1 "
                "WHERE r.rid=? AND r.kind=?", (rid, S.FILE))) if b[0] == pid]

    def procs(self, rid: int) -> dict[int, dict]:
        if rid not in self._procs:
            self._procs[rid] = {b["pid"]: b for b in (json.loads(body) for (body,) in self.s.db.execute(
                "SELECT body FROM records WHERE rid=? AND kind=?", (rid, S.PROCESS)))}
        return self._procs[rid]

    def pipes(self, rid: int) -> list:
        if rid not in self._pipes:
            self._pipes[rid] = [json.loads(body) for (body,) in self.s.db.execute(
                "SELECT body FROM records WHERE rid=? AND kind=?", (rid, S.PIPE))]
        return self._pipes[rid]


def _dec(raw: bytes) -> str:
    import os  # noqa: PLC0415

    return os.fsdecode(raw)


def lineage(store: S.Store, path: str, direction: str = "upstream", depth: int = 10,
            uid: int | None = None) -> dict:
    """Walk from path; returns {root, direction, nodes, edges} (JSON-ready).
    With uid, over that uid's runs only (see the module's docstring)."""
    ix = _Index(store, uid)
    g = nx.DiGraph()
    froot = ("file", path)
    g.add_node(froot, kind="file", path=path, depth=0)
    queue = deque([(froot, 0, None)])  # (node, depth, time bound in us)
    seen = {froot}
    walk = _up if direction == "upstream" else _down
    while queue:
        node, d, bound = queue.popleft()
        if d >= depth:
            continue
        for nxt, bound2 in walk(ix, g, node, bound):
            if nxt not in seen:
                seen.add(nxt)
                g.nodes[nxt]["depth"] = d + 1
                queue.append((nxt, d + 1, bound2))
    return _to_json(g, ix, path, direction)


def _proc_node(ix: _Index, g: nx.DiGraph, rid: int, pid: int) -> tuple:
    node = ("proc", rid, pid)
    if node not in g:
        p = ix.procs(rid).get(pid, {})
        g.add_node(node, kind="process", run=ix.run_ids.get(rid), pid=pid, exe=p.get("exe"),
                   argv=p.get("argv"), cell=p.get("cell"))
    return node


def _file_node(g: nx.DiGraph, path: str) -> tuple:
    node = ("file", path)
    if node not in g:
        g.add_node(node, kind="file", path=path)
    return node


def _up(ix: _Index, g: nx.DiGraph, node: tuple, bound: int | None):
    if node[0] == "file":
        path = node[1]
        for rid, b in ix.file_records(path):
            pid, bits, _br, _bw, first, last = b[:6]
            if bits & WRITE_BITS and (bound is None or (first or 0) <= bound):
                pn = _proc_node(ix, g, rid, pid)
                g.add_edge(pn, node, rel="wrote")
                yield pn, last
        for rid, src, b in ix.renames_to(path):
            t = b[1]
            if bound is None or (t or 0) <= bound:
                fn = _file_node(g, src)
                g.add_edge(fn, node, rel="renamed", run=ix.run_ids.get(rid), pid=b[0])
                yield fn, t
        return
    _, rid, pid = node
    for path, b in ix.files_of(rid, pid):
        bits, first, kind = b[1], b[4], b[7]
        if bits & READ_BITS and kind in SHOWN_KINDS and (bound is None or (first or 0) <= bound):
            fn = _file_node(g, path)
            g.add_edge(fn, node, rel="read")
            yield fn, first
    for ino, writers, readers in ix.pipes(rid):
        if pid in readers:
            for w in writers:
                if w != pid:
                    wn = _proc_node(ix, g, rid, w)
                    g.add_edge(wn, node, rel="pipe", inode=ino)
                    yield wn, bound


def _down(ix: _Index, g: nx.DiGraph, node: tuple, bound: int | None):
    if node[0] == "file":
        path = node[1]
        for rid, b in ix.file_records(path):
            pid, bits, _br, _bw, first, last = b[:6]
            if bits & READ_BITS and (bound is None or (last or 0) >= bound):
                pn = _proc_node(ix, g, rid, pid)
                g.add_edge(node, pn, rel="read")
                yield pn, first
        for rid, dst, b in ix.renames_from(path):
            t = b[1]
            if bound is None or (t or 0) >= bound:
                fn = _file_node(g, dst)
                g.add_edge(node, fn, rel="renamed", run=ix.run_ids.get(rid), pid=b[0])
                yield fn, t
        return
    _, rid, pid = node
    for path, b in ix.files_of(rid, pid):
        bits, last, kind = b[1], b[5], b[7]
        if bits & WRITE_BITS and kind in SHOWN_KINDS and (bound is None or (last or 0) >= bound):
            fn = _file_node(g, path)
            g.add_edge(node, fn, rel="wrote")
            yield fn, last
    for ino, writers, readers in ix.pipes(rid):
        if pid in writers:
            for r in readers:
                if r != pid:
                    rn = _proc_node(ix, g, rid, r)
                    g.add_edge(node, rn, rel="pipe", inode=ino)
                    yield rn, bound


def _key(node: tuple) -> str:
    return f"file:{node[1]}" if node[0] == "file" else f"proc:{node[1]}:{node[2]}"


def _to_json(g: nx.DiGraph, ix: _Index, root: str, direction: str) -> dict:
    nodes = []
    for n, attrs in g.nodes(data=True):
        nodes.append({"id": _key(n), **{k: v for k, v in attrs.items()}})
    edges = [{"from": _key(a), "to": _key(b), **attrs} for a, b, attrs in g.edges(data=True)]
    return {"root": root, "direction": direction, "nodes": nodes, "edges": edges,
            "found": g.number_of_nodes() > 1}


def render(result: dict) -> str:
    """Readable text: the root, then each step away from it, indented by depth."""
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
    printed = set()

    def label(nid: str) -> str:
        n = nodes[nid]
        if n["kind"] == "file":
            return n["path"]
        argv = " ".join(n.get("argv") or [])[:80]
        cell = f" cell {n['cell']}" if n.get("cell") else ""
        return f"[run {n['run']} pid {n['pid']}{cell}] {argv}"

    def visit(nid: str, indent: int) -> None:
        for child, rel in children.get(nid, []):
            verb = {"wrote": "written by" if up else "writes", "read": "reads" if up else "read by",
                    "renamed": "renamed from" if up else "renamed to", "pipe": "piped from" if up else "pipes to"}[rel]
            again = " (see above)" if child in printed else ""
            lines.append(f"{'  ' * indent}{verb} {label(child)}{again}")
            if child not in printed:
                printed.add(child)
                visit(child, indent + 1)

    root_id = f"file:{result['root']}"
    printed.add(root_id)
    visit(root_id, 1)
    return "\n".join(lines)
