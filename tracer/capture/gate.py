"""The fork gate: a forked command waits on a pipe until it is traced.

The tracer forks, puts the child's pid under tracing (the eBPF traced map,
or PTRACE_SEIZE), and only then writes RELEASE to the pipe; the child execs
after reading it. If the tracer dies first (SIGKILL, a crash, an error
between the fork and the release), the child reads EOF instead: it must then
exit without running the command, never run it untraced. It exits
NOT_RELEASED_EXIT, 126 as a shell's "found but could not run".

fork_gated() is the one fork behind the gate: the eBPF backend, the ptrace
backend and the daemon's client (api/client.py) all start commands with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from . import sigstate

RELEASE = b"g"
NOT_RELEASED_EXIT = 126
_NOT_RELEASED_MSG = (b"provtrace: the tracer exited before tracing began; "
                     b"the command was not run\n")


def wait_for_release(gate_r: int, *, quiet: bool = False) -> None:
    """In the child, between fork and exec: return once released, else _exit.

    quiet: exit without a word (the caller runs the command another way).
    Only os-level calls: the child of a threaded parent must not take locks.
    """
    try:
        said = os.read(gate_r, 1)
    except OSError:
        said = b""
    if said != RELEASE:
        if quiet:
            os._exit(NOT_RELEASED_EXIT)
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


@dataclass
class Gated:
    """A forked command held at the gate: release() lets it exec; exec_error()
    then says why its exec failed (errno digits), b"" once it exec'd."""

    pid: int
    gate_w: int
    err_r: int

    def release(self) -> None:
        release(self.gate_w)
        self.gate_w = -1

    def exec_error(self) -> bytes:
        """Blocks until the exec happened (the pipe closes on exec) or failed."""
        said = os.read(self.err_r, 64)
        os.close(self.err_r)
        self.err_r = -1
        return said

    def close(self) -> None:
        """Never released: the child reads EOF and exits without running anything."""
        for fd in (self.gate_w, self.err_r):
            if fd >= 0:
                os.close(fd)
        self.gate_w = self.err_r = -1


def fork_gated(argv: Sequence[str], env: Mapping[str, str], cwd: str, *, exe: str | None = None,
               before_exec: Callable[[], None] | None = None, quiet: bool = False) -> Gated:
    """Fork argv held at the gate. exe: the file to exec (None: execvpe finds
    argv[0] in env's PATH). before_exec runs in the child after release (the
    ptrace backend installs its seccomp filter there); os-level work only."""
    gate_r, gate_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    argv, env = list(argv), dict(env)
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish work until exec
        try:
            os.close(gate_w)
            os.close(err_r)
            wait_for_release(gate_r, quiet=quiet)  # exits, never execs, unless released
            os.chdir(cwd)  # after the release: a failure is told through err, not a broken gate
            sigstate.restore_in_child()  # provtrace's own signal state, not Python's
            if before_exec is not None:
                before_exec()
            if exe is None:
                os.execvpe(argv[0], argv, env)
            else:
                os.execve(exe, argv, env)
        except OSError as e:
            os.write(err_w, str(e.errno or 2).encode())
        finally:
            os._exit(127)
    os.close(gate_r)
    os.close(err_w)
    return Gated(pid, gate_w, err_r)
