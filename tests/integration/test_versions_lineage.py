"""File versions on real traced runs (issue 14): `provtrace lineage` answers
about the bytes on disk now, `--all-versions` and `--at` about history.

Runs are traced in-process with the session's real probes (helpers.trace);
the questions go through the real CLI (helpers.pt) on the same SQLite store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time

import pytest

from .helpers import pt, trace

pytestmark = pytest.mark.privileged


def _db(work):
    return str(work.parent / "store.db")


def _sh(capture, work, script):
    code, doc = trace(capture, ["sh", "-c", script], cwd=work, db=_db(work))
    assert code == 0
    return doc["run"]["id"]


def _lineage(work, path, *opts):
    return json.loads(pt("lineage", str(work / path), "--db", _db(work), "--json", *opts, check=True).stdout)


def _files(result):
    return {n["path"] for n in result["nodes"] if n["kind"] == "file"}


def _runs(result):
    return {n["run"] for n in result["nodes"] if n["kind"] in ("process", "cell")}


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_rerun_through_a_temporary_name_is_the_current_version(capture, work):
    """The issue's first example: lineage of o names run 2 and its input b."""
    (work / "a").write_text("1\n")
    first = _sh(capture, work, "cat a > o.tmp && mv o.tmp o")
    (work / "b").write_text("2\n")
    second = _sh(capture, work, "cat b > o.tmp && mv o.tmp o")

    up = _lineage(work, "o")
    assert up["current"] == {"run": second, "cell": None, "pid": up["current"]["pid"], "sha256": _sha("2\n"),
                             "written": up["current"]["written"], "changed_outside_tracing": False}
    assert isinstance(up["current"]["pid"], int) and up["current"]["written"].endswith("Z")
    assert up["found"] and up["truncated"] is False
    assert str(work / "b") in _files(up) and str(work / "a") not in _files(up)
    assert _runs(up) == {second}
    assert any(e["rel"] == "renamed" and e["run"] == second for e in up["edges"])
    (root,) = [n for n in up["nodes"] if n.get("root")]
    assert root["path"] == str(work / "o") and root["id"] == f"file:{work / 'o'}@{root['version']}"

    history = _lineage(work, "o", "--all-versions")
    assert {str(work / "a"), str(work / "b")} <= _files(history) and _runs(history) == {first, second}
    assert len([n for n in history["nodes"] if n.get("root")]) == 2

    down = _lineage(work, "a", "--downstream")  # a's bytes went to o's first version only
    assert _runs(down) == {first}
    outs = [n for n in down["nodes"] if n["kind"] == "file" and n["path"] == str(work / "o")]
    assert [n["sha256"] for n in outs] == [_sha("1\n")]

    text = pt("lineage", str(work / "o"), "--db", _db(work), check=True).stdout
    assert f"[run {second} " in text and f"reads {work / 'b'}" in text and first not in text


def test_overwrite_in_place_names_only_the_last_writer(capture, work):
    (work / "a").write_text("from a\n")
    (work / "q").write_text("from q\n")
    _sh(capture, work, "cat a > p")
    second = _sh(capture, work, "cat q > p")
    up = _lineage(work, "p")
    assert up["current"]["run"] == second and up["current"]["sha256"] == _sha("from q\n")
    assert _files(up) == {str(work / "p"), str(work / "q")} and _runs(up) == {second}


def test_a_change_outside_tracing_is_a_version_of_its_own(capture, work):
    (work / "a").write_text("1\n")
    run = _sh(capture, work, "cat a > o")
    assert _lineage(work, "o")["current"]["run"] == run
    (work / "o").write_text("edited by hand\n")
    up = _lineage(work, "o")
    assert up["current"] == {"run": None, "cell": None, "pid": None, "sha256": _sha("edited by hand\n"),
                             "written": up["current"]["written"], "changed_outside_tracing": True}
    assert up["found"] and [n["kind"] for n in up["nodes"]] == ["file"]  # produced by no traced process
    assert str(work / "a") not in _files(up)
    text = pt("lineage", str(work / "o"), "--db", _db(work), check=True).stdout
    assert "changed outside tracing" in text

    # a later traced read sees that version; its output derives from no traced run
    reader = _sh(capture, work, "cat o > copy")
    up = _lineage(work, "copy")
    assert _runs(up) == {reader} and str(work / "a") not in _files(up)
    (o,) = [n for n in up["nodes"] if n.get("path") == str(work / "o")]
    assert o["changed_outside_tracing"] is True


