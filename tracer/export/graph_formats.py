"""GraphML and DOT: runs, cells, processes and data files as one directed graph.

Edges point the way data flows, as in `provtrace lineage`: file -> process
("read"), process -> file ("wrote", "deleted"), parent -> child process and
run -> root process ("started"), run -> cell ("ran"), cell -> process
("ran"), temp name -> final name ("renamed"), pipe writer -> reader
("pipe"), and file -> file ("derived", the same content derivations as the
PROV export). File nodes are shared across runs, so an export of the whole
store is one lineage graph.

Given the file versions (versioned.versions_for), reads, writes, deletes,
renames and derivations go to the version they touched, a node
`file:PATH@N` (kind `version`, numbered as `provtrace lineage` numbers them)
with a "specializes" edge to its path's node `file:PATH`; an access whose
version is not known stays on the path's node.

Node ids: `run:ID`, `cell:RUN:CELL`, `proc:RUN:PID`, `file:PATH`, `file:PATH@N`. GraphML
comes from networkx (nx.write_graphml); DOT is written here, with every id
and label quoted, so it needs neither pydot nor graphviz.
"""

from __future__ import annotations

import io
import json

import networkx as nx

from .flows import USE_ACCESS, WRITE_ACCESS, Flows, ProcKey, flows_of
from .versioned import FileVersion, RunVersions, Versions, content_derivations

SHAPES = {"run": "doubleoctagon", "cell": "component", "process": "box", "file": "note", "version": "note"}


def graph(docs: list[dict], versions: Versions | None = None) -> nx.DiGraph:
    g = nx.DiGraph()
    versions = versions or Versions()
    for doc in sorted(docs, key=lambda d: str((d.get("run") or {}).get("id"))):
        _add_run(g, doc, versions.of((doc.get("run") or {}).get("id")))
    return _sorted(g)


def _clean(attrs: dict) -> dict:
    """GraphML takes scalars only: drop None, lists and dicts as JSON text."""
    out = {}
    for k, v in attrs.items():
        if v is None:
            continue
        out[k] = json.dumps(v, sort_keys=True, ensure_ascii=False) if isinstance(v, (list, dict)) else v
    return out


def _edge(g: nx.DiGraph, u: str, v: str, relation: str, **attrs) -> None:
    if g.has_edge(u, v):  # one edge per pair: a second relation joins the first
        rel = g.edges[u, v]["relation"].split(",")
        g.edges[u, v]["relation"] = ",".join(sorted(set(rel) | {relation}))
        return
    g.add_edge(u, v, relation=relation, **_clean(attrs))


def _file(g: nx.DiGraph, path: str, fl: Flows, kind: str = "data") -> str:
    node = f"file:{path}"
    if node not in g:
        g.add_node(node, **_clean({"kind": "file", "label": path, "path": path,
                                   "path_b64": fl.b64.get(path), "file_kind": kind}))
    return node


def _version(g: nx.DiGraph, path: str, v: FileVersion | None, fl: Flows, kind: str = "data") -> str:
    """v's node (specializing its path's node), or the path's node when v is not known."""
    path_node = _file(g, path, fl, kind)
    if v is None:
        return path_node
    if v.id not in g:
        g.add_node(v.id, **_clean({"kind": "version", "label": f"{path}@{v.n}", "path": path, "version": v.n,
                                   "how": v.how, "sha256": v.sha256, "written": v.written, "run": v.run,
                                   "path_b64": fl.b64.get(path), "file_kind": kind}))
        _edge(g, v.id, path_node, "specializes")
    return v.id


