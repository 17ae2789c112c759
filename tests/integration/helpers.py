"""Helpers for privileged tests: trace a real command with the real probes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from provtrace.tracer.pipeline.command import TracedCommand
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S

PY = sys.executable
PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")


def pt(*args, cwd=None, check=False, **kw):
    """Run the real provtrace CLI; with check, it must exit 0."""
    import subprocess  # noqa: PLC0415

    r = subprocess.run([PROVTRACE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def trace(capture, argv, *, cwd, db=None, label=None):
    """Run argv traced; return (exit_code, provtrace.run/1 document)."""
    db = db or os.path.join(cwd, "..", "store.db")
    store = S.Store(db)
    try:
        tc = TracedCommand(list(argv), store=store, label=label, cwd=str(cwd), capture=capture)
        code = tc.run()
        return code, Q.load_run(store, tc.rid)
    finally:
        store.close()


def trace_py(capture, code, *, cwd, **kw):
    """Trace a Python snippet run by this interpreter."""
    return trace(capture, [PY, "-c", textwrap.dedent(code)], cwd=cwd, **kw)


def accesses(doc, path, pid=None):
    """Union of access sets on path (optionally by one pid)."""
    out = set()
    for f in doc["files"]:
        if f["path"] == str(path) and (pid is None or f["pid"] == pid):
            out |= set(f["access"])
    return out


def entries(doc, path):
    return [f for f in doc["files"] if f["path"] == str(path)]


def proc_by_argv(doc, needle):
    return [p for p in doc["processes"] if any(needle in a for a in p["argv"])]


@contextlib.contextmanager
def running_daemon(env: dict | None = None, args: tuple[str, ...] = (), wrap: tuple[str, ...] = (),
                   debug: bool = False):
    """A real `provtrace daemon` process on a temp socket and store (needs root).

    Yields {"socket", "db", "base", "proc"}; SIGTERM at exit must stop it cleanly.
    `args` are extra daemon options; `wrap` a command that execs it (setpriv ...);
    `debug`: its debug log on stderr (the caller must keep reading it)."""
    base = tempfile.mkdtemp(prefix="provtrace-daemon-", dir="/tmp")
    os.chmod(base, 0o755)  # users reach the socket; authorization is by peer credentials
    sock, db = os.path.join(base, "provtrace.sock"), os.path.join(base, "provtrace.db")
    proc = subprocess.Popen([*wrap, PROVTRACE, *(["--debug"] if debug else []), "daemon",
                             "--socket", sock, "--db", db, *args],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        for _ in range(600):  # compile and load: seconds, on a busy machine more
            line = proc.stderr.readline()
            if "serving" in line or proc.poll() is not None:
                break
        assert "serving" in line, f"daemon did not start: {line}"
        yield {"socket": sock, "db": db, "base": base, "proc": proc}
        if proc.poll() is None:  # a test may have killed it itself (crash recovery)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def stored_run(db: str, run_id: str, *, settled: bool = True) -> dict:
    """provtrace.run/1 of run_id, read from a (daemon's) store file. settled: once
    it is no longer finishing (its context, fingerprints and end written after
    the client was released: store/finisher.py)."""
    def read() -> dict:
        store = S.Store(db, readonly=True)
        try:
            return Q.load_run(store, Q.resolve_run(store, run_id))
        finally:
            store.close()

    if not settled:
        return read()
    return wait_for(lambda: (doc := read()) and not doc["run"].get("finishing") and doc, 120,
                    f"run {run_id} to complete")


def wait_for(pred, timeout_s: float, what: str):
    """pred()'s first truthy value, polled every 0.2 s; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def until_followed(kc, db: str, session_id: str) -> None:
    """Run a no-op cell until the daemon records one: IOPub is then being followed
    (a subscriber misses what was sent before it joined)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kc.execute_interactive("1", timeout=30)
        time.sleep(0.7)  # the store is flushed every 0.5 s
        if stored_run(db, session_id)["cells"]:
            return
    raise AssertionError("the daemon never recorded a cell of this kernel")


def sessions(db: str) -> list[dict]:
    """The session runs (followed kernels) in a store file."""
    store = S.Store(db, readonly=True)
    try:
        return [r for r in Q.list_runs(store) if r["kind"] == "session"]
    finally:
        store.close()


def kernel_pid(db: str, run_id: str) -> int | None:
    """The kernel pid a session run's header names, in a store file."""
    store = S.Store(db, readonly=True)
    try:
        row = store.db.execute("SELECT body FROM records r JOIN runs u ON u.rid=r.rid "
                               "WHERE u.id=? AND r.kind=? LIMIT 1", (run_id, S.RUN_START)).fetchone()
    finally:
        store.close()
    return json.loads(row[0]).get("kernel", {}).get("pid") if row else None


@contextlib.contextmanager
def followed_kernel(db: str, cwd: str, kernel: str = "python3"):
    """A real Jupyter kernel started in cwd that the daemon storing in db found
    and follows: yields (session id, KernelManager, client); shut down after.
    Its session is told apart from other kernels on the host by its pid."""
    import pytest  # noqa: PLC0415
    from jupyter_client import KernelManager  # noqa: PLC0415
    from jupyter_client.kernelspec import KernelSpecManager  # noqa: PLC0415

    if kernel not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"kernelspec {kernel!r} not installed (setup.sh installs it)")
    before = {r["id"] for r in sessions(db)}
    km = KernelManager(kernel_name=kernel)
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        pid = km.provisioner.process.pid
        session = wait_for(lambda: [r for r in sessions(db) if r["id"] not in before
                                    and kernel_pid(db, r["id"]) == pid],
                           60, "the daemon to discover the kernel")[0]
        until_followed(kc, db, session["id"])
        yield session["id"], km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
