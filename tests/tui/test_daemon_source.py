"""The daemon source against a real ApiServer on a real Unix socket (in-memory session store).

The store behind the server is the API's InMemoryStore, as in
tests/unit/test_api_server.py: it knows sessions and cells, not processes or
files, and exports them in its own shape, which the source turns into a
provtrace.run/1 document that says what it lacks.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from provtrace.tracer.serve.client import ApiError, ProvtraceClient
from provtrace.tracer.serve.events import EventHub
from provtrace.tracer.daemon.memory import InMemoryStore
from provtrace.tracer.serve.server import ApiServer
from provtrace.tracer.errors import UsageError
from provtrace.tui import model as M
from provtrace.tui import rows as R
from provtrace.tui.app import ProvtraceApp
from provtrace.tui.screens.lineage import LineageScreen
from provtrace.tui.screens.run import RunScreen
from provtrace.tui.source import DaemonSource, open_source

from .pilot import SIZE, static_text, table_rows, tree_labels, until


@pytest.fixture
def daemon(tmp_path):
    hub = EventHub()
    store = InMemoryStore(hub)
    server = ApiServer(store, str(tmp_path / "run" / "provtrace.sock"), hub=hub)
    server.start()
    kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with ProvtraceClient(server.socket_path) as c:
        k = c.register_kernel(kernel.pid, notebook_path="/nb/analysis.ipynb", kernel_name="python3",
                              language="python")
        c.report_cell_start(k.session_id, cell_id="c1", msg_id="m1", index=0, code="df = load()")
        c.report_cell_end(k.session_id, "ok", msg_id="m1", execution_count=1)
        c.report_cell_start(k.session_id, cell_id="c2", msg_id="m2", index=1, code="fit(df)")
        c.report_cell_end(k.session_id, "error", msg_id="m2", execution_count=2, error_name="ValueError")
    store.merger.add_io(k.session_id, "m1", "c1", reads=["/nb/train.csv"], writes=["/nb/clean.csv"])
    store.merger.add_io(k.session_id, "m2", "c2", reads=["/nb/clean.csv"], writes=["/nb/model.pkl"])
    yield server.socket_path, k.session_id
    kernel.kill()
    kernel.wait()
    server.stop()


def test_daemon_source_lists_loads_and_walks(daemon):
    socket_path, sid = daemon
    src = open_source(socket_path=socket_path)
    try:
        assert isinstance(src, DaemonSource) and src.description == f"daemon {socket_path}"
        (run,) = src.list_runs()
        assert (run.id, run.kind, run.label, run.uid) == (sid, "session", "/nb/analysis.ipynb", os.getuid())
        doc = src.load_run(sid)
        assert doc["schema"] == "provtrace.run/1" and doc["processes"] == [] and doc["files"] == []
        assert doc["run"]["gaps"] == {"daemon_store_has_no_process_or_file_records": 1}
        assert doc["context"] == {"kernel": {"name": "python3", "language": "python"}}
        assert [row for _k, row in R.cell_rows(doc)] == [
            ("0", "1", "ok", "c1", "/nb/train.csv", "/nb/clean.csv", "0"),
            ("1", "2", "error", "c2", "/nb/clean.csv", "/nb/model.pkl", "0"),
        ]
        lin = src.lineage("/nb/model.pkl", M.UPSTREAM, 10)
        labels = []
        stack = [R.lineage_tree(lin)]
        while stack:
            item = stack.pop()
            labels.append(item.label)
            stack.extend(reversed(item.children))
        assert labels == ["upstream lineage of /nb/model.pkl", f"written by [run {sid}] c2",
                          "reads /nb/clean.csv", f"written by [run {sid}] c1", "reads /nb/train.csv"]
        with pytest.raises(UsageError, match="not available through the daemon"):
            src.lineage(os.fsdecode(b"/nb/caf\xe9.csv"), M.UPSTREAM, 10)
        with pytest.raises(ApiError, match="not_found"):
            src.load_run("no-such-session")
    finally:
        src.close()


async def test_app_on_a_live_daemon(daemon):
    socket_path, sid = daemon
    src = DaemonSource(socket_path)
    app = ProvtraceApp(src)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: bool(table_rows(app, "#runs")), "the sessions")
            assert table_rows(app, "#runs")[0][:3] == [sid, "session", "/nb/analysis.ipynb"]
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.doc is not None,
                        "the session")
            assert app.screen.query_one("#panes").active == "cells"
            assert [r[3] for r in table_rows(app, "#cells-table")] == ["c1", "c2"]
            assert "daemon_store_has_no_process_or_file_records" in static_text(app, "#summary-text")
            # no file rows through this daemon, so lineage starts from a screen pushed directly
            await app.push_screen(LineageScreen("/nb/clean.csv", M.DOWNSTREAM))
            await until(pilot, lambda: len(tree_labels(app, "#lineage-tree")) > 2, "downstream lineage")
            assert tree_labels(app, "#lineage-tree")[1:3] == [f"read by [run {sid}] c2", "writes /nb/model.pkl"]
            await pilot.press("q")
        assert app.return_code == 0
    finally:
        src.close()
