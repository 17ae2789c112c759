"""The end of a run off the critical path (store/finisher.py), with a real daemon,
real probes and real files.

The daemon runs with PROVTRACE_TEST_HOLD_COMPLETIONS naming a file: while it
exists, completions (context, fingerprints, end) wait to start. So each test
knows, without timing, that the client came back before its run was
fingerprinted, and can act in between."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import threading
import time

import pytest

from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S

from .helpers import PROVTRACE, entries, running_daemon, stored_run, wait_for

pytestmark = pytest.mark.privileged

HOLD_ENV = "PROVTRACE_TEST_HOLD_COMPLETIONS"


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A daemon with completions held (the hold file exists) and its debug log
    read line by line, so a test can see what the daemon is doing."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    hold = tmp_path_factory.mktemp("hold") / "hold"
    hold.touch()
    with running_daemon(env={**os.environ, HOLD_ENV: str(hold)}, debug=True) as d:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_drain, args=(d["proc"].stderr, lines), daemon=True)
        reader.start()
        yield {**d, "hold": hold, "log": lines}
        hold.unlink(missing_ok=True)  # let whatever is held complete: SIGTERM must not wait on it


def _drain(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def _log_line(lines: queue.Queue, needle: str) -> str:
    """The daemon's next log line containing needle; AssertionError after 120 s."""
    deadline = time.monotonic() + 120
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if needle in line:
            return line
    raise AssertionError(f"the daemon never logged {needle!r}")


def _run(sock: str, cwd, *cmd: str) -> subprocess.CompletedProcess:
    """`provtrace run` through the daemon. Were the daemon not to answer, root's
    run would trace it standalone: into a store of this test, never the system's."""
    fallback = os.path.join(cwd, "fallback.db")
    r = subprocess.run([PROVTRACE, "run", "--socket", sock, "--", *cmd], capture_output=True, text=True,
                       timeout=180, cwd=str(cwd), env={**os.environ, "PROVTRACE_DB": fallback})
    assert not os.path.exists(fallback), f"the daemon did not take the command: {r.stderr}"
    return r


def _last_run_id(db: str) -> str:
    """The last command run (a followed kernel of another test may be newer)."""
    store = S.Store(db, readonly=True)
    try:
        return [r for r in Q.list_runs(store) if r["kind"] == "command"][-1]["id"]
    finally:
        store.close()


def test_client_returns_before_fingerprints_and_a_rewrite_gets_the_marker(held, tmp_path):
    out = tmp_path / "out.csv"
    r = _run(held["socket"], tmp_path, "sh", "-c", "printf 'a,b\\n1,2\\n' > out.csv; exit 5")
    assert r.returncode == 5, r.stderr
    run_id = _last_run_id(held["db"])
    # the client is back, and the run is released but not complete: no fingerprint yet
    doc = stored_run(held["db"], run_id, settled=False)
    assert doc["run"]["finishing"] is True and doc["run"]["exit_code"] == 5
    assert doc["run"]["ended"] is None and doc["run"]["gaps"] == {"completion_pending": 1}
    assert [f for f in entries(doc, out) if "sha256" in f] == []
    # rewritten between the run's end and its hashing: same size, the old mtime put back
    st = os.stat(out)
    out.write_text("a,b\n9,9\n")
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    held["hold"].unlink()
    try:
        doc = stored_run(held["db"], run_id)
    finally:
        held["hold"].touch()  # completions queued after this one wait again (none is queued now)
    assert doc["run"]["ended"] and doc["run"]["exit_code"] == 5 and "finishing" not in doc["run"]
    written = [f for f in entries(doc, out) if "write" in f["access"]]
    assert written and all(f["sha256"] is None and f["changed_before_hash"] is True for f in written)
    assert written[0]["size_bytes"] == st.st_size and written[0]["hash_skipped"]
    assert doc["run"]["gaps"]["changed_before_hash"] == 1
    assert {"what": "changed_before_hash", "count": 1, "paths": [str(out)]} in doc["run"]["gap_details"]


def test_show_right_after_run_sees_the_complete_run(held, tmp_path):
    out = tmp_path / "out.csv"
    r = _run(held["socket"], tmp_path, "sh", "-c", "printf 'x,y\\n3,4\\n' > out.csv")
    assert r.returncode == 0, r.stderr
    run_id = _last_run_id(held["db"])
    show = subprocess.Popen([PROVTRACE, "show", "--socket", held["socket"], "--json", run_id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the daemon has the query, and the query waits: only then may the run complete
        assert run_id in _log_line(held["log"], "event=query-waits-completion")
        held["hold"].unlink()
        stdout, stderr = show.communicate(timeout=120)
    finally:
        held["hold"].touch()
        if show.poll() is None:
            show.kill()
    assert show.returncode == 0, stderr
    doc = json.loads(stdout)
    assert doc["run"]["ended"] and "finishing" not in doc["run"] and doc["context"]
    written = [f for f in entries(doc, out) if "write" in f["access"]]
    assert written and written[0]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_sigterm_writes_every_queued_completion(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    hold = tmp_path / "hold"
    hold.touch()
    with running_daemon(env={**os.environ, HOLD_ENV: str(hold)}) as d:
        for name in ("a.csv", "b.csv"):
            r = _run(d["socket"], tmp_path, "sh", "-c", f"echo {name} > {name}")
            assert r.returncode == 0, r.stderr
        store = S.Store(d["db"], readonly=True)
        try:
            runs = [r for r in Q.list_runs(store) if r["kind"] == "command"]  # not kernels of others' tests
        finally:
            store.close()
        assert len(runs) == 2 and all(r.get("finishing") for r in runs), runs  # both released, both held
        d["proc"].send_signal(signal.SIGTERM)
        hold.unlink()  # the stopping daemon must still write both
        assert d["proc"].wait(timeout=120) == 0
        for run, name in zip(runs, ("a.csv", "b.csv")):
            doc = stored_run(d["db"], run["id"], settled=False)
            assert doc["run"]["ended"] and doc["run"]["exit_code"] == 0 and "finishing" not in doc["run"]
            assert doc["run"].get("end_reason") is None  # ended by its completion, not by recovery
            written = [f for f in entries(doc, tmp_path / name) if "write" in f["access"]]
            assert written[0]["sha256"] == hashlib.sha256(f"{name}\n".encode()).hexdigest()
