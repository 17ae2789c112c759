"""The in-memory store: merging of cell reports from several sources, and the event hub."""

from __future__ import annotations

import datetime as dt

import pytest

from provtrace.tracer.serve.backend import NotFound
from provtrace.tracer.serve.events import EventHub
from provtrace.tracer.daemon.memory import InMemoryStore
from provtrace.tracer.serve.records import ApiEvent, CellEndReport, CellStartReport
from provtrace.tracer.errors import UsageError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _store():
    store = InMemoryStore(EventHub())
    k = store.register_kernel(pid=10, pid_start_ns=1, uid=1000, user="u", connection_file=None,
                              notebook_path="/n.ipynb", kernel_name="python3", language="python", session_id=None)
    return store, k.session_id


def test_report_and_iopub_merge_into_one_cell():
    store, sid = _store()
    # the provisioner knows cellId and msg_id; IOPub knows msg_id, count and times
    store.cell_start(CellStartReport(sid, "report", cell_id="lab-cell", msg_id="m1", started=T0))
    store.cell_start(CellStartReport(sid, "iopub", msg_id="m1", execution_count=4, code_sha256="h",
                                     started=T0 - dt.timedelta(milliseconds=1)))
    store.cell_end(CellEndReport(sid, "iopub", "error", msg_id="m1", ended=T0 + dt.timedelta(seconds=1),
                                 error_name="ValueError"))
    store.cell_end(CellEndReport(sid, "report", "ok", cell_id="lab-cell", msg_id="m1", ended=T0))
    [cell] = store.list_cells(sid)
    assert (cell.cell_id, cell.execution_count, cell.code_sha256, cell.status) == ("lab-cell", 4, "h", "error")
    assert cell.started == T0 - dt.timedelta(milliseconds=1) and cell.ended == T0 + dt.timedelta(seconds=1)
    assert cell.sources == frozenset({"report", "iopub"})


def test_runner_start_without_msg_id_merges_with_iopub_by_cell_id():
    store, sid = _store()
    store.cell_start(CellStartReport(sid, "runner", cell_id="c1", index=0, started=T0))
    store.cell_end(CellEndReport(sid, "runner", "ok", cell_id="c1", msg_id="m9", execution_count=1, ended=T0))
    store.cell_start(CellStartReport(sid, "runner", cell_id="c1", index=0, started=T0))  # re-run: new record
    cells = store.list_cells(sid)
    assert [(c.msg_id, c.status) for c in cells] == [("m9", "ok"), (None, "running")]


def test_same_cell_run_twice_gives_two_records():
    store, sid = _store()
    for m in ("m1", "m2"):
        store.cell_start(CellStartReport(sid, "report", cell_id="c", msg_id=m))
        store.cell_end(CellEndReport(sid, "report", "ok", cell_id="c", msg_id=m))
    assert [c.msg_id for c in store.list_cells(sid)] == ["m1", "m2"]


def test_visibility_and_last():
    store, sid = _store()
    assert store.get_run("last", 1000).id == sid
    with pytest.raises(NotFound):
        store.get_run(sid, 1001)
    with pytest.raises(NotFound):
        store.get_run("last", 1001)
    assert store.list_runs(1001) == [] and len(store.list_runs(None)) == 1


def test_lineage_from_cell_io():
    store, sid = _store()
    for m, reads, writes in (("m1", ["/raw.csv"], ["/clean.csv"]), ("m2", ["/clean.csv"], ["/model.pkl"])):
        store.cell_start(CellStartReport(sid, "iopub", msg_id=m))
        store.merger.add_io(sid, m, None, reads=reads, writes=writes)
    up = store.lineage("/model.pkl", "upstream", None, None)
    assert {n.label for n in up.nodes if n.kind == "file"} == {"/model.pkl", "/clean.csv", "/raw.csv"}
    one = store.lineage("/model.pkl", "upstream", 1, None)
    assert "/raw.csv" not in {n.label for n in one.nodes}
    down = store.lineage("/raw.csv", "downstream", None, None)
    assert "/model.pkl" in {n.label for n in down.nodes}
    assert store.lineage("/model.pkl", "upstream", None, 4242).edges == ()
    with pytest.raises(UsageError):
        store.lineage("/x", "sideways", None, None)


def test_bad_end_status_and_unknown_format():
    store, sid = _store()
    with pytest.raises(UsageError):
        store.cell_end(CellEndReport(sid, "report", "maybe", msg_id="m"))
    with pytest.raises(UsageError, match="SQLite"):
        list(store.export([sid], "prov-n"))


def test_hub_filters_by_uid_and_counts_drops():
    hub = EventHub(queue_size=2)
    mine, everything = hub.subscribe(uid=5), hub.subscribe(uid=None)
    for uid in (5, 6, 5, 5):
        hub.publish(ApiEvent(kind="file", uid=uid, time=T0))
    got = [mine.get(0) for _ in range(4)]
    assert [(e.kind, e.uid) for e in got[:3]] == [("file", 5), ("file", 5), ("gap", 5)]
    assert got[2].detail == {"dropped": 1} and got[3] is None
    assert everything.dropped == 2
    got = [everything.get(0) for _ in range(4)]
    assert [e.kind for e in got[:3]] == ["file", "file", "gap"] and got[3] is None
    mine.close()
    everything.close()
    assert hub.subscribers == 0
