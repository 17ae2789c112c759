"""GraphML (read back with networkx) and DOT (parsed with pydot) exports of runs
built in a real store."""

from __future__ import annotations

import base64
import io
import re

import networkx as nx
import pydot
import pytest

from provtrace.tracer.export import graph_formats as G
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


def read_graphml(data: bytes) -> nx.DiGraph:
    return nx.read_graphml(io.BytesIO(data))


def relation(g: nx.DiGraph, u: str, v: str) -> set[str]:
    return set(g.edges[u, v]["relation"].split(","))


def test_graphml_reads_back_with_the_lineage(store):  # noqa: F811
    g = read_graphml(G.graphml([load(store, command_run(store))]))
    files = {n for n, a in g.nodes(data=True) if a["kind"] == "file"}
    assert files == {f"file:{p}" for p in ("/w/in.csv", CAFE_ESCAPED, "/w/mid.csv", "/w/junk.txt",
                                           "/w/out.csv.tmp", "/w/out.csv", "/nonexistent/bin/tool")}
    assert relation(g, "file:/nonexistent/bin/tool", PA) == {"read"}  # exec'd: data, not a system binary
    assert {n for n, a in g.nodes(data=True) if a["kind"] == "process"} == {PA, PB}
    assert relation(g, RUN, PA) == {"started"}
    assert relation(g, PA, PB) == {"started", "pipe"}
    assert relation(g, "file:/w/in.csv", PA) == {"read"}
    assert relation(g, PA, "file:/w/mid.csv") == {"wrote"}
    assert relation(g, PA, "file:/w/junk.txt") == {"wrote", "deleted"}
    assert relation(g, "file:/w/out.csv.tmp", "file:/w/out.csv") == {"renamed"}
    assert relation(g, "file:/w/in.csv", "file:/w/mid.csv") == {"derived"}
    assert nx.has_path(g, "file:/w/in.csv", "file:/w/out.csv")
    assert not nx.has_path(g, "file:/w/out.csv", "file:/w/in.csv")
    assert g.edges["file:/w/in.csv", PA]["bytes"] == 100
    cafe = g.nodes[f"file:{CAFE_ESCAPED}"]
    assert base64.b64decode(cafe["path_b64"]) == b"/w/caf\xe9.csv" and cafe["path"] == CAFE_ESCAPED
    assert g.nodes["file:/w/out.csv.tmp"]["file_kind"] == "temp"
    assert g.nodes[RUN]["exit_code"] == 0 and g.nodes[RUN]["host"] == "testhost"


def test_graphml_notebook_cells_and_shared_files_across_runs(store):  # noqa: F811
    docs = [load(store, command_run(store)), load(store, notebook_run(store)),
            load(store, command_run(store, run_id="20231114T221330-cmd002", start_ns=3_000_000_000))]
    g = read_graphml(G.graphml(docs))
    nb = "run:20231114T221400-nb0001"
    assert relation(g, nb, "cell:20231114T221400-nb0001:cell-a") == {"ran"}
    assert g.nodes["cell:20231114T221400-nb0001:cell-b"]["status"] == "error"
    readers = set(g.successors("file:/w/in.csv"))
    assert {PA, "proc:20231114T221330-cmd002:4200000"} <= readers  # one file node, two runs


def dot_graph(data: bytes) -> pydot.Dot:
    (graph,) = pydot.graph_from_dot_data(data.decode("utf-8"))
    return graph


def _unquote(s: str) -> str:
    """A DOT ID as text: quotes off, \\" and \\\\ unescaped."""
    return re.sub(r'\\(["\\])', r"\1", s[1:-1]) if s.startswith('"') else s


def test_dot_parses_and_matches_the_graph(store):  # noqa: F811
    docs = [load(store, command_run(store)), load(store, notebook_run(store))]
    dg = dot_graph(G.dot(docs))
    g = G.graph(docs)
    assert {_unquote(n.get_name()) for n in dg.get_nodes()} - {"node"} == set(g.nodes)
    edges = {(_unquote(e.get_source()), _unquote(e.get_destination())) for e in dg.get_edges()}
    assert edges == set(g.edges)
    labels = {(_unquote(e.get_source()), _unquote(e.get_destination())): _unquote(e.get("label"))
              for e in dg.get_edges()}
    assert labels[("file:/w/out.csv.tmp", "file:/w/out.csv")] == "renamed"


def test_dot_quotes_hostile_labels(store):  # noqa: F811
    doc = load(store, command_run(store))
    for p in doc["processes"]:
        p["argv"] = ['say "hi"', "back\\slash", "new\nline"]
    dg = dot_graph(G.dot([doc]))
    (node,) = [n for n in dg.get_nodes() if _unquote(n.get_name()) == PA]
    # DOT escapes: \" for a quote, \\ for a backslash, \n for a newline
    assert node.get("label") == '"say \\"hi\\" back\\\\slash new\\nline"'


def test_deterministic_and_empty(tmp_path):
    outs = []
    for name in ("a.db", "b.db"):
        s = S.Store(str(tmp_path / name))
        docs = [load(s, command_run(s)), load(s, notebook_run(s))]
        outs.append((G.graphml(docs), G.dot(docs)))
        s.close()
    assert outs[0] == outs[1]
    assert read_graphml(G.graphml([])).number_of_nodes() == 0
    assert [n.get_name() for n in dot_graph(G.dot([])).get_nodes()] == ["node"]  # the default-attrs line
