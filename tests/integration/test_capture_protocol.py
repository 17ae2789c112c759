"""The Capture contract (tracer/capture/base.py), on both real backends.

Both the loaded probes and the ptrace tracer thread satisfy the Protocol and
feed the same pipeline (tracer/pipeline/) the same way: spawn behind the
fork gate, poll batches, decode, route by tag, reap, finish, complete.
"""

from __future__ import annotations

import os

import pytest

from provtrace.tracer.capture.base import Capture, open_capture
from provtrace.tracer.capture.ptrace import PtraceCapture
from provtrace.tracer.clock import Clock
from provtrace.tracer.errors import CaptureUnavailable
from provtrace.tracer.pipeline.pipeline import Pipeline
from provtrace.tracer.pipeline.run import Run, header
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S

pytestmark = pytest.mark.privileged


@pytest.fixture(params=["ebpf", "ptrace"])
def backend(request, capture):
    return capture if request.param == "ebpf" else PtraceCapture()


def test_both_backends_satisfy_the_protocol(backend):
    assert isinstance(backend, Capture)
    assert backend.name in ("ebpf", "ptrace")
    assert set(backend.lost()) >= {"ringbuf", "agg_map"}, "the probes' loss reasons, on both"


def test_one_pipeline_runs_a_command_on_either_backend(backend, tmp_path):
    """spawn -> step until reaped -> finish -> complete: the run's write is recorded,
    its events routed by the run's tag, nothing unrouted from our own command."""
    store = S.Store(str(tmp_path / "s.db"))
    try:
        hdr = header("protocol-" + backend.name, "command", backend.name, label=None, argv=["sh"],
                     cwd=str(tmp_path), user="root", uid=0, started_us=Clock.now_mono_ns() // 1000)
        run = Run.open(store, backend, hdr, clock=Clock())
        pipeline = Pipeline(backend, store)
        pipeline.add(run)
        argv = ["sh", "-c", "echo x > out.txt; exit 3"]

        def started(pid: int) -> None:
            run.tracker.add_root(pid, Clock.now_mono_ns(), argv, str(tmp_path), 0, tag=run.tag)

        pid = backend.spawn("/bin/sh", argv, dict(os.environ), str(tmp_path), run.tag, started)
        while (done := backend.reap(pid)) is None:
            pipeline.step(50)
        pipeline.drain()
        pipeline.finish(run)
        status, failed = done
        assert failed == b"" and os.waitstatus_to_exitcode(status) == 3
        run.complete(store, {"exit_code": 3, "gaps": {}})
        store.flush()
        doc = Q.load_run(store, run.rid)
    finally:
        store.close()
    assert doc["run"]["exit_code"] == 3
    written = [f for f in doc["files"] if f["path"] == str(tmp_path / "out.txt")]
    assert written and "write" in written[0]["access"], doc["files"]


def test_an_exec_failure_is_reported_by_reap(backend, tmp_path):
    pid = backend.spawn(str(tmp_path / "missing"), ["missing"], {}, str(tmp_path), 7)
    while (done := backend.reap(pid)) is None:
        backend.poll(50)
    for _ in backend.drain_batches():
        pass
    status, failed = done
    assert int(failed) == 2 and os.waitstatus_to_exitcode(status) == 127  # ENOENT


def test_the_factory_picks_as_backend_says():
    cap, gaps = open_capture("ptrace", root=True)
    assert isinstance(cap, PtraceCapture) and gaps == []
    cap, gaps = open_capture("auto", root=False)
    assert isinstance(cap, PtraceCapture) and gaps == []
    with pytest.raises(CaptureUnavailable, match="needs root"):
        open_capture("ebpf", root=False)
    with pytest.raises(CaptureUnavailable, match="unknown backend"):
        open_capture("dtrace", root=True)
