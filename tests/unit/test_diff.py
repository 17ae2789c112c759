"""diff_runs / render_diff on hand-written provtrace.run/1 documents."""

from __future__ import annotations

import copy
import json

import pytest

from provtrace.tracer.lineage.diff import diff_runs, render_diff


def run_doc(run_id: str) -> dict:
    return {
        "schema": "provtrace.run/1",
        "run": {"id": run_id, "kind": "command", "host": "ws1", "started": "2026-11-01T10:00:00.000000Z"},
        "files": [
            {"path": "/data/in.csv", "pid": 10, "access": ["read"], "kind": "data",
             "sha256": "aa" * 32, "size_bytes": 100},
            {"path": "/data/in.csv", "pid": 11, "access": ["read"], "kind": "data"},
            {"path": "/data/params.json", "pid": 10, "access": ["read"], "kind": "data",
             "size_bytes": 10, "mtime": "2026-10-01T00:00:00.000000Z"},
            {"path": "/data/notes.txt", "pid": 10, "access": ["read"], "kind": "data"},
            {"path": "/data/old_only.csv", "pid": 10, "access": ["read"], "kind": "data"},
            {"path": "/out/model.pkl", "pid": 10, "access": ["write", "create"], "kind": "data",
             "sha256": "cc" * 32},
            {"path": "/usr/lib/x86_64-linux-gnu/libc.so.6", "pid": 10, "access": ["map"],
             "kind": "library"},
        ],
        "context": {
            "host": "ws1", "kernel": "6.1.0-18-amd64", "arch": "x86_64",
            "os_release": {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
            "cpu": {"model": "AMD EPYC 7763", "count": 16}, "memory_bytes": 64 * 2**30,
            "interpreters": [{"name": "python", "implementation": "CPython", "version": "3.11.2",
                              "path": "/usr/bin/python3.11"}],
            "libraries": [
                {"path": "/usr/lib/x86_64-linux-gnu/libc.so.6", "soname": "libc.so.6",
                 "build_id": "93ac61ec5a8eb1396f9fbd350e3169a558528a40", "package": "libc6"},
                {"path": "/usr/lib/x86_64-linux-gnu/libssl.so.3", "soname": "libssl.so.3",
                 "build_id": "a9394c735d65e02b7182d2c0aec6cbd301217830", "package": "libssl3"},
                {"path": "/opt/x/libold.so", "soname": None, "build_id": "01", "package": None},
            ],
            "packages": [
                {"name": "numpy", "version": "1.26.4", "ecosystem": "pypi", "hash": None},
                {"name": "pandas", "version": "2.2.0", "ecosystem": "pypi", "hash": None},
                {"name": "libc6", "version": "2.36-9", "ecosystem": "deb", "hash": None},
            ],
            "gpus": [{"index": 0, "name": "NVIDIA A100", "uuid": "GPU-1",
                      "driver_version": "535.104.05", "cuda_version": "12.2",
                      "memory_total_bytes": 40 * 2**30}],
            "env": {},
        },
    }


@pytest.fixture
def pair() -> tuple[dict, dict]:
    a = run_doc("run-a")
    b = copy.deepcopy(a)
    b["run"]["id"] = "run-b"
    files = b["files"]
    files[0]["sha256"] = "bb" * 32                       # in.csv content changed
    files[2]["mtime"] = "2026-11-01T00:00:00.000000Z"    # params.json touched
    files[4]["path"] = "/data/new_only.csv"
    files[5]["sha256"] = "dd" * 32                       # model.pkl differs
    ctx = b["context"]
    ctx["kernel"] = "6.1.0-21-amd64"
    ctx["memory_bytes"] = 128 * 2**30
    ctx["interpreters"][0]["version"] = "3.11.9"
    ctx["libraries"][1]["build_id"] = "ffff" * 10
    ctx["libraries"] = ctx["libraries"][:2] + [
        {"path": "/opt/x/libnew.so.2", "soname": "libnew.so.2", "build_id": "02"}]
    ctx["packages"][0]["version"] = "2.0.0"
    ctx["packages"].append({"name": "scipy", "version": "1.13.0", "ecosystem": "pypi"})
    del ctx["packages"][1]
    ctx["gpus"][0]["driver_version"] = "550.54.15"
    return a, b


def test_inputs(pair) -> None:
    d = diff_runs(*pair)["inputs"]
    changed = {c["path"]: c for c in d["changed"]}
    assert set(changed) == {"/data/in.csv", "/data/params.json"}
    assert changed["/data/in.csv"]["basis"] == "sha256"
    assert changed["/data/params.json"]["basis"] == "size_bytes/mtime"
    assert d["only_a"] == ["/data/old_only.csv"] and d["only_b"] == ["/data/new_only.csv"]
    assert d["unknown"] == ["/data/notes.txt"]
    # libraries mapped are not inputs
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" not in json.dumps(d)


def test_outputs(pair) -> None:
    d = diff_runs(*pair)["outputs"]
    assert [c["path"] for c in d["changed"]] == ["/out/model.pkl"]


def test_libraries_packages_interpreters_gpu_host(pair) -> None:
    d = diff_runs(*pair)
    libs = d["libraries"]
    assert [c["key"] for c in libs["changed"]] == ["libssl.so.3"]
    assert [o["key"] for o in libs["only_a"]] == ["/opt/x/libold.so"]  # no soname: keyed by path
    assert [o["key"] for o in libs["only_b"]] == ["libnew.so.2"]
    pkgs = d["packages"]
    assert pkgs["changed"] == [{"key": "pypi:numpy", "a": "1.26.4", "b": "2.0.0"}]
    assert [o["key"] for o in pkgs["only_a"]] == ["pypi:pandas"]
    assert [o["key"] for o in pkgs["only_b"]] == ["pypi:scipy"]
    assert d["interpreters"]["changed"] == [
        {"key": "python", "a": "CPython 3.11.2", "b": "CPython 3.11.9"}]
    [gpu] = d["gpus"]["changed"]
    assert gpu["a"]["driver_version"] == "535.104.05" and gpu["b"]["driver_version"] == "550.54.15"
    host = {c["key"]: (c["a"], c["b"]) for c in d["host"]["changed"]}
    assert host == {"kernel": ("6.1.0-18-amd64", "6.1.0-21-amd64"),
                    "memory_bytes": (64 * 2**30, 128 * 2**30)}
    assert d["identical"] is False
    json.dumps(d)


def test_identical_runs() -> None:
    d = diff_runs(run_doc("x"), run_doc("y"))
    assert d["identical"] is True
    assert d["inputs"]["unchanged"] == 2
    assert "No differences among what could be compared." in render_diff(d)
    assert d["inputs"]["unknown"] == ["/data/notes.txt", "/data/old_only.csv"]


@pytest.mark.parametrize("a,b", [
    ({}, {}),
    ({"schema": "provtrace.run/1"}, {"files": None, "context": None}),
    ({"files": [{"path": "/x"}, "junk", {"access": ["read"]}]}, {"context": {"libraries": None}}),
    ({"context": {"cpu": "plain string cpu", "gpus": [{}], "packages": [{"version": "1"}]}},
     {"context": {"cpu": {"model": "m"}, "interpreters": [{"version": "1"}]}}),
])
def test_missing_keys_do_not_crash(a: dict, b: dict) -> None:
    d = diff_runs(a, b)
    assert isinstance(render_diff(d), str)
    json.dumps(d)


def test_render_side_by_side(pair) -> None:
    text = render_diff(diff_runs(*pair))
    lines = text.splitlines()
    assert lines[0] == "A: run-a" and lines[1] == "B: run-b"
    for title in ("Inputs", "Outputs", "Libraries (build-id)", "Packages", "Interpreters",
                  "GPUs", "Host"):
        assert title in lines
    numpy = next(line for line in lines if "pypi:numpy" in line)
    left, right = numpy.split(" | ")
    assert left.split()[-1] == "1.26.4" and right.strip() == "2.0.0"
    new_lib = next(line for line in lines if "libnew.so.2" in line)
    assert new_lib.split(" | ")[0].split()[-1] == "-"
    kernel = next(line for line in lines if line.strip().startswith("kernel"))
    assert "6.1.0-18-amd64" in kernel.split(" | ")[0] and "6.1.0-21-amd64" in kernel.split(" | ")[1]
    assert "/data/notes.txt" in text  # listed as not comparable
    # Each table has an "A | B" header; each row one separator, aligned with it.
    headers = [i for i, line in enumerate(lines) if line.split() == ["A", "|", "B"]]
    assert len(headers) == 7
    for i in headers:
        column = lines[i].index("|")
        for row in lines[i + 1:]:
            if not row.strip():
                break
            assert row.count(" | ") == 1 and row.index(" | ") + 1 == column, row
    gpu = next(line for line in lines if "GPU-1" in line)
    assert "driver_version=535.104.05" in gpu and "cuda_version" not in gpu  # only what changed


def test_many_uncomparable_files_are_summarised() -> None:
    a = {"files": [{"path": f"/d/{i}", "access": ["read"]} for i in range(25)]}
    text = render_diff(diff_runs(a, copy.deepcopy(a)))
    assert "not comparable" in text and ": 25" in text
    assert "/d/0" in text and "/d/17" in text and "... and 15 more" in text
    assert "No differences among what could be compared." in text


def test_nothing_to_compare_says_no_differences() -> None:
    assert render_diff(diff_runs({}, {})).endswith("No differences.\n")


def test_final_names_intermediates_env_argv_and_cells() -> None:
    """Issue 14: an atomic write is compared as its final name; what the run made
    and read back is no input; env, argv and per-cell code are sections."""
    def doc(run_id: str, sha: str, token: str, code: str) -> dict:
        return {
            "run": {"id": run_id, "argv": ["sh", "-c", f"make {run_id}"]},
            "files": [
                {"path": "/w/in", "access": ["read"], "kind": "data", "sha256": "11" * 32,
                 "first": "2026-01-01T00:00:01.000000Z"},
                {"path": "/w/o.tmp", "access": ["write", "create"], "kind": "temp",
                 "first": "2026-01-01T00:00:02.000000Z"},
                {"path": "/w/o.tmp", "access": ["read"], "kind": "temp", "first": "2026-01-01T00:00:03.000000Z"},
                {"path": "/w/mid", "access": ["write", "create"], "kind": "data", "sha256": "22" * 32,
                 "first": "2026-01-01T00:00:02.000000Z"},
                {"path": "/w/mid", "access": ["read"], "kind": "data", "first": "2026-01-01T00:00:03.000000Z"},
            ],
            "renames": [{"from": "/w/o.tmp", "to": "/w/o", "time": "2026-01-01T00:00:04.000000Z",
                         "sha256": sha}],
            "cells": [{"index": 1, "code_sha256": code}],
            "context": {"env": {"PARAM": run_id, "API_TOKEN": token}},
        }
    d = diff_runs(doc("a", "aa" * 32, "[REDACTED]", "c1"), doc("b", "bb" * 32, "[REDACTED]", "c2"))
    assert [c["path"] for c in d["outputs"]["changed"]] == ["/w/o"]
    assert "/w/o.tmp" not in json.dumps(d["outputs"]) and d["outputs"]["unknown"] == []
    assert set(json.dumps(d["inputs"]).split('"')) & {"/w/mid", "/w/o.tmp"} == set()
    assert [c["key"] for c in d["env"]["changed"]] == ["PARAM"]  # the redacted token is equal
    assert d["argv"]["changed"][0]["a"] == "sh -c make a"
    assert d["cells"]["changed"] == [{"key": "cell 1", "a": "c1", "b": "c2"}]
    text = render_diff(d)
    assert "Environment variables" in text and "Command line" in text and "Notebook cells" in text
