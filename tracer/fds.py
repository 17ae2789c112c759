"""How many file descriptors this process may still open.

The daemon checks before work that needs several at once and that would fail
badly without them: libzmq aborts the whole process when it cannot create its
internal epoll or signaler fds, so a kernel is not followed until enough fds
are free, and the socket proxy admits no connection that would eat into them.
"""

from __future__ import annotations

import os
import resource


def fds_to_spare(n: int) -> bool:
    """Are at least n file descriptors still free under RLIMIT_NOFILE?"""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return True
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return False  # could not even list them: we are out
    return soft - in_use >= n
