"""The headless data layer: no textual, safe text, process trees, lineage trees, sources."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from provtrace.tracer.errors import RunNotFound, StoreError, UsageError
from provtrace.tui import model as M
from provtrace.tui import rows as R
from provtrace.tui.source import StoreSource, open_source

from .stores import CAFE, RUN_A, RUN_B, RUN_NB, build_store, empty_store


def test_data_layer_never_imports_textual():
    code = ("import sys\n"
            "import provtrace.tui, provtrace.tui.model, provtrace.tui.rows, provtrace.tui.source\n"
            "assert 'textual' not in sys.modules, sorted(m for m in sys.modules if 'textual' in m)\n"
            "import provtrace.tui.app\n"
            "assert 'textual' in sys.modules  # the check above can fail\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_printable_escapes_bytes_and_controls():
    assert R.printable(CAFE) == "/data/caf\\xe9.csv"
    assert R.printable("a\nb\tc\x1b[31m\x7f") == "a\\nb\\tc\\x1b[31m\\x7f"
    assert R.printable("[bold]ok ünï") == "[bold]ok ünï"  # markup stays text; UTF-8 stays as is
    assert R.printable(None) == ""


def test_process_tree_follows_pid_reuse_and_survives_deep_chains():
    procs = [
        {"pid": 10, "ppid": 1, "argv": ["sh"], "started": "2024-01-01T00:00:01.000000Z", "exit_code": 0},
        {"pid": 11, "ppid": 10, "argv": ["first"], "started": "2024-01-01T00:00:02.000000Z", "exit_code": 0},
        # pid 11 reused: this one is a child of the second process called 11 only
        {"pid": 11, "ppid": 10, "argv": ["second"], "started": "2024-01-01T00:00:03.000000Z", "exit_code": 0},
        {"pid": 12, "ppid": 11, "argv": ["grandchild"], "started": "2024-01-01T00:00:04.000000Z",
         "exit_code": None, "signal": 9},
    ]
    (root,) = R.process_tree({"processes": procs})
    assert root.label == "10  sh  (exit 0)"
    first, second = root.children
    assert (first.label, first.children) == ("11  first  (exit 0)", ())
    assert [c.label for c in second.children] == ["12  grandchild  (signal 9)"]

    chain = [{"pid": 100 + i, "ppid": 99 + i, "argv": [f"p{i}"], "started": f"2024-01-01T00:{i // 60:02d}:"
              f"{i % 60:02d}.000000Z", "exit_code": 0} for i in range(3000)]
    (top,) = R.process_tree({"processes": chain})
    depth, node = 1, top
    while node.children:
        (node,) = node.children
        depth += 1
    assert depth == 3000  # no RecursionError, nothing lost

    # equal start times cannot make a cycle that hides both processes
    tied = [{"pid": 1, "ppid": 2, "started": "t"}, {"pid": 2, "ppid": 1, "started": "t"}]
    assert len(R.process_tree({"processes": tied})) == 1


def test_gpu_lines_say_plainly_when_there_is_none():
    assert R.gpu_lines([]) == ["  no NVIDIA GPU/driver"]
    assert R.gpu_lines(None) == ["  no GPU state recorded"]
    line, = R.gpu_lines([{"index": 0, "name": "NVIDIA H100", "driver_version": "550.54", "cuda_version": "12.4",
                          "memory_used_bytes": 1024**3, "memory_total_bytes": 80 * 1024**3,
                          "utilization_gpu_percent": 7, "processes": [{"pid": 5}]}])
    assert "NVIDIA H100" in line and "1.0 GiB / 80.0 GiB" in line and "1 traced processes" in line
    assert R.host_lines({"context": {}}) == ["no execution context recorded for this run"]


@pytest.fixture
def src(tmp_path):
    s = StoreSource(build_store(str(tmp_path / "prov.db")))
    yield s
    s.close()


def test_store_source_answers(src):
    assert [r.id for r in src.list_runs()] == [RUN_A, RUN_B, RUN_NB]
    assert src.load_run("last")["run"]["id"] == RUN_NB
    assert src.load_run(RUN_A[:18])["run"]["id"] == RUN_A  # a unique prefix
    with pytest.raises(RunNotFound):
        src.load_run("nope")
    with pytest.raises(UsageError):
        src.lineage("/data/out.csv", "sideways", 3)
    doc = src.load_run(RUN_A)
    key = next(k for k, row in R.file_rows(doc) if row[0] == "/data/caf\\xe9.csv")
    assert R.file_path(doc, key) == CAFE  # the raw name, for lineage
    lin = src.lineage(CAFE, M.DOWNSTREAM, 10)
    assert lin.found and M.path_of(lin.root) == CAFE  # a version of it (file:PATH@N)


def test_store_source_applies_classify_rules(tmp_path):
    """The TUI shows kinds as the config file's rules give them (issue 14)."""
    from provtrace.tracer.config import Config, Rule, glob_regex

    db = build_store(str(tmp_path / "prov.db"))
    rules = Config([Rule("**/report.txt", "system", glob_regex("**/report.txt"), "t.toml")])
    plain, ruled = StoreSource(db), StoreSource(db, rules)
    try:
        kinds = [{f["path"]: f["kind"] for f in s.load_run(RUN_B)["files"]} for s in (plain, ruled)]
        assert kinds[0]["/data/report.txt"] == "data" and kinds[1]["/data/report.txt"] == "system"
        shown = {row[0] for _k, row in R.file_rows(ruled.load_run(RUN_B))}
        assert "/data/report.txt" not in shown and "/data/out.csv" in shown
        below = [str(s.lineage("/data/out.csv", M.DOWNSTREAM, 10)) for s in (plain, ruled)]
        assert "report.txt" in below[0] and "report.txt" not in below[1]
    finally:
        plain.close()
        ruled.close()


