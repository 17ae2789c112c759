"""What the TUI shows, as plain data: run summaries, run documents, lineage.

Headless: nothing here imports textual (tests/tui/test_headless.py checks),
so the same data layer serves tests, scripts and the app. Both sources (a
store file, a live daemon) turn what they get into these shapes; the
screens never see a Store or a gRPC message.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..tracer.model.paths import display
from ..tracer.store.queries import SCHEMA

UPSTREAM, DOWNSTREAM = "upstream", "downstream"


@dataclass(frozen=True)
class RunSummary:
    """One row of the runs list (the fields of `provtrace runs --json`)."""

    id: str
    kind: str
    label: str | None = None
    backend: str | None = None
    user: str | None = None
    uid: int | None = None
    started: str | None = None
    ended: str | None = None
    exit_code: int | None = None
    lost_events: int | None = None


@dataclass(frozen=True)
class LineageNode:
    id: str
    kind: str  # "file" | "process" | "cell"
    label: str


@dataclass(frozen=True)
class LineageEdge:
    source: str  # edges point from input to output, as in tracer/lineage/graph.py
    target: str
    relation: str  # "wrote" | "read" | "renamed" | "pipe"


@dataclass(frozen=True)
class Lineage:
    root: str  # the node id of the file asked about
    direction: str
    nodes: dict[str, LineageNode] = field(default_factory=dict)
    edges: tuple[LineageEdge, ...] = ()

    @property
    def found(self) -> bool:
        return len(self.nodes) > 1


def summary_from_row(row: dict) -> RunSummary:
    """A row of tracer/store/queries.list_runs."""
    return RunSummary(id=row["id"], kind=row["kind"], label=row.get("label"),
                      backend=row.get("backend"), user=row.get("user"), uid=row.get("uid"),
                      started=row.get("started"), ended=row.get("ended"),
                      exit_code=row.get("exit_code"), lost_events=row.get("lost_events"))


def summary_from_record(rec: object) -> RunSummary:
    """A tracer/serve/records.RunRecord (what the daemon lists)."""
    return RunSummary(id=rec.id, kind=rec.kind, label=rec.label, backend=rec.backend,
                      user=rec.user, uid=rec.uid, started=_iso(rec.started),
                      ended=_iso(rec.ended), exit_code=rec.exit_code)


def _iso(when: dt.datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def lineage_from_store(result: dict) -> Lineage:
    """tracer/lineage/graph.lineage's JSON-ready dict."""
    nodes = {}
    for n in result["nodes"]:
        if n["kind"] == "file":
            label = display(n["path"]) + _version_label(n)
        elif n["kind"] == "cell":
            label = f"[run {n.get('run')} cell {n.get('cell')}]"
        else:
            cell = f" cell {n['cell']}" if n.get("cell") else ""
            argv = " ".join(display(a) for a in (n.get("argv") or [])) or display(n.get("exe") or "?")
            label = f"[run {n.get('run')} pid {n.get('pid')}{cell}] {argv}"
        nodes[n["id"]] = LineageNode(n["id"], n["kind"], label)
    edges = tuple(LineageEdge(e["from"], e["to"], e["rel"]) for e in result["edges"])
    root = _root_id(result["root"], result["nodes"], nodes)
    return Lineage(root, result["direction"], nodes, edges)


_FLEET_RELATIONS = {"read_by": "read", "renamed_to": "renamed", "wrote": "wrote"}


def lineage_from_fleet(result: dict) -> Lineage:
    """tracer/fleet/query.lineage's dict: node ids are fleet keys and
    process identities; every label names its host."""
    nodes = {}
    for n in result["nodes"]:
        if n["kind"] == "file":
            where = f"shared {n['key']}" if n["shared"] else f"on host {n.get('host')}"
            label = f"{display(n['path'])} ({where})"
        else:
            cell = f" cell {n['cell']}" if n.get("cell") else ""
            argv = " ".join(display(a) for a in (n.get("argv") or [])) or display(n.get("exe") or "?")
            label = f"[host {n['host']} run {n.get('run')} pid {n.get('pid')}{cell}] {argv}"
        nodes[n["id"]] = LineageNode(n["id"], n["kind"], label)
    edges = tuple(LineageEdge(e["from"], e["to"], _FLEET_RELATIONS.get(e["rel"], e["rel"]))
                  for e in result["edges"])
    root = _root_id(result["root"], result["nodes"], nodes)
    return Lineage(root, result["direction"], nodes, edges)


