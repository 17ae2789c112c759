"""GraphML (read back with networkx) and DOT (parsed with pydot) exports of runs
built in a real store, with their file versions (issue 14)."""

from __future__ import annotations

import base64
import io
import re

import networkx as nx
import pydot
import pytest

from provtrace.tracer.export import graph_formats as G
from provtrace.tracer.export.versioned import versions_for
from provtrace.tracer.store import sqlite as S

from .test_export_flows import (
    CAFE_ESCAPED,
    command_run,
    load,
    notebook_run,
    store,  # noqa: F401  (fixture)
)

# pydot's parser calls pyparsing names that pyparsing now marks deprecated: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")

RUN = "run:20231114T221320-cmd001"
PA, PB = "proc:20231114T221320-cmd001:4200000", "proc:20231114T221320-cmd001:4200001"


def graphml(store, docs: list[dict]) -> bytes:  # noqa: F811
    return G.graphml(docs, versions_for(store, docs))


def dot(store, docs: list[dict]) -> bytes:  # noqa: F811
    return G.dot(docs, versions_for(store, docs))


def read_graphml(data: bytes) -> nx.DiGraph:
    return nx.read_graphml(io.BytesIO(data))


def relation(g: nx.DiGraph, u: str, v: str) -> set[str]:
    return set(g.edges[u, v]["relation"].split(","))


def test_graphml_reads_back_with_the_lineage(store):  # noqa: F811
    """Accesses go to the version they touched, `file:PATH@N` as lineage names it,
    which specializes its path's node `file:PATH`."""
    g = read_graphml(graphml(store, [load(store, command_run(store))]))
    paths = ("/w/in.csv", CAFE_ESCAPED, "/w/mid.csv", "/w/junk.txt", "/w/out.csv.tmp", "/w/out.csv")
    files = {n for n, a in g.nodes(data=True) if a["kind"] == "file"}
    assert files == {f"file:{p}" for p in (*paths, "/nonexistent/bin/tool")}
    assert {n for n, a in g.nodes(data=True) if a["kind"] == "version"} == {f"file:{p}@1" for p in paths}
    assert all(relation(g, f"file:{p}@1", f"file:{p}") == {"specializes"} for p in paths)
    assert relation(g, "file:/nonexistent/bin/tool", PA) == {"read"}  # exec'd: data, not a system binary
    assert {n for n, a in g.nodes(data=True) if a["kind"] == "process"} == {PA, PB}
    assert relation(g, RUN, PA) == {"started"}
    assert relation(g, PA, PB) == {"started", "pipe"}
    assert relation(g, "file:/w/in.csv@1", PA) == {"read"}
    assert relation(g, PA, "file:/w/mid.csv@1") == {"wrote"}
    assert relation(g, PA, "file:/w/junk.txt@1") == {"wrote", "deleted"}
    assert relation(g, "file:/w/out.csv.tmp@1", "file:/w/out.csv@1") == {"renamed"}
    assert relation(g, "file:/w/in.csv@1", "file:/w/mid.csv@1") == {"derived"}
    assert relation(g, "file:/w/in.csv@1", "file:/w/out.csv.tmp@1") == {"derived"}  # through the pipe
    assert nx.has_path(g, "file:/w/in.csv@1", "file:/w/out.csv@1")
    assert not nx.has_path(g, "file:/w/out.csv@1", "file:/w/in.csv@1")
    assert g.edges["file:/w/in.csv@1", PA]["bytes"] == 100
    cafe = g.nodes[f"file:{CAFE_ESCAPED}"]
    assert base64.b64decode(cafe["path_b64"]) == b"/w/caf\xe9.csv" and cafe["path"] == CAFE_ESCAPED
    assert g.nodes["file:/w/out.csv.tmp"]["file_kind"] == "temp"
    out = g.nodes["file:/w/out.csv@1"]
    assert (out["label"], out["path"], out["version"], out["how"]) == ("/w/out.csv@1", "/w/out.csv", 1, "rename")
    assert g.nodes[RUN]["exit_code"] == 0 and g.nodes[RUN]["host"] == "testhost"