def test_store_source_is_read_only(tmp_path):
    db = empty_store(str(tmp_path / "e.db"))
    src = StoreSource(db)
    try:
        assert src.list_runs() == []
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            src.store.db.execute("INSERT INTO meta VALUES('x', 'y')")
    finally:
        src.close()


def test_open_source_errors(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        open_source(db=str(tmp_path / "none.db"))
    with pytest.raises(UsageError, match="not both"):
        open_source(db="a", socket_path="b")


def test_document_from_export_shapes():
    doc = {"schema": "provtrace.run/1", "run": {"id": "r"}}
    assert M.document_from_export(doc) is doc
    with pytest.raises(ValueError):
        M.document_from_export({"something": "else"})


def test_lineage_tree_marks_repeats_and_names_unknown_relations():
    lin = M.Lineage("file:/o", M.UPSTREAM, {
        "file:/o": M.LineageNode("file:/o", "file", "/o"),
        "proc:1": M.LineageNode("proc:1", "process", "[run r pid 1] cp a o"),
        "file:/a": M.LineageNode("file:/a", "file", "/a"),
    }, (M.LineageEdge("proc:1", "file:/o", "wrote"), M.LineageEdge("file:/a", "proc:1", "read"),
        M.LineageEdge("file:/o", "proc:1", ""), M.LineageEdge("file:/a", "file:/o", "")))
    tree = R.lineage_tree(lin)
    assert tree.label == "upstream lineage of /o"
    proc, via_unknown = tree.children
    assert proc.label == "written by [run r pid 1] cp a o"
    assert [c.label for c in proc.children] == ["reads /a", "linked to /o (see above)"]
    assert via_unknown.label == "linked to /a (see above)"


def _res(cpu_user, rss):
    return {"wall_s": 1.0, "cpu_user_s": cpu_user, "cpu_system_s": 0.0 if cpu_user is not None else None,
            "peak_rss_bytes": rss, "read_bytes": 10, "written_bytes": 20}


def test_resource_bars_scale_to_the_largest_and_escape_names():
    doc = {"run": {"resources": {**_res(3.0, 300 << 20), "processes_measured": 2, "processes": 3,
                                 "gpu": []}},
           "cells": [{"index": 0, "id": "a\x1b[31m", "resources": _res(2.0, 100 << 20)},
                     {"index": 1, "id": "b", "resources": _res(1.0, 200 << 20)},
                     {"index": 2, "id": "c", "resources": None}]}
    head = R.resource_lines(doc)
    assert "peak RSS 300.0 MiB" in head[0] and "2 of 3 processes" in head[1] and R.NO_GPU in head[2]
    bars = R.resource_bars(doc)
    assert bars[0] == "per cell"
    a, b, c = bars[2:]
    assert "\x1b" not in a and "\\x1b" in a
    assert a.count("█") == R.BAR_CELLS + R.BAR_CELLS // 2  # most CPU, half the peak
    assert b.count("█") == R.BAR_CELLS // 2 + R.BAR_CELLS
    assert "·" * R.BAR_CELLS in c and "-" in c  # not measured: no bar, no number


def test_resource_bars_of_a_command_list_processes_by_cpu():
    doc = {"run": {"resources": {}}, "cells": [],
           "processes": [{"pid": 1, "exe": "/bin/sh", "resources": _res(0.1, 1 << 20)},
                         {"pid": 2, "exe": "/usr/bin/python3", "resources": _res(2.0, 1 << 20)}]}
    bars = R.resource_bars(doc)
    assert bars[0].startswith("per process") and bars[2].startswith("2 python3") and bars[3].startswith("1 sh")


def test_history_series_and_captions():
    history = [{"resources": _res(1.0, 1 << 20)}, {"resources": {}}, {"resources": _res(3.0, 2 << 20)}]
    series = R.history_series(history)
    assert series["cpu"] == [1.0, 0.0, 3.0] and series["peak_rss_bytes"][-1] == 2 << 20
    cap = R.history_caption(history, "cpu", "CPU time")
    assert "3 runs" in cap and "min 1.00 s" in cap and "max 3.00 s" in cap and "latest 3.00 s" in cap
