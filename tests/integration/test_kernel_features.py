"""Both forms of the exit probe on this kernel (docs/kernels.md).

This kernel's sched_process_exit passes group_dead, so the loader uses it;
kernels up to 6.12 do not, and there the probe reads whole-process exit from
task->signal->live. Forcing that form here proves it still ends processes
exactly once, with their exit code, also when threads exit before the last."""

from __future__ import annotations

import os

import pytest

from provtrace.tracer.capture import ebpf

from .helpers import proc_by_argv, trace_py

pytestmark = pytest.mark.privileged

THREADS_THEN_EXIT = """
    import os, sys, threading
    ts = [threading.Thread(target=lambda: None) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if os.fork() == 0:
        os._exit(7)
    os.wait()
    sys.exit(5)
"""


# The forms this kernel can run: the argument only where the tracepoint has it.
FORMS = [True, False] if ebpf.exit_has_group_dead() else [False]


@pytest.mark.parametrize("group_dead_arg", FORMS, ids=["argument" if f else "signal_live" for f in FORMS])
def test_exit_probe_ends_each_process_once(group_dead_arg, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    monkeypatch.setattr(ebpf, "exit_has_group_dead", lambda *a: group_dead_arg)
    assert ("-DPT_EXIT_GROUP_DEAD_ARG=1" in ebpf.cflags({}, 64)) == group_dead_arg
    cap = ebpf.EbpfCapture(ringbuf_pages=64)
    try:
        cap.calibrate_created_bit()
        work = tmp_path / "w"
        work.mkdir()
        code, doc = trace_py(cap, THREADS_THEN_EXIT, cwd=work)
    finally:
        cap.close()
    assert code == 5
    procs = proc_by_argv(doc, "threading")
    assert len(procs) == 2, procs  # the parent and its forked child, threads folded in
    assert sorted(p["exit_code"] for p in procs if p["exit_code"] is not None) == [5, 7], procs
    assert doc["run"]["complete"], doc["run"]