def test_graphml_notebook_cells_and_shared_files_across_runs(store):  # noqa: F811
    docs = [load(store, command_run(store)), load(store, notebook_run(store)),
            load(store, command_run(store, run_id="20231114T221330-cmd002", start_ns=3_000_000_000))]
    g = read_graphml(graphml(store, docs))
    nb = "run:20231114T221400-nb0001"
    assert relation(g, nb, "cell:20231114T221400-nb0001:cell-a") == {"ran"}
    assert g.nodes["cell:20231114T221400-nb0001:cell-b"]["status"] == "error"
    readers = set(g.successors("file:/w/in.csv@1"))
    assert {PA, "proc:20231114T221330-cmd002:4200000"} <= readers  # one version node, two runs
    # mid.csv written by each run: two versions, each read by its own run's second process
    assert set(g.predecessors("file:/w/mid.csv")) == {"file:/w/mid.csv@1", "file:/w/mid.csv@2"}
    assert g.has_edge("file:/w/mid.csv@2", "proc:20231114T221330-cmd002:4200001")
    assert not g.has_edge("file:/w/mid.csv@1", "proc:20231114T221330-cmd002:4200001")
    assert g.nodes["file:/w/mid.csv@2"]["run"] == "20231114T221330-cmd002"


def dot_graph(data: bytes) -> pydot.Dot:
    (graph,) = pydot.graph_from_dot_data(data.decode("utf-8"))
    return graph


def _unquote(s: str) -> str:
    """A DOT ID as text: quotes off, \\" and \\\\ unescaped."""
    return re.sub(r'\\(["\\])', r"\1", s[1:-1]) if s.startswith('"') else s


def test_dot_parses_and_matches_the_graph(store):  # noqa: F811
    docs = [load(store, command_run(store)), load(store, notebook_run(store))]
    dg = dot_graph(dot(store, docs))
    g = G.graph(docs, versions_for(store, docs))
    assert {_unquote(n.get_name()) for n in dg.get_nodes()} - {"node"} == set(g.nodes)
    edges = {(_unquote(e.get_source()), _unquote(e.get_destination())) for e in dg.get_edges()}
    assert edges == set(g.edges)
    labels = {(_unquote(e.get_source()), _unquote(e.get_destination())): _unquote(e.get("label"))
              for e in dg.get_edges()}
    assert labels[("file:/w/out.csv.tmp@1", "file:/w/out.csv@1")] == "renamed"
    assert labels[("file:/w/out.csv@1", "file:/w/out.csv")] == "specializes"
    node = {_unquote(n.get_name()): n for n in dg.get_nodes()}["file:/w/out.csv@1"]
    assert _unquote(node.get("label")) == "/w/out.csv@1"


def test_dot_quotes_hostile_labels(store):  # noqa: F811
    doc = load(store, command_run(store))
    for p in doc["processes"]:
        p["argv"] = ['say "hi"', "back\\slash", "new\nline"]
    dg = dot_graph(dot(store, [doc]))
    (node,) = [n for n in dg.get_nodes() if _unquote(n.get_name()) == PA]
    # DOT escapes: \" for a quote, \\ for a backslash, \n for a newline
    assert node.get("label") == '"say \\"hi\\" back\\\\slash new\\nline"'


def test_deterministic_and_empty(tmp_path):
    outs = []
    for name in ("a.db", "b.db"):
        s = S.Store(str(tmp_path / name))
        docs = [load(s, command_run(s)), load(s, notebook_run(s))]
        outs.append((graphml(s, docs), dot(s, docs)))
        s.close()
    assert outs[0] == outs[1]
    assert read_graphml(G.graphml([])).number_of_nodes() == 0
    assert [n.get_name() for n in dot_graph(G.dot([])).get_nodes()] == ["node"]  # the default-attrs line
