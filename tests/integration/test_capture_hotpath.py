"""The hot path on a real traced run: the churn workload's ring-buffer batches,
recorded once from the real probes, replayed through decode -> Tracker ->
RunWriter -> SQLite with the compiled decoder and with the Python one. Both
stores must hold the same records (bench/hotpath.py does the same replay to
measure it; nothing is timed here)."""

from __future__ import annotations

import json

import pytest

from bench.hotpath import capture_churn, replay
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.writer import bits_of

pytestmark = pytest.mark.privileged

FILES = 300


def _records(store: S.Store, rid: int) -> list[tuple]:
    """(kind, p1, p2, body) of the run, in chain order; the start record names
    its writer (pid, time), so it is left out."""
    return [(k, p1, p2, body) for _seq, _rid, k, p1, p2, body in store.records(rid) if k != S.RUN_START]


def test_compiled_and_python_decoders_store_the_same_records(capture, tmp_path):
    (tmp_path / "work").mkdir()
    doc = capture_churn(capture, tmp_path / "work", FILES)
    assert doc["lost"] == 0
    stored = {}
    for compiled in (True, False):
        store, rid = replay(doc, str(tmp_path / f"replay-{compiled}.db"), compiled=compiled)
        store.verify()
        stored[compiled] = _records(store, rid)
        store.close()
    assert stored[True] == stored[False]
    files = [r for r in stored[True] if r[0] == S.FILE and "/churn/t/d" in (r[1] or "")]
    assert len(files) == FILES
    # each churn file was created, written, read back and deleted by the one process
    want = bits_of({"create", "write", "read", "delete"})
    assert {json.loads(r[3])[1] for r in files} == {want}
