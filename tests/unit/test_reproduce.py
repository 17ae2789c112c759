"""reproduce's two pure halves: planning a re-run from a stored document
(tracer/rerun.py) and judging a re-run against its original
(tracer/lineage/reproduce.py), on hand-made provtrace.run/1 documents."""

from __future__ import annotations

import pytest

from provtrace.tracer.errors import RunNotFound, UsageError
from provtrace.tracer.lineage.reproduce import compare, render
from provtrace.tracer.rerun import plan, restore_env

SHA = {"in1": "a" * 64, "in2": "b" * 64, "out1": "c" * 64, "out2": "d" * 64}


def _doc(tmp_path, *, inp="in1", out="out1", packages=(("pypi", "numpy", "2.0"),), exit_code=0,
         env=None, kind="command", uid=1000, cells=None, files=None):
    w = str(tmp_path)
    return {
        "run": {"id": "R", "kind": kind, "argv": ["sh", "-c", "x"], "cwd": w, "uid": uid, "user": "ann",
                "exit_code": exit_code, "started": "t", "ended": "t", "lost_events": 0, "complete": True},
        "files": files if files is not None else [
            {"path": f"{w}/in.csv", "access": ["read"], "kind": "data", "sha256": SHA[inp], "cell": None},
            {"path": f"{w}/out.csv", "access": ["write", "create"], "kind": "data", "sha256": SHA[out],
             "cell": None}],
        "renames": [], "cells": cells or [],
        "context": {"packages": [{"ecosystem": e, "name": n, "version": v} for e, n, v in packages],
                    "libraries": [], "env": env if env is not None else {"PATH": "/usr/bin"}},
    }


def test_same_content_is_reproduced(tmp_path):
    result = compare(_doc(tmp_path), _doc(tmp_path))
    assert result["reproduced"] is True and result["differences"] == []
    assert result["compared"] == {"inputs": 1, "outputs": 1, "packages": 1, "libraries": 0}
    assert "REPRODUCED" in render(result)


def test_an_output_that_differs_alone_is_nondeterministic(tmp_path):
    result = compare(_doc(tmp_path), _doc(tmp_path, out="out2"))
    (d,) = result["differences"]
    assert (d["what"], d["change"], d["cause"], d["because"]) == ("output", "content", "nondeterministic", [])


def test_a_changed_input_explains_the_output(tmp_path):
    result = compare(_doc(tmp_path), _doc(tmp_path, inp="in2", out="out2", exit_code=1))
    by_what = {d["what"]: d for d in result["differences"]}
    assert by_what["input"]["cause"] == "input_changed"
    assert by_what["output"]["cause"] == "input_changed"
    assert by_what["output"]["because"] == [f"input {tmp_path}/in.csv"]
    assert by_what["exit_code"]["cause"] == "input_changed" and by_what["exit_code"]["rerun"] == 1


def test_an_input_outranks_a_package_and_both_are_listed(tmp_path):
    result = compare(_doc(tmp_path), _doc(tmp_path, inp="in2", out="out2", packages=(("pypi", "numpy", "2.1"),)))
    pkg = next(d for d in result["differences"] if d["what"] == "package")
    assert (pkg["key"], pkg["original"], pkg["rerun"], pkg["cause"]) == ("pypi:numpy", "2.0", "2.1",
                                                                         "package_changed")
    out = next(d for d in result["differences"] if d["what"] == "output")
    assert out["cause"] == "input_changed"


def test_a_package_used_by_one_run_only_follows_from_a_version_change(tmp_path):
    new = _doc(tmp_path, out="out2", packages=(("pypi", "numpy", "2.1"), ("deb", "libbz2-1.0", "1.0")))
    result = compare(_doc(tmp_path), new)
    added = next(d for d in result["differences"] if d["key"] == "deb:libbz2-1.0")
    assert added["change"] == "added" and added["cause"] == "package_changed"
    assert added["because"] == ["package pypi:numpy"]


