"""vm/run-matrix end to end: a real Debian kernel booted under QEMU (PROVTRACE_VM=1).

PROVTRACE_VM_KERNEL picks the kernel (default bookworm-6.1, the CI one) and
PROVTRACE_VM_SUITE the suite (default: the kernel's own, from vm/kernels.toml).
Downloads and logs go to $PROVTRACE_VM_CACHE or /var/cache/provtrace-vm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_MATRIX = [sys.executable, str(ROOT / "vm" / "matrix.py")]

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]


def _run(*args, timeout=1700):
    return subprocess.run([*RUN_MATRIX, *args], capture_output=True, text=True, timeout=timeout)


def test_one_kernel_passes_its_suite_in_a_guest():
    kernel = os.environ.get("PROVTRACE_VM_KERNEL", "bookworm-6.1")
    suite = os.environ.get("PROVTRACE_VM_SUITE")
    r = _run(*(["--suite", suite] if suite else []), kernel)
    print(r.stderr, r.stdout)
    row = next(ln.split() for ln in r.stdout.splitlines() if ln.startswith(kernel + " "))
    assert row[2] == "pass", r.stdout
    assert r.returncode == 0 and int(row[3]) > 0 and row[4] == "0"


def test_a_missing_package_and_a_hanging_guest_are_one_line_each(tmp_path):
    """Bad input: the matrix goes on past a kernel Debian does not have and past a
    guest that gives no result in time; each gets its own line and result."""
    (tmp_path / "kernels.toml").write_text(f"""
[suite.smoke]
pytest = ["tests/vm/test_guest_smoke.py"]

[kernel.missing]
suite = "bookworm"
image = "linux-image-0.0.0-no-such-amd64"
headers = "linux-headers-amd64"
tests = "smoke"

[kernel.hangs]
suite = "bookworm"
image = "linux-image-amd64"
headers = "linux-headers-amd64"
tests = "smoke"
timeout_s = 3
""")
    cache = os.environ.get("PROVTRACE_VM_CACHE", "/var/cache/provtrace-vm")
    r = _run("--matrix", str(tmp_path / "kernels.toml"), "--cache", cache, timeout=600)
    assert r.returncode == 1, r.stderr
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:] if not ln.startswith(" ")}
    assert rows["missing"][2] == "no-package" and rows["hangs"][2] == "timeout"
    notes = [ln for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert any("linux-image-0.0.0-no-such-amd64 is not in Debian bookworm" in n for n in notes), notes
    assert any("no result after 3 s" in n and "serial.log" in n for n in notes), notes
    assert Path(cache, "logs", "hangs", "serial.log").exists()