def _add_run(g: nx.DiGraph, doc: dict, rv: RunVersions) -> None:
    run = doc.get("run") or {}
    rid = str(run.get("id"))
    rn = f"run:{rid}"
    g.add_node(rn, **_clean({"kind": "run", "label": run.get("label") or rid, "run": rid,
                             "run_kind": run.get("kind"), "argv": run.get("argv"), "host": run.get("host"),
                             "user": run.get("user"), "started": run.get("started"),
                             "ended": run.get("ended"), "exit_code": run.get("exit_code"),
                             "complete": run.get("complete"),
                             "kernel": (doc.get("context") or {}).get("kernel")}))
    for c in doc.get("cells") or []:
        cn = f"cell:{rid}:{c.get('id')}"
        g.add_node(cn, **_clean({"kind": "cell", "label": f"cell {c.get('index')}", "run": rid,
                                 "cell": c.get("id"), "index": c.get("index"), "status": c.get("status"),
                                 "started": c.get("started"), "ended": c.get("ended")}))
        _edge(g, rn, cn, "ran")
    fl = flows_of(doc)
    pn = {k: f"proc:{rid}:{k.local}" for k in fl.procs}
    for key, p in fl.procs.items():
        argv = p.get("argv") or []
        g.add_node(pn[key], **_clean({"kind": "process", "label": " ".join(argv)[:60] or p.get("exe"),
                                      "run": rid, "pid": p.get("pid"), "exe": p.get("exe"), "argv": argv,
                                      "started": p.get("started"), "exit_code": p.get("exit_code"),
                                      "cell": p.get("cell")}))
        _edge(g, pn[fl.parent[key]] if key in fl.parent else rn, pn[key], "started")
        if p.get("cell") is not None and f"cell:{rid}:{p.get('cell')}" in g:
            _edge(g, f"cell:{rid}:{p.get('cell')}", pn[key], "ran")
    proc = lambda k: pn.get(k) or _missing_proc(g, rid, k)  # noqa: E731
    for a in fl.accesses:
        key = (a.proc.pid, a.cell, a.path)
        if USE_ACCESS & set(a.access):
            _edge(g, _version(g, a.path, rv.read.get((*key, a.first)), fl, a.kind), proc(a.proc), "read",
                  time=a.first, bytes=a.bytes_read)
        if WRITE_ACCESS & set(a.access):
            made = rv.wrote.get((*key, a.last))
            _edge(g, proc(a.proc), _version(g, a.path, made, fl, a.kind), "wrote", time=a.last, bytes=a.bytes_written)
            if made is not None and made.prev is not None:  # an update in place of the version before
                _edge(g, _version(g, a.path, made.prev, fl, a.kind), made.id, "updated", run=rid, pid=a.proc.pid)
        if "delete" in a.access:
            _edge(g, proc(a.proc), _version(g, a.path, rv.ended.get((*key, a.last)), fl, a.kind), "deleted",
                  time=a.last)
    for w, r in fl.pipes:
        _edge(g, proc(w), proc(r), "pipe")
    for pk, src, dst, when in fl.renames:
        moved, made = rv.renamed.get((pk.pid, src, dst, when), (None, None))
        _edge(g, _version(g, src, moved, fl), _version(g, dst, made, fl), "renamed", run=rid, pid=pk.pid, time=when)
    for w, made, r, seen in content_derivations(fl, rv):
        _edge(g, _version(g, r.path, seen, fl, r.kind), _version(g, w.path, made, fl, w.kind), "derived",
              run=rid, pid=w.proc.pid)


def _missing_proc(g: nx.DiGraph, rid: str, key: ProcKey) -> str:
    """A file or pipe record whose process record is missing: keep a bare node."""
    node = f"proc:{rid}:{key.local}"
    if node not in g:
        g.add_node(node, kind="process", label=f"pid {key.pid}", run=rid, pid=key.pid)
    return node


def _sorted(g: nx.DiGraph) -> nx.DiGraph:
    """Same graph, nodes and edges inserted in sorted order: stable output."""
    h = nx.DiGraph()
    for n in sorted(g.nodes):
        h.add_node(n, **dict(sorted(g.nodes[n].items())))
    for u, v in sorted(g.edges):
        h.add_edge(u, v, **dict(sorted(g.edges[u, v].items())))
    return h


def graphml(docs: list[dict], versions: Versions | None = None) -> bytes:
    buf = io.BytesIO()
    nx.write_graphml(graph(docs, versions), buf, encoding="utf-8", prettyprint=True)
    return buf.getvalue()


def _q(text: object) -> str:
    """A DOT double-quoted string; a backslash stays a literal backslash."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + s.replace("\r", "\\r").replace("\n", "\\n") + '"'


def dot(docs: list[dict], versions: Versions | None = None) -> bytes:
    g = graph(docs, versions)
    lines = ["digraph provtrace {", "  rankdir=LR;", '  node [fontname="monospace"];']
    for n, a in g.nodes(data=True):
        style = ', style="dashed"' if a.get("file_kind") == "temp" else ""
        lines.append(f"  {_q(n)} [label={_q(a.get('label', n))}, shape={SHAPES.get(a.get('kind'), 'ellipse')}"
                     f"{style}];")
    for u, v, a in g.edges(data=True):
        lines.append(f"  {_q(u)} -> {_q(v)} [label={_q(a['relation'])}];")
    lines.append("}")
    return ("\n".join(lines) + "\n").encode("utf-8")
