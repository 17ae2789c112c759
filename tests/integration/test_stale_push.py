"""Staleness pushed live: a real Jupyter kernel followed by a real daemon reads a
file; the file changes on disk; the daemon pushes a "stale" event on its gRPC
stream, and `provtrace tui --socket` in a real terminal (tmux) badges the cell
and the session without a key pressed."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time

import pytest

from provtrace.tracer.serve.client import ProvtraceClient

from ..tui.test_terminal import COLS, PROVTRACE, ROWS, Tmux
from .helpers import followed_kernel, wait_for

pytestmark = pytest.mark.privileged


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (setup.sh installs it)")
    t = Tmux()
    yield t
    t.kill()


@pytest.fixture
def kernel(daemon, tmp_path):
    """A python3 kernel the daemon found and follows: (session id, client)."""
    with followed_kernel(daemon["db"], str(tmp_path)) as (sid, _km, kc):
        yield sid, kc


def _open_session(tmux: Tmux, sid: str) -> None:
    """Enter on the (filtered) runs table until the session's screen shows: the
    table takes the focus back from the filter box asynchronously."""
    _press_until(tmux, "Enter", f"run {sid} (session)")


def _press_until(tmux: Tmux, key: str, text: str) -> None:
    """key, again every 2 s until text is on the screen (a lone Escape can be
    held by the terminal as the start of a sequence)."""
    for _ in range(30):
        tmux("send-keys", "-t", "tui", key)
        try:
            tmux.wait_for(text, polls=20)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{text!r} never appeared after {key}; the screen was:\n{tmux.screen()}")


class Events:
    """The daemon's event stream for one session, read in a thread into a queue."""

    def __init__(self, socket_path: str, session_id: str) -> None:
        self.client = ProvtraceClient(socket_path)
        self.stream = self.client.stream_events(session_id=session_id, kinds=["watching", "stale"])
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for event in self.stream:
            self.q.put(event)

    def next(self, kind: str, path: str):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                e = self.q.get(timeout=1)
            except queue.Empty:
                continue
            if e.kind == kind and e.detail.get("path") == path:
                return e
        raise AssertionError(f"no {kind} event for {path}")

    def close(self) -> None:
        self.stream.cancel()
        self.client.close()


def test_a_changed_input_badges_the_cell_in_the_open_tui(daemon, kernel, tmux, tmp_path):
    sid, kc = kernel
    data = tmp_path / "input.csv"
    data.write_text("id,price,qty\n1,2.5,3\n2,4.0,5\n")
    events = Events(daemon["socket"], sid)
    try:
        reply = kc.execute_interactive("rows = open('input.csv').read().splitlines()", timeout=60)
        cell = reply["parent_header"]["msg_id"]
        watching = events.next("watching", str(data))  # from now on a change is seen
        assert cell in watching.detail["cells"]

        tmux("new-session", "-d", "-s", "tui", "-x", str(COLS), "-y", str(ROWS),
             f"{PROVTRACE} tui --socket {daemon['socket']}; sleep 60")
        tmux.wait_for("runs in daemon", sid)
        tmux("send-keys", "-t", "tui", "/")
        tmux("send-keys", "-t", "tui", "-l", sid)  # other kernels on the host are sessions too
        tmux("send-keys", "-t", "tui", "Enter")  # leave the filter
        _open_session(tmux, sid)
        assert "STALE" not in tmux.screen()

        written = time.monotonic()
        data.write_text("id,qty,region\n1,3.5,eu\n2,5,us\n")  # untraced: an editor, another host
        stale = events.next("stale", str(data))
        print(f"stale event received {time.monotonic() - written:.2f} s after the write")  # reported, not asserted
        assert stale.detail["why"] == "content changed" and cell in stale.detail["cells"]
        assert stale.detail["words"] == ["column `price` removed", "`qty` int64 → float64",
                                         "column `region` added"]
        assert stale.detail["drift"]["breaking"]
        # no key pressed: the pushed event alone puts the badge on the cell
        screen = tmux.wait_for("⚠ STALE", "content changed")
        print(f"badge on screen {time.monotonic() - written:.2f} s after the write (0.1 s polls)")
        assert sum("⚠ STALE" in line for line in screen.splitlines()) >= 1

        _press_until(tmux, "Escape", "session ⚠ STALE")  # back to the runs: badged there too
    finally:
        events.close()


def test_a_traced_write_by_another_run_is_named(daemon, kernel, tmp_path):
    sid, kc = kernel
    data = tmp_path / "params.jsonl"
    data.write_text('{"alpha": 1, "beta": "x"}\n')
    events = Events(daemon["socket"], sid)
    try:
        kc.execute_interactive("params = open('params.jsonl').read()", timeout=60)
        events.next("watching", str(data))
        # another run, traced by the same daemon, rewrites the session's input
        r = subprocess.run([PROVTRACE, "run", "--socket", daemon["socket"], "--", "sh", "-c",
                            "echo '{\"alpha\": 1.5}' > params.jsonl"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        stale = events.next("stale", str(data))
        runs = json.loads(subprocess.run([PROVTRACE, "runs", "--socket", daemon["socket"], "--json"],
                                         capture_output=True, text=True, check=True).stdout)
        writer = stale.detail["by"]
        assert next(x for x in runs if x["id"] == writer)["kind"] == "command"
        assert stale.detail["why"] == f"rewritten by run {writer}"
        assert stale.detail["words"] == ["column `beta` removed", "`alpha` int64 → float64"]
    finally:
        events.close()
