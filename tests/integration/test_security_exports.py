"""Issue 12, finding 6: root's `export -o` and `--json-out` never write through a
symlink that another user (a real one, `nobody`) planted in the destination folder."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")
SYSTEM_PY = "/usr/bin/python3"
PLANTED = 3000  # pids ahead of the last one given out: provtrace's own pid falls among them

pytestmark = pytest.mark.privileged


@pytest.fixture
def scene():
    """root's secret (0600, in a root-only folder) and a folder owned by `nobody`,
    where root is about to write an export."""
    if os.geteuid() != 0:
        pytest.skip("needs root to write as root and to become `nobody`")
    base = tempfile.mkdtemp(prefix="provtrace-exports-", dir="/tmp")
    os.chmod(base, 0o755)
    vault = os.path.join(base, "vault")
    os.mkdir(vault, 0o700)
    secret = os.path.join(vault, "secret")
    with open(secret, "w") as f:
        f.write("root's secret\n")
    os.chmod(secret, 0o600)
    users = os.path.join(base, "nobody-owned")
    os.mkdir(users, 0o755)
    os.chown(users, 65534, 65534)
    yield {"secret": secret, "dir": users, "db": os.path.join(base, "store.db")}
    shutil.rmtree(base, ignore_errors=True)


def plant(dest: str, target: str) -> list[int]:
    """As `nobody`: a symlink at dest and at every DEST.tmpPID the next pids would use."""
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    pids = [p for p in ((last + i) % pid_max for i in range(1, PLANTED + 1)) if p > 300]
    code = ("import os, sys; dest, target = sys.argv[1], sys.argv[2]; os.symlink(target, dest)\n"
            "for pid in sys.argv[3:]: os.symlink(target, f'{dest}.tmp{pid}')")
    subprocess.run([SYSTEM_PY, "-c", code, dest, target, *map(str, pids)], user="nobody",
                   group="nogroup", check=True, timeout=60)
    return pids


def provtrace(*args) -> tuple[subprocess.CompletedProcess, int]:
    """The real CLI as root; also its pid, to check it was among the planted ones."""
    proc = subprocess.Popen([PROVTRACE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def assert_replaced_not_written_through(dest: str, secret: str) -> None:
    with open(secret) as f:
        assert f.read() == "root's secret\n", "root's file was overwritten through a planted symlink"
    st = os.lstat(dest)
    assert stat.S_ISREG(st.st_mode), "the symlink at the destination was replaced by the export"
    assert stat.S_IMODE(st.st_mode) == 0o644  # as open() under umask 022, not mkstemp's 0600
    temps = [n for n in os.listdir(os.path.dirname(dest)) if n.startswith(".")]
    assert temps == [], temps  # no temporary file of ours is left


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_json_out_and_export_never_follow_planted_symlinks(scene, umask_022):
    json_out = os.path.join(scene["dir"], "run.json")
    pids = plant(json_out, scene["secret"])
    r, pid = provtrace("run", "--backend", "ptrace", "--db", scene["db"], "--json-out", json_out,
                       "--", "true")
    assert r.returncode == 0, r.stderr
    assert pid in pids, "provtrace's pid was not among the planted names; the test proved nothing"
    assert_replaced_not_written_through(json_out, scene["secret"])
    with open(json_out) as f:
        assert json.load(f)["run"]["exit_code"] == 0

    export = os.path.join(scene["dir"], "export.dot")
    pids = plant(export, scene["secret"])
    r, pid = provtrace("export", "last", "--format", "dot", "-o", export, "--db", scene["db"])
    assert r.returncode == 0, r.stderr
    assert pid in pids, "provtrace's pid was not among the planted names; the test proved nothing"
    assert_replaced_not_written_through(export, scene["secret"])
    with open(export) as f:
        assert f.read().startswith("digraph")
