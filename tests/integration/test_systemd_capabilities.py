"""The systemd unit's capabilities are enough: a real daemon started with the
unit's CapabilityBoundingSet and no other capability (setpriv, as systemd
would bound it) traces a real user's command, reads its files as that user,
and fingerprints what it wrote. systemd is not PID 1 here, so the unit itself
cannot be started; its bounding set can be.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .helpers import PROVTRACE, running_daemon

pytestmark = pytest.mark.privileged

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "provtrace.service"
NOBODY = 65534


def _unit_capabilities() -> list[str]:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    cp.read(UNIT)
    return cp["Service"]["CapabilityBoundingSet"].split()


def _bounding_set(pid: int) -> set[str]:
    """pid's capability bounding set, by name (capsh decodes the mask)."""
    with open(f"/proc/{pid}/status") as fh:
        mask = next(ln.split()[1] for ln in fh if ln.startswith("CapBnd:"))
    decoded = subprocess.run(["capsh", f"--decode={mask}"], capture_output=True, text=True, check=True).stdout
    return {c.upper() for c in decoded.strip().split("=", 1)[1].split(",") if c}


def test_unit_capabilities_trace_a_users_command():
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("capsh") is None:
        pytest.skip("needs root, setpriv and capsh")
    caps = _unit_capabilities()
    assert "CAP_SYS_ADMIN" not in caps
    bound = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    work = tempfile.mkdtemp(prefix="provtrace-caps-", dir="/tmp")
    os.chown(work, NOBODY, NOBODY)
    try:
        with running_daemon(wrap=("setpriv", f"--bounding-set={bound}", "--")) as d:
            # exactly the unit's, nothing more (less where this host's own set lacks one:
            # a container without CAP_SYS_RESOURCE)
            assert _bounding_set(d["proc"].pid) == set(caps) & _bounding_set(os.getpid())
            r = subprocess.run([PROVTRACE, "run", "--socket", d["socket"], "--json-out", f"{work}/r.json", "--",
                                "sh", "-c", "cat /etc/hostname > out.txt; exit 3"], cwd=work, user=NOBODY,
                               group=NOBODY, extra_groups=[], env={"PATH": "/usr/bin:/bin", "HOME": work},
                               capture_output=True, text=True, timeout=180)
            assert r.returncode == 3 and r.stderr == "", r.stderr
            doc = json.loads(open(f"{work}/r.json").read())
        assert doc["run"]["backend"] == "ebpf" and doc["run"]["complete"] is True, doc["run"]
        out = [f for f in doc["files"] if f["path"] == f"{work}/out.txt" and "write" in f["access"]]
        assert out and out[0].get("sha256"), out  # fingerprinted, read as its owner
        assert any(f["path"] == "/etc/hostname" and "read" in f["access"] for f in doc["files"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