def _version_label(n: dict) -> str:
    """' (changed outside tracing)' on a version no traced process wrote; the
    version's number stays in the node's id (the tree reads as paths)."""
    changed = n.get("changed_outside_tracing") and (n.get("version") or 1) > 1  # v1: there before tracing
    return " (changed outside tracing)" if changed else ""


def _root_id(path: str, raw_nodes, nodes: dict) -> str:
    """The node id of the version asked about (the one marked root); a plain
    file node when there is none (an absent path, an older daemon)."""
    for n in raw_nodes:
        if n.get("root"):
            return n["id"]
    root = f"file:{path}"
    nodes.setdefault(root, LineageNode(root, "file", display(path)))
    return root


def path_of(node_id: str) -> str | None:
    """The path of a file (version) node id: 'file:PATH' or 'file:PATH@N'."""
    if not node_id.startswith("file:"):
        return None
    path = node_id.removeprefix("file:")
    head, at, n = path.rpartition("@")
    return head if at and n.isdigit() else path


def lineage_from_graph(root_path: str, direction: str, graph: object) -> Lineage:
    """A tracer/serve/records.LineageGraph (what the daemon answers)."""
    nodes = {}
    for n in graph.nodes:
        run = f"[run {n.run_id}] " if n.run_id and n.kind != "file" else ""
        extra = _version_label(dict(n.detail)) if n.kind == "file" else ""
        nodes[n.id] = LineageNode(n.id, n.kind, f"{run}{n.label or n.id}{extra}")
    root = _root_id(root_path, [{"id": n.id, **n.detail} for n in graph.nodes], nodes)
    edges = tuple(LineageEdge(e.source, e.target, e.relation) for e in graph.edges)
    return Lineage(root, direction, nodes, edges)


# The daemon's in-memory store exports {"run": RunRecord, "cells": [CellRecord]}
# rather than provtrace.run/1; these are the CellRecord fields the schema has.
_CELL_FIELDS = ("index", "execution_count", "code_sha256", "started", "ended", "status",
                "reads", "writes", "processes")


def document_from_export(doc: dict, context: dict | None = None) -> dict:
    """A provtrace.run/1 document from what a daemon's export(run, "json") returned.

    A daemon on the SQLite store returns the schema as is. One on the
    in-memory store knows sessions and cells only: the document then has
    empty process and file lists and says so under run.gaps, so the view
    shows the gap instead of pretending the run touched nothing.
    """
    if doc.get("schema") == SCHEMA:
        return doc
    if not isinstance(doc.get("run"), dict):
        raise ValueError("the daemon's export is neither provtrace.run/1 nor a session document")
    run = dict(doc["run"])
    run.pop("kernel", None)
    run.setdefault("lost_events", None)
    run.setdefault("complete", None)
    run["gaps"] = {"daemon_store_has_no_process_or_file_records": 1}
    cells = [{"id": c.get("cell_id") or c.get("msg_id"), **{k: c.get(k) for k in _CELL_FIELDS}}
             for c in doc.get("cells") or []]
    return {"schema": SCHEMA, "run": run, "processes": [], "files": [], "renames": [],
            "network": [], "cells": cells, "context": context or {}}


@dataclass(frozen=True)
class StaleNotice:
    """One pushed staleness event: a run (session) and the cells that read a changed file."""
    run_id: str
    cells: tuple[str, ...]
    path: str
    why: str
    words: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        drift = f" [{'; '.join(self.words)}]" if self.words else ""
        return f"{self.path}: {self.why}{drift}"


def stale_notice(event: object) -> StaleNotice | None:
    """The notice in an ApiEvent of kind "stale" (None for anything else or a malformed one)."""
    detail = getattr(event, "detail", None) or {}
    run_id = getattr(event, "run_id", None) or getattr(event, "session_id", None)
    if getattr(event, "kind", None) != "stale" or not run_id or not detail.get("path"):
        return None
    return StaleNotice(run_id=str(run_id), cells=tuple(str(c) for c in detail.get("cells") or ()),
                       path=str(detail["path"]), why=str(detail.get("why") or "changed"),
                       words=tuple(str(w) for w in detail.get("words") or ()))
