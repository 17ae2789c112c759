"""GraphML and DOT: runs, cells, processes and data files as one directed graph.

Edges point the way data flows, as in `provtrace lineage`: file -> process
("read"), process -> file ("wrote", "deleted"), parent -> child process and
run -> root process ("started"), run -> cell ("ran"), cell -> process
("ran"), temp name -> final name ("renamed"), pipe writer -> reader
("pipe"), and file -> file ("derived", the same content derivations as the
PROV export). File nodes are shared across runs, so an export of the whole
store is one lineage graph.

Node ids: `run:ID`, `cell:RUN:CELL`, `proc:RUN:PID`, `file:PATH`. GraphML
comes from networkx (nx.write_graphml); DOT is written here, with every id
and label quoted, so it needs neither pydot nor graphviz.
"""

from __future__ import annotations

import io
import json

import networkx as nx

from .flows import USE_ACCESS, WRITE_ACCESS, Flows, ProcKey, flows_of

SHAPES = {"run": "doubleoctagon", "cell": "component", "process": "box", "file": "note"}


def graph(docs: list[dict]) -> nx.DiGraph:
    g = nx.DiGraph()
    for doc in sorted(docs, key=lambda d: str((d.get("run") or {}).get("id"))):
        _add_run(g, doc)
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


def _add_run(g: nx.DiGraph, doc: dict) -> None:
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
        fn = _file(g, a.path, fl, a.kind)
        if USE_ACCESS & set(a.access):
            _edge(g, fn, proc(a.proc), "read", time=a.first, bytes=a.bytes_read)
        if WRITE_ACCESS & set(a.access):
            _edge(g, proc(a.proc), fn, "wrote", time=a.last, bytes=a.bytes_written)
        if "delete" in a.access:
            _edge(g, proc(a.proc), fn, "deleted", time=a.last)
    for w, r in fl.pipes:
        _edge(g, proc(w), proc(r), "pipe")
    for d in fl.derivations:
        rel = "renamed" if d.how == "rename" else "derived"
        _edge(g, _file(g, d.src, fl), _file(g, d.out, fl), rel, run=rid, pid=d.proc.pid, time=d.time)


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


def graphml(docs: list[dict]) -> bytes:
    buf = io.BytesIO()
    nx.write_graphml(graph(docs), buf, encoding="utf-8", prettyprint=True)
    return buf.getvalue()


def _q(text: object) -> str:
    """A DOT double-quoted string; a backslash stays a literal backslash."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + s.replace("\r", "\\r").replace("\n", "\\n") + '"'


def dot(docs: list[dict]) -> bytes:
    g = graph(docs)
    lines = ["digraph provtrace {", "  rankdir=LR;", '  node [fontname="monospace"];']
    for n, a in g.nodes(data=True):
        style = ', style="dashed"' if a.get("file_kind") == "temp" else ""
        lines.append(f"  {_q(n)} [label={_q(a.get('label', n))}, shape={SHAPES.get(a.get('kind'), 'ellipse')}"
                     f"{style}];")
    for u, v, a in g.edges(data=True):
        lines.append(f"  {_q(u)} -> {_q(v)} [label={_q(a['relation'])}];")
    lines.append("}")
    return ("\n".join(lines) + "\n").encode("utf-8")
