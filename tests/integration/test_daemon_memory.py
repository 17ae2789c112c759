"""What a daemon keeps per run is dropped once the run is stored: nothing in its
memory grows with the commands it has finished (issue 15: flat RSS across
1,000 runs; bench/daemon_memory.py measures the RSS itself). Real probes, a
real SQLite store, a real traced process; the TracingStore the daemon serves.
"""

from __future__ import annotations

import subprocess

import pytest

from provtrace.tracer.daemon.sessions import TracingStore
from provtrace.tracer.store import sqlite as S

pytestmark = pytest.mark.privileged


def test_a_finished_command_leaves_nothing_in_memory(capture, tmp_path):
    store = S.Store(str(tmp_path / "d.db"))
    tracing = TracingStore(store, capture)
    tracing.start()
    try:
        finished = []
        for _ in range(3):
            proc = subprocess.Popen(["sleep", "0.1"])
            run = tracing.start_command(pid=proc.pid, uid=0, user="root", argv=["sleep", "0.1"], cwd="/",
                                        env={}, label=None)
            proc.wait()
            tracing.finish_command(run.id, 0, None)
            finished.append(run.id)
        merger = tracing.merger  # the live runs, their cells and root pids
        held = {r.id for r in merger.runs()} | set(merger.traced_pids().values())
        assert not set(finished) & held and all(merger.cells(r) is None for r in finished)
        assert tracing.live_runs() == []
        assert tracing.router.finisher.wait(None, 60)  # their fingerprints and ends follow the release
        assert tracing.router.finisher.pending() == []
        for run_id in finished:  # still answered, from the store
            got = tracing.get_run(run_id, None)
            assert got.exit_code == 0 and got.ended is not None
    finally:
        tracing.close()
        store.close()
