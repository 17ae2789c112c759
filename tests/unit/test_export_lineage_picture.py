"""Lineage pictures (export/lineage_picture.py) on hand-made lineage results:
summary nodes for hidden library files, run groups, the node cap, Mermaid
structure, and the one-line error when Graphviz is missing."""

from __future__ import annotations

import re

import pydot
import pytest

from provtrace.tracer.errors import UsageError
from provtrace.tracer.export import lineage_picture as P


def _result(procs: int = 1, hidden: dict | None = None, direction: str = "upstream") -> dict:
    """out.csv written by `procs` processes of run R1, each reading in.csv."""
    nodes = [{"id": "file:/w/out.csv@1", "kind": "file", "path": "/w/out.csv", "version": 1,
              "written": "2026-12-07T21:14:03.123456Z", "changed_outside_tracing": False, "root": True},
             {"id": "file:/w/in.csv@1", "kind": "file", "path": "/w/in.csv", "version": 1,
              "changed_outside_tracing": True}]
    edges = []
    for pid in range(100, 100 + procs):
        nodes.append({"id": f"proc:R1:{pid}", "kind": "process", "run": "R1", "pid": pid,
                      "exe": "/usr/bin/python3.11", "argv": ["python3", "/w/deep/folder/step.py", "-v"],
                      **({"hidden_files": hidden} if hidden else {})})
        edges += [{"from": "file:/w/in.csv@1", "to": f"proc:R1:{pid}", "rel": "read"},
                  {"from": f"proc:R1:{pid}", "to": "file:/w/out.csv@1", "rel": "wrote"}]
    return {"root": "/w/out.csv", "direction": direction, "nodes": nodes, "edges": edges}


def check_mermaid(text: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    """A structural check of a Mermaid flowchart as lineage_picture writes it: a header,
    balanced subgraphs, each node defined once with a quoted label, edges between
    defined nodes. Returns (node ids, edges)."""
    lines = text.rstrip("\n").split("\n")
    assert re.fullmatch(r"flowchart (TB|LR)", lines[0]), lines[0]
    nodes: set[str] = set()
    edges = []
    depth = 0
    for line in lines[1:]:
        s = line.strip()
        if m := re.fullmatch(r'subgraph (\w+)\["[^"\n]*"\]', s):
            depth += 1
            assert m.group(1) not in nodes
        elif s == "end":
            depth -= 1
            assert depth >= 0, "end without subgraph"
        elif m := re.fullmatch(r'(n\d+)(\[/|\[\[|\[|\()"([^"\n]*)"(/\]|\]\]|\]|\))', s):
            assert m.group(1) not in nodes, f"{m.group(1)} defined twice"
            assert {"[/": "/]", "[[": "]]", "[": "]", "(": ")"}[m.group(2)] == m.group(4), s
            nodes.add(m.group(1))
        elif m := re.fullmatch(r"(n\d+) -->\|(\w+)\| (n\d+)", s):
            edges.append((m.group(1), m.group(2), m.group(3)))
        elif m := re.fullmatch(r"style (n\d+) [\w:;-]+", s):
            assert m.group(1) in nodes
        else:
            raise AssertionError(f"not a line of a lineage flowchart: {line!r}")
    assert depth == 0, "unclosed subgraph"
    assert all(a in nodes and b in nodes for a, _rel, b in edges), "an edge to an undefined node"
    return nodes, edges


def _dot_nodes(text: str) -> dict[str, str]:
    (g,) = pydot.graph_from_dot_data(text)
    found = {}
    for sub in [g, *g.get_subgraphs()]:
        for n in sub.get_nodes():
            if n.get_name() not in ("node", "edge", "graph"):
                found[n.get_name().strip('"')] = (n.get("label") or "").strip('"')
    return found


def test_many_library_files_become_one_summary_node_in_the_run_group():
    text = P.to_dot(_result(hidden={"library": 214, "system": 3}))
    nodes = _dot_nodes(text)
    assert nodes["hidden:proc:R1:100"] == "python3.11: 214 library files, 3 system files"
    (g,) = pydot.graph_from_dot_data(text)
    (cluster,) = g.get_subgraphs()
    assert cluster.get_name() == "cluster_0" and cluster.get("label") == '"run R1"'
    assert {n.get_name().strip('"') for n in cluster.get_nodes()} >= {"proc:R1:100", "hidden:proc:R1:100"}
    assert '"hidden:proc:R1:100" -> "proc:R1:100" [label="read"]' in text


def test_a_few_hidden_files_are_a_line_in_the_process_box():
    nodes = _dot_nodes(P.to_dot(_result(hidden={"library": 2, "system": 1})))
    assert "hidden:proc:R1:100" not in nodes
    assert nodes["proc:R1:100"] == "pid 100\\npython3 step.py -v\\n+ 2 library, 1 system"


def test_downstream_summary_points_away_from_the_process():
    text = P.to_dot(_result(hidden={"library": 40}, direction="downstream"))
    assert '"proc:R1:100" -> "hidden:proc:R1:100" [label="wrote"]' in text


def test_labels_are_short_and_the_full_path_is_the_tooltip():
    r = _result()
    r["nodes"][1]["path"] = "/very/long/folder/name/that/goes/on/and/on/forever/input-data.csv"
    text = P.to_dot(r)
    assert _dot_nodes(text)["file:/w/in.csv@1"].startswith("…/forever/input-data.csv\\nversion 1")
    assert 'tooltip="/very/long/folder/name/that/goes/on/and/on/forever/input-data.csv"' in text
    assert "version 1 · 2026-12-07 21:14" in _dot_nodes(text)["file:/w/out.csv@1"]


def test_too_many_nodes_is_one_line_that_says_how_to_narrow_it():
    with pytest.raises(P.PictureTooLarge) as e:
        P.to_dot(_result(procs=20, hidden={"library": 50}), max_nodes=30)
    msg = str(e.value)
    assert "\n" not in msg and "42 nodes" in msg and "--depth" in msg and "--max-nodes 30" in msg
    assert isinstance(e.value, UsageError)
    P.to_dot(_result(procs=20, hidden={"library": 50}), max_nodes=42)  # at the cap: drawn


def test_mermaid_has_a_subgraph_per_run_and_valid_structure():
    text = P.to_mermaid(_result(procs=2, hidden={"library": 30}))
    nodes, edges = check_mermaid(text)
    assert len(nodes) == 6 and text.count("subgraph ") == 1
    assert sum(rel == "read" for _a, rel, _b in edges) == 4


def test_mermaid_quotes_awkward_labels():
    r = _result()
    r["nodes"][2]["argv"] = ["sh", "-c", 'echo "hi" | sed s/a/b/ > out.csv']
    check_mermaid(P.to_mermaid(r))


def test_missing_graphviz_is_one_line_naming_the_debian_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError) as e:
        P.to_image(_result(), "png")
    assert "\n" not in str(e.value) and "graphviz" in str(e.value) and "apt install" in str(e.value)


def test_png_through_graphviz():
    png = P.to_image(_result(procs=3, hidden={"library": 200}), "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
