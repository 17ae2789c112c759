"""What a traced command inherits from provtrace's signals, and what its end means to a shell.

A traced command must start as it would untraced: with the signal
dispositions and mask that `provtrace` itself was given, not Python's.
Python's start-up ignores SIGPIPE and SIGXFSZ (so that writes fail with
EPIPE/EFBIG instead of killing the interpreter), and an ignored signal
survives exec; while a command runs, provtrace also ignores ^C or catches
SIGTERM to forward it. So:

- remember() takes the state provtrace was started with, first thing in
  cli.main, before anything here changes it;
- restore_in_child() puts it back in the forked child, before exec, on every
  path (the eBPF runner, the ptrace backend, the daemon's client);
- Relay forwards SIGTERM and SIGHUP sent to provtrace alone to the command
  (^C and ^\\ typed at a terminal reach the whole foreground group, the
  command included, so provtrace only survives them there);
- exit_code() turns a wait status into the shell's $?: 128+N for death by
  signal N.

Python's start-up leaves no trace of what SIGPIPE and SIGXFSZ were before it
ignored them; they are taken as default, which is what any shell gives a
command (documented in docs/capture.md).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from ..model.status import exit_code  # noqa: F401 - one wait-status function, the model's (not events.py: start-up)

# Set to SIG_IGN by the interpreter's start-up whatever it was given.
_PYTHON_IGNORES = frozenset({signal.SIGPIPE, signal.SIGXFSZ})
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
# Sent to provtrace alone by kill(1), a supervisor or a session's end: passed on.
FORWARDED = (signal.SIGTERM, signal.SIGHUP)
# Typed at a terminal, the kernel sends these to the whole foreground group.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


@dataclass(frozen=True)
class SignalState:
    """Signal numbers ignored and blocked, as a process was started with."""

    ignored: frozenset[int]
    blocked: frozenset[int]


_at_start: SignalState | None = None


def remember() -> SignalState:
    """Take the state this process was started with; cli.main calls it first."""
    global _at_start
    if _at_start is None:
        ignored, blocked = _read_status()
        _at_start = SignalState(ignored - _PYTHON_IGNORES, blocked)
    return _at_start


def at_start() -> SignalState:
    """The remembered state (taken now when provtrace runs as a library)."""
    return remember()


def _read_status() -> tuple[frozenset[int], frozenset[int]]:
    """SigIgn and SigBlk of this thread; Python's own view when /proc is missing."""
    masks: dict[str, int] = {}
    try:
        with open("/proc/thread-self/status", "rb") as f:
            for line in f:
                key, _, value = line.partition(b":")
                if key in (b"SigIgn", b"SigBlk"):
                    masks[key.decode()] = int(value.strip(), 16)
    except (OSError, ValueError):
        pass
    valid = signal.valid_signals()
    if len(masks) < 2:
        ignored = {s for s in valid if s not in _UNCATCHABLE and signal.getsignal(s) is signal.SIG_IGN}
        return frozenset(ignored), frozenset(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    return _signals_in(masks["SigIgn"], valid), _signals_in(masks["SigBlk"], valid)


def _signals_in(mask: int, valid: set) -> frozenset[int]:
    """Bit n-1 of a /proc status mask is signal n."""
    return frozenset(s for s in valid if mask >> (int(s) - 1) & 1)


def restore_in_child(state: SignalState | None = None) -> None:
    """In the forked child, before exec: the dispositions and mask provtrace was given.

    Only SIG_IGN and SIG_DFL are set: handlers do not survive exec anyway.
    """
    state = state or at_start()
    for sig in signal.valid_signals():
        if sig in _UNCATCHABLE:
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if sig in state.ignored else signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # a signal the C library keeps for itself (SIGCANCEL, SIGSETXID)
    signal.pthread_sigmask(signal.SIG_SETMASK, state.blocked)


class Relay:
    """While the command runs, provtrace passes on the signals meant for it.

    SIGTERM and SIGHUP sent to provtrace are sent on to the command's pid.
    ^C and ^\\ at a terminal already reach the command (it is in provtrace's
    foreground process group): provtrace ignores them then, as a shell does
    while it waits, so that the command gets each one once. Not in a
    terminal's foreground (a script, `kill -INT`), they are sent on too.
    A signal provtrace was started ignoring stays ignored (nohup). Usable as
    a context manager; pid may be set after entering, once the child exists.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self._old: dict[int, object] = {}

    def __enter__(self) -> "Relay":
        ignored = at_start().ignored
        foreground = _terminal_foreground()
        for sig in (*FORWARDED, *TERMINAL_SIGNALS):
            if sig in ignored:
                continue
            quiet = sig in TERMINAL_SIGNALS and foreground
            self._old[sig] = signal.signal(sig, signal.SIG_IGN if quiet else self._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _forward(self, sig: int, _frame: object) -> None:
        if self.pid is None:
            return
        try:  # still our child (a zombie at worst)? Once reaped, the pid may be anyone's.
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass  # already gone: its exit status is on its way


def _terminal_foreground() -> bool:
    """Is provtrace in the foreground process group of its terminal?"""
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False
