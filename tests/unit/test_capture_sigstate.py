"""sigstate: what a traced command inherits, and the shell's exit codes; real processes, no root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from provtrace.tracer.capture import sigstate


def _child_status(state: sigstate.SignalState) -> dict[str, int]:
    """SigIgn and SigBlk of a child forked here that restored state and exec'd grep."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 1)
            sigstate.restore_in_child(state)
            os.execvp("grep", ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
        finally:
            os._exit(127)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in out.splitlines())}


def test_the_child_gets_the_state_given_not_pythons():
    """This interpreter ignores SIGPIPE and SIGXFSZ; the child gets exactly the state asked for."""
    assert signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN
    plain = _child_status(sigstate.SignalState(frozenset(), frozenset()))
    assert plain == {"SigIgn": 0, "SigBlk": 0}
    odd = _child_status(sigstate.SignalState(frozenset({signal.SIGINT, signal.SIGHUP}),
                                             frozenset({signal.SIGUSR2})))
    assert odd == {"SigIgn": 1 << (signal.SIGINT - 1) | 1 << (signal.SIGHUP - 1),
                   "SigBlk": 1 << (signal.SIGUSR2 - 1)}


def test_remember_takes_what_the_process_was_started_with_less_pythons_own():
    code = textwrap.dedent("""
        from provtrace.tracer.capture import sigstate
        s = sigstate.remember()
        print(sorted(int(x) for x in s.ignored), sorted(int(x) for x in s.blocked))
    """)

    def started() -> None:  # whatever this test runner was given, exactly this
        sigstate.restore_in_child(sigstate.SignalState(frozenset({signal.SIGQUIT}),
                                                       frozenset({signal.SIGUSR1})))

    out = subprocess.run([sys.executable, "-c", code], preexec_fn=started, capture_output=True,
                         text=True, check=True).stdout
    assert out.split("] [") == [f"[{int(signal.SIGQUIT)}", f"{int(signal.SIGUSR1)}]\n"]


def test_exit_codes_are_the_shells():
    for cmd, want in ((["true"], 0), (["sh", "-c", "exit 3"], 3), (["sh", "-c", "kill -TERM $$"], 143),
                      (["sh", "-c", "kill -INT $$"], 130)):
        pid = os.fork()
        if pid == 0:
            try:
                sigstate.restore_in_child(sigstate.SignalState(frozenset(), frozenset()))
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        assert sigstate.exit_code(status) == want, cmd


def test_relay_passes_sigterm_on_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    proc = subprocess.Popen(["sleep", "600"])
    try:
        with sigstate.Relay(proc.pid):
            os.kill(os.getpid(), signal.SIGTERM)  # to us: the handler passes it on
            status = os.waitpid(proc.pid, 0)[1]
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert sigstate.exit_code(status) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before




def test_relay_sends_nothing_to_a_pid_that_is_not_its_child():
    """Once the command is reaped its pid may be anyone's: a pid that is not our child gets nothing."""
    shell = subprocess.Popen(["sh", "-c", 'sleep 600 & echo $!; wait $!; echo "$?"'],
                             stdout=subprocess.PIPE, text=True)
    grandchild = int(shell.stdout.readline())
    try:
        sigstate.Relay(grandchild)._forward(signal.SIGTERM, None)
    finally:
        os.kill(grandchild, signal.SIGKILL)
        died_of = int(shell.stdout.readline())
        shell.wait()
    assert died_of == 128 + signal.SIGKILL, "the relay's SIGTERM would have made it 143"