def test_a_read_is_bound_to_the_version_current_then(capture, work):
    (work / "a").write_text("A\n")
    (work / "q").write_text("Q\n")
    first = _sh(capture, work, "cat a > p")
    time.sleep(0.05)
    between = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    reader = _sh(capture, work, "cat p > r")
    third = _sh(capture, work, "cat q > p")

    up = _lineage(work, "r")
    assert _runs(up) == {reader, first} and str(work / "a") in _files(up)
    assert str(work / "q") not in _files(up) and third not in _runs(up)
    assert _lineage(work, "p", "--at", between)["current"]["run"] == first
    assert _lineage(work, "p")["current"]["run"] == third
    down = _lineage(work, "q", "--downstream")
    assert _runs(down) == {third}  # r was made from the version before


def test_an_intermediate_deleted_inside_the_run(capture, work):
    (work / "a").write_text("x\n")
    run = _sh(capture, work, "cat a > t && cat t > o && rm t")
    up = _lineage(work, "o")
    assert {str(work / "t"), str(work / "a")} <= _files(up) and _runs(up) == {run}
    gone = _lineage(work, "t", "--downstream")
    assert gone["absent"] == "deleted or moved away by a traced run"
    assert gone["current"]["run"] is None and gone["current"]["changed_outside_tracing"] is False
    (root,) = [n for n in gone["nodes"] if n.get("root")]
    assert root["gone"] is True and str(work / "o") in _files(gone)


def test_depth_truncation_is_marked(capture, work):
    (work / "a").write_text("x\n")
    _sh(capture, work, "cat a > b")
    _sh(capture, work, "cat b > c")
    cut = _lineage(work, "c", "--depth", "1")
    assert cut["truncated"] is True
    assert [n for n in cut["nodes"] if n.get("truncated")]
    assert _lineage(work, "c")["truncated"] is False
    text = pt("lineage", str(work / "c"), "--db", _db(work), "--depth", "1", check=True).stdout
    assert "depth limit" in text


def test_bad_at_is_one_line(work):
    r = pt("lineage", str(work / "x"), "--db", _db(work), "--at", "yesterday")
    assert r.returncode == 2 and "ISO-8601" in r.stderr and "Traceback" not in r.stderr


def test_a_notebook_cell_that_overwrites_another_cells_output(capture, work):
    """Lineage goes through cells, not the kernel process; kernel state is a
    labelled edge to the next cell that --no-kernel-state cuts."""
    from .test_notebook_run import _need_kernel, _run, _write_notebook

    _need_kernel("python3")
    (work / "a.txt").write_text("A\n")
    (work / "b.txt").write_text("B\n")
    nb = work / "nb.ipynb"
    _write_notebook(nb, "python3", [
        "open('out.txt', 'w').write(open('a.txt').read())",
        "open('out.txt', 'w').write(open('b.txt').read())",
        "open('res.txt', 'w').write(open('out.txt').read())",
    ])
    code, _traced, doc = _run(capture, nb, _db(work))
    assert code == 0
    c1, c2, c3 = (c["id"] for c in doc["cells"])

    up = _lineage(work, "out.txt", "--no-kernel-state")
    assert up["current"]["run"] == doc["run"]["id"] and up["current"]["cell"] == c2
    assert up["current"]["sha256"] == _sha("B\n")
    assert _files(up) == {str(work / "out.txt"), str(work / "b.txt")}
    assert {n["cell"] for n in up["nodes"] if n["kind"] == "cell"} == {c2}
    assert not [n for n in up["nodes"] if n["kind"] == "process"]

    with_state = _lineage(work, "out.txt")
    assert {"rel": "kernel_state", "from": f"cell:{_rid(with_state)}:{c1}",
            "to": f"cell:{_rid(with_state)}:{c2}"} in with_state["edges"]
    assert str(work / "a.txt") in _files(with_state)  # through cell 1, labelled

    down = _lineage(work, "a.txt", "--downstream", "--no-kernel-state")
    assert {n["cell"] for n in down["nodes"] if n["kind"] == "cell"} == {c1}
    assert str(work / "res.txt") not in _files(down)  # made from cell 2's version, not cell 1's
    res = _lineage(work, "res.txt", "--no-kernel-state")
    assert {n["cell"] for n in res["nodes"] if n["kind"] == "cell"} == {c2, c3}


