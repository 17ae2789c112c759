"""Bad input and broken kernels are one line on stderr, and leave no run open
(issue 12: one-line errors everywhere). The real CLI, real kernelspecs whose
kernels die or never answer, a real deleted directory, real non-UTF-8 bytes."""

from __future__ import annotations

import json
import os
import subprocess

import nbformat
import psutil
import pytest

from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S

from .helpers import PROVTRACE, pt

pytestmark = pytest.mark.privileged

SILENT_S = "599.25"  # the never-answering kernel's sleep, unique enough to find it


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode("utf-8", "replace") if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode != 0, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("provtrace: "), err
    return err


def _runs(db: str) -> list[dict]:
    if not os.path.exists(db):
        return []
    store = S.Store(db, readonly=True)
    try:
        return Q.list_runs(store)
    finally:
        store.close()


def _no_unended_run(db: str) -> None:
    assert [r["id"] for r in _runs(db) if r["ended"] is None] == []


def test_deleted_cwd(tmp_path):
    gone, db = tmp_path / "gone", str(tmp_path / "store.db")
    gone.mkdir()
    r = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" "$@"',
                        PROVTRACE, "run", "--db", db, "--", "true"], capture_output=True, text=True, timeout=120)
    assert "current directory no longer exists" in _one_line_error(r)
    _no_unended_run(db)


@pytest.mark.parametrize("where", ["db", "socket"])
def test_non_utf8_label(tmp_path, where, daemon):
    db = str(tmp_path / "store.db")
    target = ["--db", db] if where == "db" else ["--socket", daemon["socket"]]
    r = subprocess.run([os.fsencode(PROVTRACE), b"run", *map(os.fsencode, target), b"--label", b"ab\xffcd",
                        b"--", b"true"], capture_output=True, timeout=120)
    assert "--label is not valid UTF-8" in _one_line_error(r)
    _no_unended_run(db if where == "db" else daemon["db"])


def test_db_path_over_name_max(tmp_path):
    db = str(tmp_path / ("x" * 300 + ".db"))
    for args in (("run", "--db", db, "--", "true"), ("runs", "--db", db), ("stale", "--db", db)):
        r = subprocess.run([PROVTRACE, *args], capture_output=True, text=True, timeout=120)
        assert "File name too long" in _one_line_error(r) or "no store at" in r.stderr


def test_socket_path_over_sun_path(tmp_path):
    sock = str(tmp_path / ("s" * 200 + ".sock"))
    r = subprocess.run([PROVTRACE, "runs", "--socket", sock], capture_output=True, text=True, timeout=120)
    assert "longer than 107 bytes" in _one_line_error(r)


def test_non_utf8_argv_runs_traced_locally_when_the_daemon_cannot_carry_it(tmp_path, daemon):
    """argv the daemon's API cannot carry: the command still runs, traced locally
    (as root with the probes loaded here; a user's would be ptrace)."""
    name = os.fsencode(str(tmp_path)) + b"/caf\xe9.txt"
    db = str(tmp_path / "store.db")
    r = subprocess.run([os.fsencode(PROVTRACE), b"run", b"--socket", os.fsencode(daemon["socket"]), b"--db",
                        os.fsencode(db), b"--", b"touch", name], capture_output=True, timeout=120)
    assert r.returncode == 0 and os.path.exists(name), r.stderr
    assert r.stderr.count(b"\n") == 1 and b"not UTF-8" in r.stderr and b"loading the probes here" in r.stderr
    assert [x["backend"] for x in _runs(db)] == ["ebpf"]
    _no_unended_run(db)


# -- notebooks: docs/notebooks.md promises one line; an unknown kernel creates no
# run, and a kernel that cannot start ends its run, marked failed.

def _kernelspec(root, name: str, script: str) -> None:
    spec = root / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["sh", "-c", script, "{connection_file}"], "display_name": name, "language": "python"}))


@pytest.fixture
def notebook(tmp_path):
    jupyter = tmp_path / "jupyter"
    _kernelspec(jupyter, "dies", "exit 3")
    _kernelspec(jupyter, "silent", f"exec sleep {SILENT_S}")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    return str(path), {**os.environ, "JUPYTER_PATH": str(jupyter)}


def _silent_kernels() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", SILENT_S]]


@pytest.mark.parametrize("kernel, expect, runs", [
    ("nosuchkernel", "no kernel named 'nosuchkernel'", 0),
    ("dies", "Kernel died before replying", 1),
    ("silent", "didn't respond in 5 seconds", 1),
])
def test_a_kernel_that_cannot_start(tmp_path, notebook, kernel, expect, runs):
    if os.geteuid() != 0:
        pytest.skip("notebook run needs root")
    path, env = notebook
    db = str(tmp_path / "store.db")
    r = subprocess.run([PROVTRACE, "notebook", "run", path, "--kernel", kernel, "--db", db,
                        "--startup-timeout", "5"], capture_output=True, text=True, timeout=180, env=env)
    assert expect in _one_line_error(r)
    stored = _runs(db)
    assert len(stored) == runs
    _no_unended_run(db)
    for run in stored:  # ended and marked failed, not complete
        assert run["exit_code"] == 1 and run["complete"] is False
        shown = json.loads(pt("show", run["id"], "--db", db, "--json", check=True).stdout)
        assert shown["run"]["gaps"]["notebook_failed"] == 1
    assert _silent_kernels() == []  # the kernel that never answered was shut down
