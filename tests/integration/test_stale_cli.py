"""`provtrace stale` and `diff` on real traced runs: real probes, real files, real SQLite."""

from __future__ import annotations

import json
import os
import pytest

from . import helpers

pytestmark = pytest.mark.privileged


def pt(*args, cwd=None, check=True):
    return helpers.pt(*args, cwd=cwd, check=check)


@pytest.fixture
def db(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return str(tmp_path / "stale.db")


def _units(db, *run):
    return json.loads(pt("stale", *run, "--db", db, "--json").stdout)


def test_stale_follows_an_edit_through_two_runs(tmp_path, db):
    work = tmp_path / "w"
    work.mkdir()
    (work / "in.csv").write_text("b\na\n")
    pt("run", "--db", db, "--", "sh", "-c", "sort in.csv > mid.csv", cwd=work)
    pt("run", "--db", db, "--", "sh", "-c", "head -1 mid.csv > out.csv", cwd=work)
    runs = [r["id"] for r in json.loads(pt("runs", "--db", db, "--json").stdout)]

    shown = json.loads(pt("show", runs[0], "--db", db, "--json").stdout)
    (inp,) = [f for f in shown["files"] if f["path"] == str(work / "in.csv")]
    assert inp["size_bytes"] == 4 and len(inp["sha256"]) == 64 and inp["mtime"].endswith("Z")

    fresh = _units(db)
    assert fresh["stale"] == [] and {u["run"] for u in fresh["fresh"]} == set(runs)

    (work / "in.csv").write_text("c\nb\na\n")
    r = pt("stale", "--db", db)
    assert r.returncode == 0
    assert f"stale run {runs[0]}: {work / 'in.csv'}: content changed (sha256)" in r.stdout
    assert f"stale run {runs[1]}: {work / 'mid.csv'}: upstream stale (from run {runs[0]})" in r.stdout
    stale = _units(db)
    assert [u["run"] for u in stale["stale"]] == runs
    assert _units(db, "last")["stale"][0]["reasons"][0]["why"] == "upstream stale"

    os.unlink(work / "mid.csv")
    whys = {r_["why"] for r_ in _units(db, "last")["stale"][0]["reasons"]}
    assert whys == {"deleted", "upstream stale"}


def test_a_later_traced_run_is_named(tmp_path, db):
    (tmp_path / "cfg.txt").write_text("a\n")
    pt("run", "--db", db, "--", "sh", "-c", "cat cfg.txt > used.txt", cwd=tmp_path)
    pt("run", "--db", db, "--", "sh", "-c", "echo b > cfg.txt", cwd=tmp_path)
    first, second = [r["id"] for r in json.loads(pt("runs", "--db", db, "--json").stdout)]
    (unit,) = _units(db, first)["stale"]
    (reason,) = [r for r in unit["reasons"] if r["path"] == str(tmp_path / "cfg.txt")]
    assert reason["why"] == f"rewritten by run {second}" and reason["content"] == "changed"
    assert _units(db, second)["stale"] == []


def test_diff_names_a_changed_input(tmp_path, db):
    (tmp_path / "in.csv").write_text("1\n")
    pt("run", "--db", db, "--", "sh", "-c", "cat in.csv > copy.csv", cwd=tmp_path)
    (tmp_path / "in.csv").write_text("2\n")
    pt("run", "--db", db, "--", "sh", "-c", "cat in.csv > copy.csv", cwd=tmp_path)
    a, b = [r["id"] for r in json.loads(pt("runs", "--db", db, "--json").stdout)]
    d = json.loads(pt("diff", a, b, "--db", db, "--json").stdout)
    changed = {c["path"]: c for c in d["inputs"]["changed"]}
    inp = changed[str(tmp_path / "in.csv")]
    assert inp["basis"] == "sha256" and inp["a"]["sha256"] != inp["b"]["sha256"]
    assert str(tmp_path / "in.csv") in pt("diff", a, b, "--db", db).stdout


def test_stale_errors_are_one_line(tmp_path, db):
    pt("run", "--db", db, "--", "true")
    r = pt("stale", "nope", "--db", db, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr
    r = pt("stale", "--db", str(tmp_path / "absent.db"), check=False)
    assert r.returncode != 0 and "no store" in r.stderr and "Traceback" not in r.stderr
