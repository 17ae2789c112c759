"""`provtrace export` as users run it: the real CLI on real SQLite stores, and (as
root) a real traced `sh -c 'cat in > out'` exported to every format."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import networkx as nx
import pydot
import pytest
from prov.model import ProvDerivation, ProvDocument, ProvGeneration, ProvUsage

from provtrace.tracer.store import sqlite as S
from tests.unit.test_export_flows import command_run, notebook_run

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")
FORMATS = ("prov-json", "prov-n", "prov-xml", "openlineage", "graphml", "dot", "json")
PROV_FORMATS = {"prov-json": "json", "prov-n": "provn", "prov-xml": "xml"}
# pydot's parser calls pyparsing names that pyparsing now marks deprecated: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")


def pt(*args, cwd=None):
    return subprocess.run([PROVTRACE, *args], cwd=cwd, capture_output=True, timeout=300)


def one_line_error(r) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0 and err.startswith("provtrace: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def built_db(tmp_path):
    db = str(tmp_path / "built.db")
    s = S.Store(db)
    command_run(s)
    notebook_run(s)
    s.close()
    return db


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_all_formats_to_file_and_stdout(tmp_path, built_db, fmt):
    out = tmp_path / f"export.{fmt}"
    r = pt("export", "--all", "--format", fmt, "-o", str(out), "--db", built_db)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert b"/w/out.csv" in data and b"/nb/clean.csv" in data
    again = pt("export", "--all", "--format", fmt, "-o", "-", "--db", built_db)
    assert again.returncode == 0 and again.stdout == data  # deterministic, and '-' is stdout


def test_export_one_run_by_prefix(tmp_path, built_db):
    out = tmp_path / "one.json"
    assert pt("export", "20231114T221", "--format", "json", "-o", str(out), "--db", built_db).returncode != 0
    r = pt("export", "20231114T221320", "--format", "json", "-o", str(out), "--db", built_db)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "provtrace.run/1" and doc["run"]["id"] == "20231114T221320-cmd001"
    shown = pt("show", "20231114T221320", "--json", "--db", built_db)
    assert json.loads(shown.stdout) == doc


def test_export_errors_are_one_line(tmp_path, built_db):
    err = one_line_error(pt("export", "nope", "--format", "dot", "-o", str(tmp_path / "x"), "--db", built_db))
    assert "no run 'nope'" in err
    bad = tmp_path / "missing-dir" / "x.dot"
    err = one_line_error(pt("export", "last", "--format", "dot", "-o", str(bad), "--db", built_db))
    assert str(bad) in err and not bad.parent.exists()
    err = one_line_error(pt("export", "last", "--format", "dot", "-o", str(tmp_path), "--db", built_db))
    assert "is a directory" in err
    err = one_line_error(pt("export", "last", "--all", "-o", "-", "--db", built_db))
    assert "RUN or --all" in err
    one_line_error(pt("export", "--all", "-o", "-", "--db", str(tmp_path / "absent.db")))
    r = pt("export", "last", "--format", "yaml", "-o", "-", "--db", built_db)
    assert r.returncode == 2 and b"invalid choice" in r.stderr


def test_export_all_of_an_empty_store_is_a_valid_empty_document(tmp_path):
    db = str(tmp_path / "empty.db")
    S.Store(db).close()
    for fmt in FORMATS:
        r = pt("export", "--all", "--format", fmt, "-o", "-", "--db", db)
        assert r.returncode == 0, r.stderr
        if fmt in PROV_FORMATS:
            assert ProvDocument.deserialize(content=r.stdout.decode(), format=PROV_FORMATS[fmt]).records == []
        elif fmt == "json":
            assert json.loads(r.stdout) == []
        elif fmt == "openlineage":
            assert r.stdout == b""
        elif fmt == "graphml":
            assert nx.read_graphml(io.BytesIO(r.stdout)).number_of_nodes() == 0
        else:
            (g,) = pydot.graph_from_dot_data(r.stdout.decode())
            assert g.get_edges() == []


# --- a real traced run ---------------------------------------------------------------


def _derived_in_prov(doc: ProvDocument, src: str, dst: str) -> None:
    def ident(v) -> str | None:
        return None if v is None else v.uri

    der = [(ident(r.formal_attributes[0][1]), ident(r.formal_attributes[1][1]), ident(r.formal_attributes[2][1]))
           for r in doc.get_records(ProvDerivation)]
    (activity,) = [a for o, s, a in der if o.endswith(dst) and s.endswith(src)]
    used = {(ident(r.formal_attributes[0][1]), ident(r.formal_attributes[1][1])) for r in doc.get_records(ProvUsage)}
    gen = {(ident(r.formal_attributes[0][1]), ident(r.formal_attributes[1][1]))
           for r in doc.get_records(ProvGeneration)}
    assert any(a == activity and e.endswith(src) for a, e in used), "the deriving process used the input"
    assert any(a == activity and e.endswith(dst) for e, a in gen), "and generated the output"


@pytest.mark.privileged
def test_traced_cat_exported_to_every_format(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    work = tmp_path / "work"
    work.mkdir()
    (work / "in").write_text("hello\n")
    db = str(tmp_path / "traced.db")
    r = pt("run", "--db", db, "--", "sh", "-c", "cat in > out", cwd=work)
    assert r.returncode == 0, r.stderr
    src, dst = str(work / "in"), str(work / "out")
    got = {}
    for fmt in FORMATS:
        out = tmp_path / f"traced.{fmt}"
        r = pt("export", "last", "--format", fmt, "-o", str(out), "--db", db)
        assert r.returncode == 0, r.stderr
        got[fmt] = out.read_bytes()

    for fmt, name in PROV_FORMATS.items():
        _derived_in_prov(ProvDocument.deserialize(content=got[fmt].decode(), format=name), src, dst)

    events = [json.loads(line) for line in got["openlineage"].decode().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert src in [i["name"] for i in events[1]["inputs"]]
    assert [o["name"] for o in events[1]["outputs"]] == [dst]

    g = nx.read_graphml(io.BytesIO(got["graphml"]))
    assert "derived" in g.edges[f"file:{src}", f"file:{dst}"]["relation"]
    (cat,) = [n for n in g.successors(f"file:{src}") if g.nodes[n]["kind"] == "process"]
    assert g.has_edge(cat, f"file:{dst}")

    (dg,) = pydot.graph_from_dot_data(got["dot"].decode())
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"')): e.get("label") for e in dg.get_edges()}
    assert edges[(f"file:{src}", f"file:{dst}")] == '"derived"'

    doc = json.loads(got["json"])
    assert any(f["path"] == src and "read" in f["access"] for f in doc["files"])
    assert any(f["path"] == dst and "write" in f["access"] for f in doc["files"])
    assert re.fullmatch(r"\d{8}T\d{6}-\w+", doc["run"]["id"])
