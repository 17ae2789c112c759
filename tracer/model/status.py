"""A wait status as a shell's exit code: the one function for it.

Its own module, apart from the event dataclasses in events.py, so that the
daemon's client (`provtrace run` through the daemon, start-up target 150 ms)
gets it without building them.
"""

from __future__ import annotations

import os


def exit_code(status: int) -> int:
    """A wait status as a shell's $?: the exit status, or 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
