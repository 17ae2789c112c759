"""The fork gate, child side, on real pipes and real forked children: released, it
goes on; when the writer is gone without releasing, it exits and says so."""

from __future__ import annotations

import os

from provtrace.tracer.capture import gate


def gated_child(release: bool) -> tuple[int, bytes]:
    """Fork a child that waits at the gate and exits 0 if let through; returns
    (its exit code, what it wrote to stderr)."""
    gate_r, gate_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(gate_w)
            os.close(err_r)
            os.dup2(err_w, 2)
            gate.wait_for_release(gate_r)
        finally:
            os._exit(0)  # the command would be exec'd here
    os.close(gate_r)
    os.close(err_w)
    if release:
        gate.release(gate_w)
    else:
        os.close(gate_w)  # as when the tracer dies: the child reads EOF
    _, status = os.waitpid(pid, 0)
    with os.fdopen(err_r, "rb") as f:
        said = f.read()
    return os.waitstatus_to_exitcode(status), said


def test_released_child_goes_on():
    assert gated_child(release=True) == (0, b"")


def test_child_exits_when_the_tracer_is_gone_before_release():
    code, said = gated_child(release=False)
    assert code == gate.NOT_RELEASED_EXIT == 126
    assert said == b"provtrace: the tracer exited before tracing began; the command was not run\n"


def _run_gated(release: bool, quiet: bool, argv: list[str]) -> tuple[int, bytes, bytes]:
    """fork_gated with the child's stderr on a pipe: (exit code, exec errno digits, stderr)."""
    err_r, err_w = os.pipe()
    saved = os.dup(2)
    os.dup2(err_w, 2)  # the child inherits it
    try:
        child = gate.fork_gated(argv, {"PATH": os.defpath}, "/", quiet=quiet)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(err_w)
    failed = b""
    if release:
        child.release()
        failed = child.exec_error()
    child.close()
    _, status = os.waitpid(child.pid, 0)
    with os.fdopen(err_r, "rb") as f:
        said = f.read()
    return os.waitstatus_to_exitcode(status), failed, said


def test_fork_gated_runs_the_command_once_released():
    assert _run_gated(True, False, ["sh", "-c", "exit 4"]) == (4, b"", b"")


def test_fork_gated_reports_an_exec_failure():
    code, failed, _ = _run_gated(True, False, ["/nonexistent/cmd"])
    assert (code, int(failed)) == (127, 2)  # ENOENT


def test_fork_gated_quiet_exits_without_a_word_when_never_released():
    """The daemon's client: a busy daemon closes the gate and runs the command another way."""
    assert _run_gated(False, True, ["sh", "-c", "exit 0"]) == (gate.NOT_RELEASED_EXIT, b"", b"")
    code, _, said = _run_gated(False, False, ["sh", "-c", "exit 0"])
    assert code == gate.NOT_RELEASED_EXIT and b"the command was not run" in said
