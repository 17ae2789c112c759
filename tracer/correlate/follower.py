"""Follows every kernel on the host: discovery -> one IOPub watcher per kernel -> a sink.

The daemon calls scan_once() periodically (tracer/daemon/main.py, in a guarded loop). New
kernels are handed to the sink (which returns their session id) and
watched; each window change goes to the sink; a kernel that died or
vanished is closed in the sink and forgotten. Only kernels whose connection
file is provably theirs (their uid's file, read as that uid, every port held
by that pid: see kernels.py) are probed, and their ports are checked again
right before the first message: IRkernel exits on a message signed with a
wrong key, and the daemon sends nothing to a port its kernel does not hold.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterable, Protocol

from ..errors import TracerError
from ..fds import fds_to_spare
from ..clock import Clock, default_clock
from .iopub import IOPubError, IOPubWatcher
from .kernels import DiscoveredKernel, Discovery, KernelDiscovery, still_holds_ports
from .windows import CellWindow

log = logging.getLogger(__name__)

WATCHER_FDS = 64  # free fds needed to start one IOPub watcher (zmq context, sockets, epoll, signalers)


class FollowerSink(Protocol):
    def kernel_found(self, kernel: DiscoveredKernel) -> str:
        """Records a newly seen kernel; returns its session id."""
        ...

    def window_changed(self, session_id: str, window: CellWindow) -> None: ...

    def kernel_gone(self, session_id: str) -> None: ...


class KernelFollower:
    def __init__(self, sink: FollowerSink, dirs: Iterable[Path] | None = None, uid: int | None = None,
                 clock: Clock | None = None, ready_timeout_s: float = 10.0,
                 poll_interval_s: float = 0.5) -> None:
        self.sink = sink
        self.discovery = KernelDiscovery(dirs, uid)
        self.clock = clock or default_clock()
        self.ready_timeout_s = ready_timeout_s
        self.poll_interval_s = poll_interval_s
        self._followed: dict[tuple[int, float], tuple[str, IOPubWatcher]] = {}
        self._refused: set[tuple[int, float]] = set()
        self._lock = threading.Lock()
        self._fd_warned = -60.0

    @property
    def sessions(self) -> dict[int, str]:
        """Kernel pid -> session id, for the kernels followed now."""
        with self._lock:
            return {pid: sid for (pid, _), (sid, _) in self._followed.items()}

    def scan_once(self) -> Discovery:
        found = self.discovery.scan()
        alive = {(k.pid, k.create_time) for k in found.kernels}
        for kernel in found.kernels:
            key = (kernel.pid, kernel.create_time)
            if key not in self._followed and key not in self._refused:
                self._follow(kernel)
        with self._lock:
            gone = [k for k, (_, w) in self._followed.items() if k not in alive or w.died or not w.running]
        for key in gone:
            self._forget(key)
        return found

    def close(self) -> None:
        with self._lock:
            keys = list(self._followed)
        for key in keys:
            self._forget(key)

    def _follow(self, kernel: DiscoveredKernel) -> None:
        key = (kernel.pid, kernel.create_time)
        if kernel.connection is None:
            self._refused.add(key)  # discovery already recorded why
            return
        if not fds_to_spare(WATCHER_FDS):
            # libzmq aborts the process when it cannot make its own fds: wait
            # for fds to come back and try at a later scan.
            now = time.monotonic()
            if now - self._fd_warned >= 60.0:
                self._fd_warned = now
                log.warning("event=kernel-follow-deferred pid=%d reason=too-few-free-fds", kernel.pid)
            return
        why = still_holds_ports(kernel)
        if why is not None:  # nothing is sent to a port the kernel does not hold now
            log.warning("event=kernel-not-followed pid=%d reason=%r", kernel.pid, why)
            return  # not refused for good: the next scan proves it again, or drops it
        session_id = self.sink.kernel_found(kernel)
        watcher = IOPubWatcher(kernel.connection, kernel.pid, clock=self.clock,
                               poll_interval_s=self.poll_interval_s,
                               on_window=lambda w, sid=session_id: self.sink.window_changed(sid, w))
        try:
            watcher.start(self.ready_timeout_s)
        except IOPubError as exc:
            # The kernel lives on and stays traced (its events land in no cell
            # unless a provisioner/extension reports its cells): its session is
            # ended when the process is gone (the daemon's reap), not here.
            log.warning("event=kernel-not-followed pid=%d session=%s reason=%r", kernel.pid, session_id, str(exc))
            self._refused.add(key)
            return
        with self._lock:
            self._followed[key] = (session_id, watcher)
        log.info("event=kernel-followed pid=%d language=%s session=%s", kernel.pid, kernel.language, session_id)

    def _forget(self, key: tuple[int, float]) -> None:
        with self._lock:
            entry = self._followed.pop(key, None)
        if entry is None:
            return
        session_id, watcher = entry
        watcher.stop()
        try:
            self.sink.kernel_gone(session_id)
        except TracerError as exc:
            log.warning("event=kernel-gone-failed session=%s error=%r", session_id, str(exc))
        log.info("event=kernel-unfollowed pid=%d session=%s", key[0], session_id)
