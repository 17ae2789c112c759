"""Schema capture of tabular data files (store/schema.py through store/fingerprint.py)
and drift in words (lineage/drift.py): real files written by pyarrow, the csv
module and json; a real SQLite store; the real config loader."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from provtrace.tracer import config as C
from provtrace.tracer.lineage.diff import diff_runs, render_diff
from provtrace.tracer.lineage.drift import drift, summary
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.fingerprint import fingerprint, record_fingerprints
from provtrace.tracer.store.schema import OFF, SchemaPolicy

ON = SchemaPolicy()


def _schema(path, policy=ON):
    return fingerprint(str(path), schema=policy)["schema"]


def _cols(schema):
    return [(c["name"], c["type"]) for c in schema["columns"]]


def test_parquet_written_by_pyarrow(tmp_path):
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "price": [1.5, 2.0, None],
                      "name": ["a", "b", "c"], "ts": pa.array([0, 1, 2], pa.timestamp("us"))})
    pq.write_table(table, tmp_path / "t.parquet")
    s = _schema(tmp_path / "t.parquet")
    assert s["format"] == "parquet" and s["rows"] == 3 and not s["sampled"]
    assert _cols(s) == [("id", "int64"), ("price", "float64"), ("name", "string"), ("ts", "timestamp")]


def test_feather_and_arrow_stream(tmp_path):
    table = pa.table({"qty": pa.array([1, 2], pa.int32()), "ok": [True, False]})
    feather.write_feather(table, tmp_path / "t.feather")
    s = _schema(tmp_path / "t.feather")
    assert s["format"] == "arrow" and s["rows"] == 2 and _cols(s) == [("qty", "int32"), ("ok", "bool")]
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    s = _schema(tmp_path / "s.arrow")
    assert _cols(s) == [("qty", "int32"), ("ok", "bool")] and s["rows"] is None  # a stream has no footer


def test_csv_and_tsv_types_and_rows(tmp_path):
    (tmp_path / "a.csv").write_text("id,price,name,day,flag,empty\n1,2.5,x,2024-01-01,true,\n"
                                    "2,3,y,2024-01-02,false,\n")
    s = _schema(tmp_path / "a.csv")
    assert s == {"format": "csv", "rows": 2, "sampled": False, "columns": [
        {"name": "id", "type": "int64"}, {"name": "price", "type": "float64"},
        {"name": "name", "type": "string"}, {"name": "day", "type": "date"},
        {"name": "flag", "type": "bool"}, {"name": "empty", "type": "null"}]}
    (tmp_path / "b.tsv").write_text("a\tb c\n1\tx\n")
    assert _cols(_schema(tmp_path / "b.tsv")) == [("a", "int64"), ("b c", "string")]
    (tmp_path / "semi.csv").write_text("a;b\n1;2\n3;4\n")
    assert _cols(_schema(tmp_path / "semi.csv")) == [("a", "int64"), ("b", "int64")]


def test_json_lines(tmp_path):
    rows = [{"a": 1, "b": "x"}, {"a": 2.5, "c": None, "d": [1]}, {"e": {"k": 1}}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = _schema(tmp_path / "r.jsonl")
    assert s["rows"] == 3 and _cols(s) == [("a", "float64"), ("b", "string"), ("c", "null"),
                                            ("d", "list"), ("e", "struct")]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    assert _schema(tmp_path / "bad.jsonl") == {"format": "jsonl", "error": "line 2 is not JSON"}


def test_reads_at_most_max_bytes(tmp_path):
    """A file above the budget: types from its head, no row count, marked sampled."""
    with open(tmp_path / "big.csv", "w") as f:
        f.write("n,v\n")
        for i in range(200_000):
            f.write(f"{i},{i * 0.5}\n")
    size = os.path.getsize(tmp_path / "big.csv")
    s = _schema(tmp_path / "big.csv", SchemaPolicy(max_bytes=64 * 1024))
    assert size > 64 * 1024 and s["sampled"] and s["rows"] is None
    assert _cols(s) == [("n", "int64"), ("v", "float64")]


def test_not_what_the_name_says_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "fake.parquet").write_bytes(b"this is not parquet at all")
    fp = fingerprint(str(tmp_path / "fake.parquet"), schema=ON)
    assert fp["sha256"] and fp["schema"]["format"] == "parquet" and fp["schema"]["error"]
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)  # decodes with replacement, never raises
    assert "columns" in _schema(tmp_path / "bin.csv")


def test_off_and_not_tabular(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "a.txt").write_text("x\n1\n")
    assert "schema" not in fingerprint(str(tmp_path / "a.csv"), schema=OFF)
    assert "schema" not in fingerprint(str(tmp_path / "a.txt"), schema=ON)


def test_recorded_with_the_fingerprint_and_shown(tmp_path):
    """The schema sits in the FINGERPRINT record beside the sha256 of the same bytes."""
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    store = S.Store(str(tmp_path / "s.db"))
    rid = store.new_run("r1", {"id": "r1", "kind": "command", "start_us": 0})
    assert record_fingerprints(store, rid, [str(tmp_path / "a.csv")], schema=ON) == 1
    store.flush()
    (body,) = [json.loads(b) for _s, _r, k, _p1, _p2, b in store.records(rid) if k == S.FINGERPRINT]
    assert len(body["sha256"]) == 64 and _cols(body["schema"]) == [("x", "int64"), ("y", "int64")]


def test_time_budget_skips_the_rest_and_says_so(tmp_path):
    paths = []
    for i in range(3):
        (tmp_path / f"{i}.csv").write_text("a\n1\n")
        paths.append(str(tmp_path / f"{i}.csv"))
    store = S.Store(str(tmp_path / "s.db"))
    rid = store.new_run("r1", {"id": "r1", "kind": "command", "start_us": 0})
    record_fingerprints(store, rid, paths, schema=SchemaPolicy(budget_s=1e-9))
    store.flush()
    bodies = [json.loads(b) for _s, _r, k, _p1, _p2, b in store.records(rid) if k == S.FINGERPRINT]
    assert any(b.get("schema_skipped") == "time budget spent" and "schema" not in b for b in bodies)
    assert all(b["sha256"] for b in bodies)  # the fingerprint itself is never skipped


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVTRACE_SYSTEM_CONFIG", str(tmp_path / "etc.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PROVTRACE_CONFIG", raising=False)
    return tmp_path


def test_config_turns_it_off_and_bounds_it(env):
    assert C.load().schema == SchemaPolicy()
    (env / "etc.toml").write_text("[schema]\nmax_bytes = 1024\n")
    (env / "xdg" / "provtrace").mkdir(parents=True)
    (env / "xdg" / "provtrace" / "config.toml").write_text("[schema]\nenabled = false\n")
    assert C.load().schema == SchemaPolicy(enabled=False, max_bytes=1024)


@pytest.mark.parametrize("text,words", [
    ("[schema]\nenabled = 1\n", "enabled: 1 is not a boolean"),
    ("[schema]\nmax_bytes = 0\n", "must be above 0"),
    ("[schema]\nbudget = 1\n", "unknown key"),
    ("schema = 3\n", "[schema] must be a table"),
])
def test_bad_schema_config_is_one_line(env, text, words):
    (env / "etc.toml").write_text(text)
    with pytest.raises(C.ConfigError) as e:
        C.load()
    assert words in str(e.value) and "\n" not in str(e.value) and "etc.toml" in str(e.value)


# -- drift ------------------------------------------------------------------------
def _t(*cols, fmt="csv", rows=None):
    return {"format": fmt, "columns": [{"name": n, "type": t} for n, t in cols], "rows": rows}


def test_drift_words_breaking_and_compatible():
    old = _t(("id", "int64"), ("price", "float64"), ("qty", "int64"))
    d = drift(old, _t(("id", "int64"), ("qty", "float64"), ("a", "string"), ("b", "int64"), ("c", "bool")))
    assert d["words"] == ["column `price` removed", "`qty` int64 → float64",
                          "3 columns added (`a`, `b`, `c`)"]
    assert d["breaking"] and d["removed"] == ["price"]
    assert d["retyped"] == [{"column": "qty", "from": "int64", "to": "float64"}]
    added = drift(old, _t(*[(c["name"], c["type"]) for c in old["columns"]], ("note", "string")))
    assert not added["breaking"] and summary(added) == "compatible: column `note` added"
    assert drift(old, _t(("id", "int64"), ("price", "null"), ("qty", "int64")))["words"] == []
    assert drift(old, {"format": "csv", "error": "x"}) is None and drift(None, old) is None


def test_diff_reports_drift_in_words():
    def doc(schema, sha):
        return {"run": {"id": sha}, "files": [{"path": "/d/in.csv", "access": ["read"], "kind": "data",
                                               "sha256": sha, "schema": schema}]}
    a = doc(_t(("id", "int64"), ("price", "float64")), "a" * 64)
    b = doc(_t(("id", "float64"), ("extra", "string")), "b" * 64)
    d = diff_runs(a, b)
    (item,) = d["inputs"]["changed"]
    assert item["drift"]["breaking"] and "schema" not in item["a"]
    text = render_diff(d)
    assert ("/d/in.csv: breaking: column `price` removed; `id` int64 → float64; column `extra` added"
            in text)
