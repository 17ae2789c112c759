"""Issue 12: a FIFO, a symlink or a huge file named kernel-*.json never stalls kernel
discovery; a real kernel's connection file beside them is still found."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from jupyter_client.manager import KernelManager

from provtrace.tracer.correlate.kernels import KernelDiscovery

SCAN_LIMIT_S = 30.0  # a scan takes well under a second; a blocked one never ends


def scan_or_hang(runtime) -> tuple:
    """One scan in a thread: (Discovery or None if it never returned, seconds taken)."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(found=KernelDiscovery(dirs=[runtime]).scan()),
                         daemon=True)
    start = time.monotonic()
    t.start()
    t.join(SCAN_LIMIT_S)
    return out.get("found"), time.monotonic() - start


def unblock(fifo) -> None:
    """Open the FIFO's write end once, so a reader stuck in open() (the bug) can end."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting: nothing to release


@pytest.fixture
def planted(tmp_path):
    """A runtime folder with three hostile kernel-*.json files in it."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    fifo = runtime / "kernel-fifo.json"
    os.mkfifo(fifo)
    elsewhere = tmp_path / "someone-elses-kernel.json"
    elsewhere.write_text('{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, '
                         '"hb_port": 5, "key": "their-key"}')
    elsewhere.chmod(0o600)
    (runtime / "kernel-link.json").symlink_to(elsewhere)
    with open(runtime / "kernel-huge.json", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse
    yield runtime
    unblock(fifo)


def test_planted_files_are_skipped_and_the_real_kernel_is_found(planted):
    km = KernelManager(kernel_name="python3", connection_file=str(planted / "kernel-real.json"))
    km.start_kernel(cwd=str(planted))
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kc.stop_channels()
        found, took_s = scan_or_hang(planted)
        assert found is not None, "kernel discovery blocked on a planted kernel-*.json"
        assert took_s < 10
        kernel = found.by_pid(km.provisioner.pid)
        assert kernel is not None and kernel.connection is not None, found
        assert "ports" in kernel.found_by
        reasons = {os.path.basename(g.where): g.reason for g in found.gaps if g.what == "connection-file"}
        assert "not a regular file" in reasons["kernel-fifo.json"]
        assert "symlink, not followed" in reasons["kernel-link.json"]
        assert "larger than 65536 bytes" in reasons["kernel-huge.json"]
    finally:
        km.shutdown_kernel(now=True)


def test_a_command_line_naming_a_fifo_does_not_stall_discovery(planted):
    """What a user can start: any process whose argv names a FIFO as its connection file."""
    fifo = planted / "kernel-fifo.json"
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "ipykernel_launcher", "-f", str(fifo)])
    try:
        found, _ = scan_or_hang(planted)
        assert found is not None, "kernel discovery blocked on a FIFO named on a command line"
        claimed = found.by_pid(fake.pid)
        assert claimed is None or claimed.connection is None  # nothing to follow: the FIFO was not read
    finally:
        fake.kill()
        fake.wait()


def test_each_refused_file_is_warned_about_once(planted, caplog):
    for _ in range(3):  # the follower scans every few seconds
        KernelDiscovery(dirs=[planted]).scan()
    refused = [r.getMessage() for r in caplog.records if "connection-file-refused" in r.getMessage()]
    assert len(refused) == 3, refused  # FIFO, symlink, huge file: one line each
