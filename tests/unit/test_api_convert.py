"""Records survive dataclass -> protobuf -> dataclass unchanged."""

from __future__ import annotations

import datetime as dt

from provtrace.tracer.serve import convert
from provtrace.tracer.serve.records import (
    ApiEvent, CellRecord, KernelRecord, LineageEdge, LineageGraph, LineageNode, RunRecord,
)

T0 = dt.datetime(2026, 11, 21, 14, 0, 0, 123456, tzinfo=dt.timezone.utc)
KERNEL = KernelRecord(session_id="s1", pid=42, pid_start_ns=99, uid=1000, connection_file="/r/k.json",
                      notebook_path="/n/a.ipynb", kernel_name="ir", language="R", started=T0)


def test_kernel_round_trip():
    assert convert.kernel_from_pb(convert.kernel_to_pb(KERNEL)) == KERNEL
    dead = KernelRecord(session_id="s", pid=1, pid_start_ns=0, uid=0, ended=T0, alive=False)
    assert convert.kernel_from_pb(convert.kernel_to_pb(dead)) == dead


def test_cell_round_trip_keeps_unknowns_unknown():
    full = CellRecord(session_id="s1", cell_id="c", msg_id="m", index=0, execution_count=3,
                      code_sha256="ab" * 32, started=T0, ended=T0 + dt.timedelta(seconds=1),
                      status="error", end_reason="died", error_name="KeyboardInterrupt",
                      reads=("/a",), writes=("/b",), processes=(7, 8),
                      sources=frozenset({"iopub", "runner"}), subshell_id="sub")
    assert convert.cell_from_pb(convert.cell_to_pb(full)) == full
    bare = CellRecord(session_id="s1")
    assert convert.cell_from_pb(convert.cell_to_pb(bare)) == bare


def test_run_round_trip_exit_code_zero_is_not_unknown():
    run = RunRecord(id="r", kind="command", uid=5, user="u", label="l", backend="ebpf",
                    started=T0, ended=T0, exit_code=0)
    assert convert.run_from_pb(convert.run_to_pb(run)) == run
    session = RunRecord(id="s1", kind="session", uid=1000, kernel=KERNEL)
    assert convert.run_from_pb(convert.run_to_pb(session)) == session


def test_lineage_and_event_round_trip():
    g = LineageGraph((LineageNode("file:/a", "file", "/a"), LineageNode("cell:x", "cell", "x", "s1")),
                     (LineageEdge("cell:x", "file:/a", "wrote"),))
    assert convert.lineage_from_pb(convert.lineage_to_pb(g)) == g
    ev = ApiEvent(kind="file", uid=3, time=T0, seq=9, session_id="s1", pid=12, cell_id="c",
                  detail={"path": "/a", "bytes": 10.0})
    assert convert.event_from_pb(convert.event_to_pb(ev)) == ev


def test_unknown_enum_values_are_none():
    assert convert.enum_name(convert.CELL_STATUS, 0) is None
    assert convert.enum_name(convert.CELL_STATUS, 999) is None