def _rid(result):
    """The store's run number in a cell node id (cell:RID:CELL)."""
    (cell,) = {n["id"].split(":")[1] for n in result["nodes"] if n["kind"] == "cell"}
    return cell


def _stale(work, *run):
    return json.loads(pt("stale", *run, "--db", _db(work), "--json", check=True).stdout)


def _group(result, run):
    for group in ("stale", "fresh"):
        for u in result[group]:
            if u["run"] == run and u["cell"] is None:
                return group, u
    raise AssertionError(f"no run {run} in {result}")


def test_stale_follows_another_runs_rename(capture, work):
    """cat a > b (run 1); mv b c (run 2); cat c > d (run 3): b moved by a traced
    run is not "output deleted"; when a changes, run 3 is stale through the rename."""
    (work / "a").write_text("1\n")
    one = _sh(capture, work, "cat a > b")
    two = _sh(capture, work, "mv b c")
    three = _sh(capture, work, "cat c > d")
    fresh = _stale(work)
    assert fresh["stale"] == [] and {u["run"] for u in fresh["fresh"]} >= {one, two, three}

    (work / "a").write_text("2\n")
    result = _stale(work)
    group, u1 = _group(result, one)
    assert group == "stale" and [(r["path"], r["why"]) for r in u1["reasons"]] == [(str(work / "a"), "content changed")]
    group, u3 = _group(result, three)
    assert group == "stale"
    (up,) = u3["reasons"]
    assert up["why"] == "upstream stale" and up["path"] == str(work / "c") and up["from"]["run"] == one
    assert _group(result, two)[0] == "fresh"  # a rename made nothing new
    text = pt("stale", "--db", _db(work), check=True).stdout
    assert "output deleted" not in text

    steps = json.loads(pt("stale", "--db", _db(work), "--plan", "--json", check=True).stdout)["plan"]
    assert [s["run"] for s in steps] == [one, three] and steps[0]["argv"] == ["sh", "-c", "cat a > b"]
    assert pt("stale", "--db", _db(work), "--plan", check=True).stdout.startswith(f"1. run {one} in {work}: ")
    assert pt("stale", "--db", _db(work), "--fail-if-stale").returncode == 3
    assert pt("stale", two, "--db", _db(work), "--fail-if-stale").returncode == 0


def test_staleness_travels_through_the_versions_consumed(capture, work):
    """One run makes two outputs from two inputs; only one input changes. A run
    that read the other output stays fresh."""
    (work / "x").write_text("x\n")
    (work / "y").write_text("y\n")
    both = _sh(capture, work, "cat x > ox; cat y > oy")
    from_x = _sh(capture, work, "cat ox > dx")
    from_y = _sh(capture, work, "cat oy > dy")
    (work / "x").write_text("changed\n")
    result = _stale(work)
    assert _group(result, both)[0] == "stale"
    assert _group(result, from_x)[0] == "stale"
    assert _group(result, from_y)[0] == "fresh"


def test_a_superseded_read_names_the_rewriting_run(capture, work):
    (work / "cfg").write_text("a\n")
    user = _sh(capture, work, "cat cfg > used")
    rewriter = _sh(capture, work, "echo b > cfg.tmp && mv cfg.tmp cfg")
    group, u = _group(_stale(work), user)
    assert group == "stale"
    (reason,) = u["reasons"]
    assert reason["why"] == f"rewritten by run {rewriter}" and reason["content"] == "changed"