def test_a_new_input_nothing_explains_is_itself_the_change(tmp_path):
    new = _doc(tmp_path, out="out2")
    new["files"].append({"path": f"{tmp_path}/new.csv", "access": ["read"], "kind": "data",
                         "sha256": SHA["in2"], "cell": None})
    by_key = {d["key"]: d for d in compare(_doc(tmp_path), new)["differences"]}
    assert by_key[f"{tmp_path}/new.csv"]["change"] == "added"
    assert by_key[f"{tmp_path}/new.csv"]["cause"] == "input_changed"
    assert by_key[f"{tmp_path}/out.csv"]["cause"] == "input_changed"


@pytest.mark.parametrize("glob", ["out.csv", "*.csv", "*/out.csv", "{w}/out.*"])
def test_tolerate_matches_absolute_and_folder_relative_paths(tmp_path, glob):
    glob = glob.format(w=tmp_path)
    result = compare(_doc(tmp_path), _doc(tmp_path, out="out2"), tolerate=[glob])
    assert result["reproduced"] is True
    assert result["tolerated"] == [{"path": f"{tmp_path}/out.csv", "cell": None, "glob": glob}]


def test_tolerate_never_hides_an_input(tmp_path):
    result = compare(_doc(tmp_path), _doc(tmp_path, inp="in2"), tolerate=["*"])
    assert [d["what"] for d in result["differences"]] == ["input"]


def test_an_unrestored_secret_is_only_a_possible_cause(tmp_path):
    old = _doc(tmp_path, env={"PATH": "/usr/bin", "API_TOKEN": "<redacted>"})
    result = compare(old, _doc(tmp_path, out="out2"))
    (d,) = result["differences"]
    assert d["cause"] == "nondeterministic"
    assert d["possible"] == ["environment variable API_TOKEN (not restored)"]
    assert compare(old, _doc(tmp_path))["reproduced"] is True  # a difference only if something differs


def test_an_environment_value_that_differs_is_a_cause(tmp_path):
    result = compare(_doc(tmp_path, env={"LANG": "C"}), _doc(tmp_path, out="out2", env={"LANG": "de_DE"}))
    (d,) = result["differences"]
    assert d["cause"] == "environment_changed" and d["because"] == ["environment variable LANG"]


def test_large_files_compare_by_size_only(tmp_path):
    a, b = _doc(tmp_path), _doc(tmp_path)
    for doc, size in ((a, 10), (b, 10)):
        doc["files"][1].update(sha256=None, size_bytes=size, mtime="m1" if doc is a else "m2")
    same = compare(a, b)
    assert same["reproduced"] is True and any("content not compared" in n for n in same["notes"])
    b["files"][1]["size_bytes"] = 11
    (d,) = compare(a, b)["differences"]
    assert d["change"] == "size"


def _cells(tmp_path, stamp: str, inp: str, code: str = "c1"):
    w = str(tmp_path)
    files = [
        {"path": f"{w}/in.csv", "access": ["read"], "kind": "data", "sha256": SHA[inp], "cell": "c1"},
        {"path": f"{w}/a.csv", "access": ["write", "create"], "kind": "data", "sha256": SHA[inp], "cell": "c1"},
        {"path": f"{w}/stamp", "access": ["write", "create"], "kind": "data", "sha256": SHA[stamp], "cell": "c2"},
        {"path": f"{w}/a.csv", "access": ["read"], "kind": "data", "sha256": SHA[inp], "cell": "c3"},
    ]
    cells = [{"id": cid, "index": i, "status": "ok", "code_sha256": code if cid == "c1" else cid, "context": {}}
             for i, cid in enumerate(("c1", "c2", "c3"))]
    return _doc(tmp_path, kind="notebook", files=files, cells=cells)


def test_a_notebook_is_compared_cell_by_cell(tmp_path):
    result = compare(_cells(tmp_path, "out1", "in1"), _cells(tmp_path, "out2", "in1"))
    assert [c["status"] for c in result["cells"]] == ["reproduced", "differs", "reproduced"]
    (d,) = result["differences"]
    assert (d["cell"], d["cause"]) == ("c2", "nondeterministic") and d["message"].startswith("cell #1 c2:")


