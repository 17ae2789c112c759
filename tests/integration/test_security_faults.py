"""Issue 12, faults: a full disk, a vanished client, a killed daemon.

Real components only: a real small tmpfs holds the store and is filled for
real; real `provtrace run` and `provtrace daemon` processes are killed with
real signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from provtrace.tracer.store import sqlite as S

from .helpers import PROVTRACE, pt, running_daemon, stored_run, wait_for

pytestmark = pytest.mark.privileged


@pytest.fixture
def small_fs():
    """A 4 MiB tmpfs of its own, unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tempfile.mkdtemp(prefix="provtrace-full-", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def fill(mnt: str) -> str:
    """Fills mnt to its last block; returns the filler's path (remove it to free the space)."""
    filler = os.path.join(mnt, "filler")
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)
    assert os.statvfs(mnt).f_bavail == 0
    return filler


def one_warning(stderr: str) -> str:
    """stderr is exactly one provtrace warning line, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("provtrace: warning:"), stderr
    return lines[0]


def runs(db: str) -> list[dict]:
    return json.loads(pt("runs", "--db", db, "--json", check=True).stdout)


# -- a full disk, standalone ---------------------------------------------------------
def test_full_store_before_the_run_still_runs_the_command(small_fs, tmp_path):
    db = os.path.join(small_fs, "s.db")
    assert pt("run", "--db", db, "--", "true").returncode == 0  # a store that exists, then fills
    filler = fill(small_fs)
    marker = tmp_path / "ran"
    r = pt("run", "--db", db, "--", "sh", "-c", f"echo yes > {marker}; exit 7")
    assert r.returncode == 7
    assert marker.read_text() == "yes\n"  # the command ran
    line = one_warning(r.stderr)
    assert "full" in line or "I/O error" in line, line
    # space returns: the next run is stored whole, and the store verifies
    os.unlink(filler)
    r = pt("run", "--db", db, "--", "sh", "-c", "exit 3")
    assert r.returncode == 3 and not r.stderr.strip(), r.stderr
    last = runs(db)[-1]
    assert last["exit_code"] == 3 and last["complete"] is True
    pt("verify", "--db", db, check=True)


def test_store_filling_during_the_run_keeps_the_exit_code(small_fs, tmp_path):
    """The command fills the store's disk itself: its records cannot be written,
    its exit code still comes back; once space returns, the run left open is
    closed as incomplete and the chain verifies."""
    db = os.path.join(small_fs, "s.db")
    script = (f"for i in $(seq 300); do echo x > {tmp_path}/f$i; done; "
              f"dd if=/dev/zero of={small_fs}/filler bs=4k 2>/dev/null; sleep 1; exit 7")
    r = pt("run", "--db", db, "--", "sh", "-c", script)
    assert r.returncode == 7
    one_warning(r.stderr)
    os.unlink(os.path.join(small_fs, "filler"))
    assert pt("run", "--db", db, "--", "true").returncode == 0
    first, second = runs(db)
    assert first["ended"] is not None and first["complete"] is False  # closed, not left open
    assert second["exit_code"] == 0 and second["complete"] is True
    doc = json.loads(pt("show", first["id"], "--db", db, "--json", check=True).stdout)["run"]
    assert doc["gaps"].get("run_not_finished") or doc["gaps"].get("store_write_failed"), doc
    pt("verify", "--db", db, check=True)
