"""The sys_exit hook comes and goes with the traced set (tracer/capture/ebpf.py).

What is checked is the kernel's own view: the raw tracepoint links this
process holds, read from /proc/self/fdinfo (tp_name of each bpf link).
"""

from __future__ import annotations

import os
import re

import pytest

from provtrace.tracer.capture import ebpf

from .helpers import accesses, trace

pytestmark = pytest.mark.privileged

SCHED = {"sched_process_fork", "sched_process_exec", "sched_process_exit"}


def _linked_tracepoints() -> set[str]:
    """tp_name of every raw tracepoint link among this process's fds."""
    found = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:  # an fd closed while we looked
            continue
        m = re.search(r"^tp_name:\s*(\S+)", text, re.M)
        if m:
            found.add(m.group(1))
    return found


def _poll_until_detached(capture) -> None:
    for _ in range(int(ebpf.IDLE_DETACH_S / 0.05) * 3):
        capture.poll(50)
        if not capture.attached:
            return


def test_sys_exit_hook_leaves_when_idle_and_returns_for_the_next_trace(capture, tmp_path):
    for pid in capture.traced_pids():  # leftovers of earlier tests
        capture.untrace(pid)
    code, doc = trace(capture, ["sh", "-c", "echo a > a.txt"], cwd=tmp_path)
    assert code == 0 and "write" in accesses(doc, tmp_path / "a.txt")

    _poll_until_detached(capture)
    assert not capture.attached
    linked = _linked_tracepoints()
    assert "sys_exit" not in linked, "an idle capture must not tax every syscall"
    assert SCHED <= linked, "fork/exec/exit hooks stay"

    code, doc = trace(capture, ["sh", "-c", "echo b > b.txt; cat a.txt > c.txt"], cwd=tmp_path)
    assert code == 0
    assert "write" in accesses(doc, tmp_path / "b.txt"), "the first syscalls after re-attaching are seen"
    assert "read" in accesses(doc, tmp_path / "a.txt")
    assert capture.attached and "sys_exit" in _linked_tracepoints()