def test_a_notebook_cell_s_own_input_comes_before_earlier_cells(tmp_path):
    result = compare(_cells(tmp_path, "out1", "in1"), _cells(tmp_path, "out2", "in2", code="edited"))
    by = {(d["cell"], d["what"], d["change"]): d for d in result["differences"]}
    assert by[("c1", "cell", "code")]["cause"] == "code_changed"
    # c2 has no change of its own: an earlier cell's (kernel state) is the likely cause
    assert by[("c2", "output", "content")]["cause"] == "input_changed"
    assert by[("c2", "output", "content")]["because"][0].startswith("cell #0 c1: input ")
    assert by[("c3", "input", "content")]["cause"] == "input_changed"


def test_a_cell_that_did_not_run_again_is_a_difference(tmp_path):
    old = _cells(tmp_path, "out1", "in1")
    new = _cells(tmp_path, "out1", "in1")
    new["cells"] = new["cells"][:2]
    new["cells"][1]["status"] = "error"
    result = compare(old, new)
    assert [c["status"] for c in result["cells"]] == ["reproduced", "differs", "missing"]
    changes = {(d["cell"], d["change"]): d["cause"] for d in result["differences"]}
    assert changes == {("c2", "status"): "nondeterministic", ("c3", "missing"): "nondeterministic"}


# ---- plan ---------------------------------------------------------------------

def test_restore_env_names_secrets_and_takes_them_only_when_asked():
    stored = {"PATH": "/bin", "API_TOKEN": "<redacted>", "URL": "https://u:<redacted>@h", "AWS_X": "<redacted>"}
    env, missing, taken = restore_env(stored, {"API_TOKEN": "t", "URL": "https://u:p@h"}, ["API_*", "URL"])
    assert env == {"PATH": "/bin", "API_TOKEN": "t", "URL": "https://u:p@h"}
    assert missing == ["AWS_X"] and taken == ["API_TOKEN", "URL"]


def test_plan_re_runs_a_command_in_its_folder(tmp_path):
    p = plan(_doc(tmp_path), caller_uid=1000, caller_env={})
    assert (p.kind, p.argv, p.cwd, p.env) == ("command", ["sh", "-c", "x"], str(tmp_path), {"PATH": "/usr/bin"})


def test_plan_refuses_what_cannot_be_re_run(tmp_path):
    with pytest.raises(UsageError, match="kernel session"):
        plan(_doc(tmp_path, kind="session"), caller_uid=1000, caller_env={})
    with pytest.raises(RunNotFound):
        plan(_doc(tmp_path, uid=1001), caller_uid=1000, caller_env={})
    with pytest.raises(UsageError, match="made by user ann"):
        plan(_doc(tmp_path, uid=1001), caller_uid=0, caller_env={})
    gone = _doc(tmp_path)
    gone["run"]["cwd"] = str(tmp_path / "gone")
    with pytest.raises(UsageError, match="no longer exists"):
        plan(gone, caller_uid=1000, caller_env={})
    secret = _doc(tmp_path)
    secret["run"]["argv"] = ["mysql", "-p<redacted>"]
    with pytest.raises(UsageError, match="redacted"):
        plan(secret, caller_uid=1000, caller_env={})


def test_a_cell_s_own_change_outranks_an_earlier_cell_s(tmp_path):
    """c2's package changed and c1's input did: c2's output is put down to its own package."""
    old, new = _cells(tmp_path, "out1", "in1"), _cells(tmp_path, "out2", "in2")
    old["cells"][1]["context"] = {"packages": [{"ecosystem": "pypi", "name": "numpy", "version": "2.0"}]}
    new["cells"][1]["context"] = {"packages": [{"ecosystem": "pypi", "name": "numpy", "version": "2.1"}]}
    out = next(d for d in compare(old, new)["differences"] if d["cell"] == "c2" and d["what"] == "output")
    assert out["cause"] == "package_changed" and out["because"] == ["package pypi:numpy"]
