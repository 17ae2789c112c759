"""`export --data-only` and [classify] rules on stored runs (issue 14): built
with the real Tracker and RunWriter into a real SQLite store."""

from __future__ import annotations

import pytest

from provtrace.tracer.config import Config, Rule, glob_regex
from provtrace.tracer.export.exporter import render
from provtrace.tracer.export.select import data_only
from provtrace.tracer.model.paths import classify
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S
from tests.unit.test_export_flows import command_run, notebook_run


def ruled(*pairs) -> Config:
    return Config([Rule(g, k, glob_regex(g), "test.toml") for g, k in pairs])


@pytest.fixture
def store(tmp_path):
    s = S.Store(str(tmp_path / "s.db"))
    yield s
    s.close()


def names(doc) -> set[str]:
    return {f["path"] for f in doc["files"]}


def test_rules_change_the_document_not_the_records(store):
    rid = command_run(store)
    before = store.db.execute("SELECT seq, body, hash FROM records ORDER BY seq").fetchall()
    doc = Q.load_run(store, rid, ruled(("/w/mid.csv", "temp"), ("/usr/lib/**", "data")))
    kinds = {f["path"]: f["kind"] for f in doc["files"]}
    assert kinds["/w/mid.csv"] == "temp" and kinds["/usr/lib/libm.so.6"] == "data"
    assert kinds["/w/in.csv"] == "data"
    assert Q.load_run(store, rid)["files"] != doc["files"]  # no config: the stored kinds
    assert {f["path"]: f["kind"] for f in Q.load_run(store, rid)["files"]}["/w/mid.csv"] == "data"
    assert store.db.execute("SELECT seq, body, hash FROM records ORDER BY seq").fetchall() == before


def test_a_cells_writes_follow_the_rules_under_the_final_name(store):
    rid = notebook_run(store)
    cells = {c["id"]: c for c in Q.load_run(store, rid)["cells"]}
    assert cells["cell-a"]["writes"] == ["/nb/clean.csv"]
    cells = {c["id"]: c for c in Q.load_run(store, rid, ruled(("/nb/clean.csv", "system")))["cells"]}
    assert cells["cell-a"]["writes"] == [] and cells["cell-b"]["reads"] == []
    assert cells["cell-a"]["reads"] == ["/nb/data.csv"]


def test_data_only_keeps_data_and_the_temp_names_that_became_data(store):
    rid = command_run(store)
    config = ruled(("/w/junk.txt", "data"))
    doc = Q.load_run(store, rid, config)
    (cut,) = data_only([doc], lambda p: config.effective(p, classify(p)))
    # out.csv.tmp stays: without it out.csv would have no writer; libm does not. The
    # program, outside any library folder, is data (a script a run executes is an input)
    assert names(cut) == {"/w/in.csv", "/w/caf\\xe9.csv", "/w/mid.csv", "/w/junk.txt", "/w/out.csv.tmp",
                          "/nonexistent/bin/tool"}
    assert all(f["kind"] in ("data", "temp") for f in cut["files"])
    assert [r["to"] for r in cut["renames"]] == ["/w/out.csv"]
    assert "libraries" not in cut["context"] and "packages" not in cut["context"]
    assert cut["pipes"] == doc["pipes"]  # both ends touch data
    # a rule that makes mid.csv temp cuts it, and the reader B keeps its own data
    config = ruled(("/w/mid.csv", "temp"))
    (cut,) = data_only([Q.load_run(store, rid, config)], lambda p: config.effective(p, classify(p)))
    assert "/w/mid.csv" not in names(cut) and "/w/out.csv.tmp" in names(cut)


def test_data_only_drops_processes_and_pipes_without_data(store):
    rid = command_run(store)
    config = ruled(("/w/in.csv", "system"), ("/w/caf*", "system"), ("/w/mid.csv", "system"),
                   ("/w/junk.txt", "system"), ("/nonexistent/**", "library"))
    doc = Q.load_run(store, rid, config)
    (cut,) = data_only([doc], lambda p: config.effective(p, classify(p)))
    writer_b = {f["pid"] for f in cut["files"]}
    assert len(writer_b) == 1 and {p["pid"] for p in cut["processes"]} == writer_b
    assert cut["pipes"] == []  # A touches no data now
    # --all leaves out a run with no data at all
    config = ruled(("/**", "system"))
    doc = Q.load_run(store, rid, config)
    assert data_only([doc], lambda p: config.effective(p, classify(p))) == []
    assert len(data_only([doc], lambda p: config.effective(p, classify(p)), keep_empty=True)) == 1


@pytest.mark.parametrize("fmt", ["prov-json", "openlineage", "graphml", "dot", "json"])
def test_every_format_renders_a_cut_document(store, fmt):
    config = ruled(("/w/mid.csv", "temp"))
    docs = [Q.load_run(store, rid, config) for rid in (command_run(store), notebook_run(store))]
    data = render(data_only(docs, lambda p: config.effective(p, classify(p))), fmt).decode()
    assert "/w/out.csv" in data and "/nb/clean.csv" in data
    assert "/w/mid.csv" not in data and "libm.so" not in data