def test_diff_of_two_atomic_write_runs(work):
    """cat a > o.tmp; mv o.tmp o, twice with other input and environment: the
    output is o (its content compared), o.tmp is no input, and the changed
    variable shows while a secret stays redacted."""
    db = _db(work)
    (work / "a").write_text("1\n")
    env = {**os.environ, "PARAM": "one", "API_TOKEN": "s3cret-one"}
    pt("run", "--db", db, "--", "sh", "-c", "cat a > o.tmp && cat o.tmp > /dev/null && mv o.tmp o",
       cwd=work, env=env, check=True)
    (work / "a").write_text("2\n")
    env = {**env, "PARAM": "two", "API_TOKEN": "s3cret-two"}
    pt("run", "--db", db, "--", "sh", "-c", "cat a > o.tmp && cat o.tmp > /dev/null && mv o.tmp o",
       cwd=work, env=env, check=True)
    first, second = [r["id"] for r in json.loads(pt("runs", "--db", db, "--json", check=True).stdout)]
    d = json.loads(pt("diff", first, second, "--db", db, "--json", check=True).stdout)
    outs = {c["path"]: c for c in d["outputs"]["changed"]}
    assert set(outs) == {str(work / "o")} and outs[str(work / "o")]["basis"] == "sha256"
    assert d["outputs"]["unknown"] == [] and str(work / "o.tmp") not in json.dumps(d["outputs"])
    assert str(work / "o.tmp") not in json.dumps(d["inputs"])
    assert [c["path"] for c in d["inputs"]["changed"]] == [str(work / "a")]
    env_changes = {c["key"]: c for c in d["env"]["changed"]}
    assert env_changes["PARAM"]["a"] == "one" and env_changes["PARAM"]["b"] == "two"
    text = pt("diff", first, second, "--db", db, check=True).stdout
    assert "Environment variables" in text and "PARAM" in text and "o.tmp" not in text
    assert "s3cret" not in text and "s3cret" not in json.dumps(d)


def test_lineage_formats(capture, work):
    import pydot

    (work / "a").write_text("1\n")
    _sh(capture, work, "cat a > o.tmp && mv o.tmp o")
    db, o = _db(work), str(work / "o")
    (graph,) = pydot.graph_from_dot_data(pt("lineage", o, "--db", db, "--format", "dot", check=True).stdout)
    names = {n.get_name().strip('"') for n in graph.get_nodes()}
    assert f"file:{work / 'a'}@1" in names and any(n.startswith(f"file:{o}@") for n in names)
    mermaid = pt("lineage", o, "--db", db, "--format", "mermaid", check=True).stdout
    assert mermaid.startswith("flowchart TB") and "-->|renamed|" in mermaid
    out = work.parent / "lineage.json"
    pt("lineage", o, "--db", db, "--format", "json", "-o", str(out), check=True)
    assert json.loads(out.read_text()) == _lineage(work, "o")
    r = pt("lineage", o, "--db", db, "--json", "--format", "dot")
    assert r.returncode == 2 and "not both" in r.stderr


def test_the_daemon_answers_versions_as_the_store_does(daemon):
    """--all-versions, --at and the current version through the Lineage RPC give
    what the same verbs give on the daemon's store file."""
    work = tempfile.mkdtemp(prefix="provtrace-versions-", dir="/tmp")
    sock, db = ("--socket", daemon["socket"]), ("--db", daemon["db"])
    try:
        with open(f"{work}/a", "w") as f:
            f.write("1\n")
        pt("run", *sock, "--", "sh", "-c", "cat a > o.tmp && mv o.tmp o", cwd=work, check=True)
        # the run's fingerprints are written after it returns (store/finisher.py); a query
        # through the daemon waits for them. Without it the next run may replace o before
        # it is hashed, and that version is then (rightly) left without a hash.
        pt("runs", *sock, "--json", check=True)
        between = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        with open(f"{work}/b", "w") as f:
            f.write("2\n")
        pt("run", *sock, "--", "sh", "-c", "cat b > o.tmp && mv o.tmp o", cwd=work, check=True)
        for opts in ((), ("--all-versions",), ("--at", between), ("--downstream",)):
            target = f"{work}/a" if "--downstream" in opts else f"{work}/o"
            got = json.loads(pt("lineage", target, *sock, "--json", *opts, check=True).stdout)
            assert got == json.loads(pt("lineage", target, *db, "--json", *opts, check=True).stdout), opts
        now = json.loads(pt("lineage", f"{work}/o", *sock, "--json", check=True).stdout)
        assert now["current"]["sha256"] == _sha("2\n") and f"{work}/b" in _files(now)
        at = json.loads(pt("lineage", f"{work}/o", *sock, "--json", "--at", between, check=True).stdout)
        assert at["current"]["sha256"] == _sha("1\n") and f"{work}/a" in _files(at)
    finally:
        shutil.rmtree(work, ignore_errors=True)
