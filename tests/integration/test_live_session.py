"""Live sessions are live: a real Jupyter kernel followed by a real daemon runs a
cell that reads a.csv and writes b.csv; while the kernel still runs, `provtrace
show` and `provtrace lineage` (on the store file and through the daemon's
socket) and `provtrace tui --socket` in a real terminal (tmux) show the cell's
reads and writes. When the session ends, that cell's write is stored once."""

from __future__ import annotations

import json
import time

import pytest

from provtrace.tracer.lineage.versions import Model
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S

from .helpers import PROVTRACE, followed_kernel, pt, stored_run, wait_for
from .test_stale_push import _open_session, tmux  # noqa: F401 (tmux: a fixture)

pytestmark = pytest.mark.privileged

CELL = """
import csv
with open('a.csv') as f:
    rows = list(csv.reader(f))
with open('b.csv', 'w') as f:
    f.write(''.join(f'{r[0]},{int(r[1]) * 2}\\n' for r in rows))
"""


@pytest.fixture
def followed(daemon, tmp_path):
    """A python3 kernel in tmp_path that the daemon found and follows: (session id, manager, client)."""
    with followed_kernel(daemon["db"], str(tmp_path)) as found:
        yield found


def _cell(doc: dict, msg_id: str) -> dict | None:
    return next((c for c in doc["cells"] if c.get("id") == msg_id), None)


def _show(sid: str, *where: str) -> dict:
    return json.loads(pt("show", sid, "--json", *where, check=True).stdout)


def _lineage(path: str, *where: str) -> dict:
    return json.loads(pt("lineage", path, "--json", *where, check=True).stdout)


def _with_io(doc: dict, msg_id: str, reads: list[str], writes: list[str]) -> dict | None:
    cell = _cell(doc, msg_id)
    return doc if cell and cell["reads"] == reads and cell["writes"] == writes else None


def test_a_finished_cell_is_queryable_while_its_kernel_runs(daemon, followed, tmux, tmp_path):  # noqa: F811
    sid, km, kc = followed
    a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    (tmp_path / "a.csv").write_text("x,1\ny,2\n")
    reply = kc.execute_interactive(CELL, timeout=60)
    assert reply["content"]["status"] == "ok"
    ran = time.monotonic()
    msg_id = reply["parent_header"]["msg_id"]

    on_store = ("--db", daemon["db"])
    on_socket = ("--socket", daemon["socket"])
    # bounded polling, no timed assertion: the cell's reads and writes appear while the kernel runs
    wait_for(lambda: _with_io(_show(sid, *on_store), msg_id, [a], [b]), 60, "the cell's reads and writes")
    print(f"cell's reads and writes stored {time.monotonic() - ran:.2f} s after its reply")  # reported only
    doc = wait_for(lambda: _with_io(_show(sid, *on_socket), msg_id, [a], [b]), 60, "them through the daemon")
    assert km.is_alive() and doc["run"]["ended"] is None  # the session is still live
    assert doc["run"]["gaps"].get("run_not_finished") == 1

    for where in (on_store, on_socket):
        up = _lineage(b, "--no-kernel-state", *where)  # the cells before it are kernel state
        cells = [n for n in up["nodes"] if n["kind"] == "cell"]
        assert [(n["run"], n["cell"]) for n in cells] == [(sid, msg_id)]
        assert a in {n.get("path") for n in up["nodes"] if n["kind"] == "file"}
        down = _lineage(a, "--downstream", *where)
        assert b in {n.get("path") for n in down["nodes"] if n["kind"] == "file"}

    # stale and export read a live session too: its input is fresh, its files are in the export
    stale = json.loads(pt("stale", sid, "--json", *on_socket, check=True).stdout)
    assert msg_id in {u["cell"] for u in stale["fresh"]} and not stale["stale"], stale
    prov = pt("export", sid, "--format", "prov-json", "-o", "-", *on_socket, check=True).stdout
    assert a in prov and b in prov

    # the TUI over the socket, opened on the live session: its files pane has the cell's read and write
    tmux("new-session", "-d", "-s", "tui", "-x", "300", "-y", "40",
         f"{PROVTRACE} tui --socket {daemon['socket']}; sleep 60")
    tmux.wait_for("runs in daemon", sid)
    tmux("send-keys", "-t", "tui", "/")
    tmux("send-keys", "-t", "tui", "-l", sid)  # other kernels on the host are sessions too
    tmux("send-keys", "-t", "tui", "Enter")  # leave the filter
    _open_session(tmux, sid)
    tmux.wait_for(msg_id)  # the cells pane
    tmux("send-keys", "-t", "tui", "Tab")
    tmux("send-keys", "-t", "tui", "Tab")  # the files pane: each file's path, access and cell
    screen = tmux.wait_for("ACCESS", a, b)  # the files pane's header: the cells pane shows the paths too
    assert any(b in line and "write" in line for line in screen.splitlines()), screen
    assert km.is_alive()

    km.shutdown_kernel(now=False)
    done = wait_for(lambda: (lambda d: d if d["run"]["ended"] else None)(stored_run(daemon["db"], sid)),
                    60, "the session to end")
    cell = _cell(done, msg_id)
    assert cell["reads"] == [a] and cell["writes"] == [b]
    # no double counting: the checkpoint's records are not written again at the kernel's exit
    writes = [f for f in done["files"] if f["path"] == b and f["cell"] == msg_id]
    assert len(writes) == 1 and "write" in writes[0]["access"]
    assert len([f for f in done["files"] if f["path"] == a and f["cell"] == msg_id]) == 1
    store = S.Store(daemon["db"], readonly=True)
    try:
        rid = Q.resolve_run(store, sid)
        versions = [v for v in Model(store).history(b).versions if v.act is not None and v.act.rid == rid]
    finally:
        store.close()
    assert [(v.how, v.act.cell) for v in versions] == [("write", msg_id)]
