"""`provtrace export` as users run it: the real CLI on real SQLite stores, and (as
root) a real traced `sh -c 'cat in > out'` exported to every format, and two real
atomic-write runs of one output exported per file version (issue 14)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import networkx as nx
import prov
import pydot
import pytest
from lxml import etree
from prov.model import ProvDerivation, ProvDocument, ProvEntity, ProvGeneration, ProvSpecialization, ProvUsage

from provtrace.tracer.store import sqlite as S
from tests.unit.test_export_flows import command_run, notebook_run
from tests.unit.test_export_openlineage import check_event

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


def _prov_names(doc: ProvDocument) -> dict[str, str]:
    """Entity URI -> its label: a path, or PATH@N for a version (ids are escaped, issue 14)."""
    return {r.identifier.uri: str(next(iter(r.get_attribute("prov:label")))) for r in doc.get_records(ProvEntity)}


def _rels(doc: ProvDocument, cls, n: int = 2) -> list[tuple]:
    """Each record's first n formal attributes, entities by label, activities by URI."""
    names = _prov_names(doc)
    return [tuple(None if val is None else names.get(val.uri, val.uri) for _k, val in r.formal_attributes[:n])
            for r in doc.get_records(cls)]


def _derived_in_prov(doc: ProvDocument, src: str, dst: str) -> None:
    """A version of dst derives from the version of src a process used, and that process generated it
    (sh creates out, cat writes it: out@2 is cat's update of sh's empty out@1)."""
    ((o, s, activity),) = [(o, s, a) for o, s, a in _rels(doc, ProvDerivation, 3)
                           if o.startswith(f"{dst}@") and s.startswith(f"{src}@")]
    assert (activity, s) in _rels(doc, ProvUsage), "the deriving process used the input"
    assert (o, activity) in _rels(doc, ProvGeneration), "and generated the output"


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
    for ev in events:
        check_event(ev)  # the OpenLineage spec's schema, and each standard facet's
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert "version" in {k for o in events[1]["outputs"] for k in o.get("facets", {})}  # sha256, fingerprinted
    assert src in [i["name"] for i in events[1]["inputs"]]
    assert [o["name"] for o in events[1]["outputs"]] == [dst]

    g = nx.read_graphml(io.BytesIO(got["graphml"]))
    assert "derived" in g.edges[f"file:{src}@1", f"file:{dst}@2"]["relation"]
    (cat,) = [n for n in g.successors(f"file:{src}@1") if g.nodes[n]["kind"] == "process"]
    assert g.has_edge(cat, f"file:{dst}@2")
    assert g.edges[f"file:{dst}@1", f"file:{dst}@2"]["relation"] == "updated"  # cat wrote into what sh made

    (dg,) = pydot.graph_from_dot_data(got["dot"].decode())
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"')): e.get("label") for e in dg.get_edges()}
    assert edges[(f"file:{src}@1", f"file:{dst}@2")] == '"derived"'

    doc = json.loads(got["json"])
    assert any(f["path"] == src and "read" in f["access"] for f in doc["files"])
    assert any(f["path"] == dst and "write" in f["access"] for f in doc["files"])
    assert re.fullmatch(r"\d{8}T\d{6}-\w+", doc["run"]["id"])


@pytest.mark.privileged
def test_atomic_rewrites_export_one_entity_per_version(tmp_path):
    """Issue 14's first example, exported: `o` written twice through o.tmp, from a
    then from b. Each export binds to versions: o@2 derives from b's bytes, not a's,
    no version is generated twice, PROV-XML validates against the W3C schema, and
    the graph's version ids are the ones `provtrace lineage` gives."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    work = tmp_path / "work"
    work.mkdir()
    (work / "a").write_text("1\n")
    (work / "b").write_text("2\n")
    db = str(tmp_path / "traced.db")
    for src in ("a", "b"):
        r = pt("run", "--db", db, "--", "sh", "-c", f"cat {src} > o.tmp && mv o.tmp o", cwd=work)
        assert r.returncode == 0, r.stderr
    a, b, o, tmp = (str(work / n) for n in ("a", "b", "o", "o.tmp"))  # o.tmp: sh creates it, cat writes it

    r = pt("export", "--all", "--format", "prov-xml", "-o", "-", "--db", db)
    assert r.returncode == 0, r.stderr
    schema = etree.XMLSchema(etree.parse(os.path.join(os.path.dirname(prov.__file__), "tests", "schemas",
                                                      "prov.xsd")))
    assert schema.validate(etree.fromstring(r.stdout)), str(schema.error_log)
    doc = ProvDocument.deserialize(content=r.stdout.decode(), format="xml")
    der = nx.DiGraph(_rels(doc, ProvDerivation))  # derived -> what it derives from
    assert nx.has_path(der, f"{o}@2", f"{b}@1") and not nx.has_path(der, f"{o}@2", f"{a}@1")
    assert nx.has_path(der, f"{o}@1", f"{a}@1") and not nx.has_path(der, f"{o}@1", f"{b}@1")
    assert any(x.startswith(f"{tmp}@") for x in der.successors(f"{o}@2"))  # by the rename
    generated = [e for e, _a in _rels(doc, ProvGeneration)]
    assert len(generated) == len(set(generated)) and {f"{o}@1", f"{o}@2"} <= set(generated)
    assert {(f"{o}@1", o), (f"{o}@2", o)} <= set(_rels(doc, ProvSpecialization))

    r = pt("export", "--all", "--format", "graphml", "-o", "-", "--db", db)
    assert r.returncode == 0, r.stderr
    g = nx.read_graphml(io.BytesIO(r.stdout))
    r = pt("lineage", o, "--json", "--db", db)
    assert r.returncode == 0, r.stderr
    lineage_ids = {n["id"] for n in json.loads(r.stdout)["nodes"] if n["kind"] not in ("proc", "cell", "process")}
    assert f"file:{o}@2" in lineage_ids and lineage_ids <= set(g.nodes)
    assert nx.has_path(g, f"file:{b}@1", f"file:{o}@2") and not nx.has_path(g, f"file:{a}@1", f"file:{o}@2")
