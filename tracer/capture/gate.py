"""The fork gate: a forked command waits on a pipe until it is traced.

The tracer forks, puts the child's pid under tracing (the eBPF traced map,
or PTRACE_SEIZE), and only then writes RELEASE to the pipe; the child execs
after reading it. If the tracer dies first (SIGKILL, a crash, an error
between the fork and the release), the child reads EOF instead: it must then
exit without running the command, never run it untraced. It exits
NOT_RELEASED_EXIT, 126 as a shell's "found but could not run", the same code
the daemon client's gate uses (api/client.py).
"""

from __future__ import annotations

import os

RELEASE = b"g"
NOT_RELEASED_EXIT = 126
_NOT_RELEASED_MSG = (b"provtrace: the tracer exited before tracing began; "
                     b"the command was not run\n")


def wait_for_release(gate_r: int) -> None:
    """In the child, between fork and exec: return once released, else _exit.

    Only os-level calls: the child of a threaded parent must not take locks.
    """
    try:
        said = os.read(gate_r, 1)
    except OSError:
        said = b""
    if said != RELEASE:
        try:
            os.write(2, _NOT_RELEASED_MSG)
        except OSError:
            pass  # no stderr left to tell: the exit code still says it
        os._exit(NOT_RELEASED_EXIT)
    os.close(gate_r)


def release(gate_w: int) -> None:
    """In the tracer, once the child is traced: let it exec."""
    os.write(gate_w, RELEASE)
    os.close(gate_w)
