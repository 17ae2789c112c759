"""Schema capture and drift on real traced runs: real probes, the real CLI, files
written by pyarrow, the csv module and json, a CSV whose header changes between runs."""

from __future__ import annotations

import json
import os
import sys

import pytest

from . import helpers

pytestmark = pytest.mark.privileged


def pt(*args, cwd=None, check=True):
    return helpers.pt(*args, cwd=cwd, check=check)


@pytest.fixture
def db(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return str(tmp_path / "drift.db")


def _runs(db):
    return [r["id"] for r in json.loads(pt("runs", "--db", db, "--json").stdout)]


def _file(doc, path):
    return next(f for f in doc["files"] if f["path"] == str(path) and f.get("schema"))


WRITE_TABLES = """
import json, pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"id": [1, 2], "price": [1.5, 2.5]}), "t.parquet")
with open("r.jsonl", "w") as f:
    f.write(json.dumps({"a": 1, "b": "x"}) + "\\n" + json.dumps({"a": 2, "b": "y"}) + "\\n")
"""


def test_show_json_has_the_schema_of_each_version_written(tmp_path, db):
    pt("run", "--db", db, "--", sys.executable, "-c", WRITE_TABLES, cwd=tmp_path)
    doc = json.loads(pt("show", "last", "--db", db, "--json").stdout)
    parquet = _file(doc, tmp_path / "t.parquet")
    assert parquet["schema"]["format"] == "parquet" and parquet["schema"]["rows"] == 2
    assert [(c["name"], c["type"]) for c in parquet["schema"]["columns"]] == [("id", "int64"), ("price", "float64")]
    assert len(parquet["sha256"]) == 64  # the schema of exactly this version
    lines = _file(doc, tmp_path / "r.jsonl")
    assert [c["name"] for c in lines["schema"]["columns"]] == ["a", "b"] and lines["schema"]["rows"] == 2


def test_openlineage_export_carries_the_captured_schema_facet(tmp_path, db):
    """The schema facet of an output dataset is the schema captured for the version written."""
    pt("run", "--db", db, "--", sys.executable, "-c", WRITE_TABLES, cwd=tmp_path)
    out = tmp_path / "ol.json"
    pt("export", "last", "--db", db, "--format", "openlineage", "-o", str(out))
    events = [json.loads(line) for line in out.read_text().splitlines()]  # one event a line
    outputs = [d for e in events for d in e.get("outputs", []) if d["name"] == str(tmp_path / "t.parquet")]
    assert outputs, "t.parquet is not an output of the exported run"
    fields = outputs[-1]["facets"]["schema"]["fields"]
    assert [(f["name"], f["type"]) for f in fields] == [("id", "int64"), ("price", "float64")]


def test_a_csv_header_change_is_drift_in_diff_and_stale(tmp_path, db):
    data = tmp_path / "prices.csv"
    data.write_text("id,price,qty\n1,9.5,3\n2,7.25,4\n")
    pt("run", "--db", db, "--", "sh", "-c", "cut -d, -f1 prices.csv > ids.txt", cwd=tmp_path)
    (first,) = _runs(db)

    # outside tracing: price removed, qty retyped, three columns added
    data.write_text("id,qty,region,note,day\n1,3.5,eu,x,2024-01-01\n2,4,us,y,2024-01-02\n")
    r = pt("stale", "--db", db)
    assert "column `price` removed" in r.stdout and "`qty` int64 → float64" in r.stdout
    assert "3 columns added (`region`, `note`, `day`)" in r.stdout
    assert f"drift {data}: breaking: " in r.stdout and f"read before the change by run {first}" in r.stdout
    result = json.loads(pt("stale", "--db", db, "--json").stdout)
    (d,) = result["drift"]
    assert d["path"] == str(data) and d["breaking"] and d["consumers"] == [{"run": first, "cell": None}]
    (reason,) = [x for x in result["stale"][0]["reasons"] if x["path"] == str(data)]
    assert reason["why"] == "content changed" and reason["drift"]["removed"] == ["price"]

    pt("run", "--db", db, "--", "sh", "-c", "cut -d, -f1 prices.csv > ids.txt", cwd=tmp_path)
    a, b = _runs(db)
    diff = json.loads(pt("diff", a, b, "--db", db, "--json").stdout)
    (item,) = [c for c in diff["inputs"]["changed"] if c["path"] == str(data)]
    assert item["drift"]["breaking"] and item["drift"]["retyped"] == [
        {"column": "qty", "from": "int64", "to": "float64"}]
    text = pt("diff", a, b, "--db", db).stdout
    assert f"{data}: breaking: column `price` removed; `qty` int64 → float64; 3 columns added" in text


def test_added_columns_are_compatible(tmp_path, db):
    data = tmp_path / "p.csv"
    data.write_text("id,qty\n1,3\n")
    pt("run", "--db", db, "--", "sh", "-c", "cat p.csv > /dev/null", cwd=tmp_path)
    data.write_text("id,qty,extra\n1,3,a\n")
    (d,) = json.loads(pt("stale", "--db", db, "--json").stdout)["drift"]
    assert not d["breaking"] and d["words"] == ["column `extra` added"]
    assert f"drift {data}: compatible: column `extra` added" in pt("stale", "--db", db).stdout


def test_schema_off_by_config(tmp_path, db, monkeypatch):
    conf = tmp_path / "config.toml"
    conf.write_text("[schema]\nenabled = false\n")
    monkeypatch.setenv("PROVTRACE_CONFIG", str(conf))
    (tmp_path / "p.csv").write_text("id\n1\n")
    pt("run", "--db", db, "--", "sh", "-c", "cat p.csv > /dev/null", cwd=tmp_path)
    doc = json.loads(pt("show", "last", "--db", db, "--json").stdout)
    (f,) = [f for f in doc["files"] if f["path"] == str(tmp_path / "p.csv")]
    assert f["sha256"] and "schema" not in f
