"""KernelCells: the Tracker's cell policy for followed notebook kernels.

The Tracker asks, for every action of a process, which cell it belongs to.
For ordinary processes the answer is fixed at fork (the cell their parent
was in). For a kernel process the answer is the window that was running when
(and on which thread) the action happened, decided by CellAttributor.

Windows are added by another thread (the notebook runner's cell hooks, the
IOPub watcher, gRPC reports) while the consumer thread attributes events, so
every attributor access holds one lock.
"""

from __future__ import annotations

import logging
import threading

from ..model.processes import CellPolicy, Proc, Tracker
from .cells import CellAttributor, ThreadRecord
from ..clock import Clock
from .windows import CellWindow

log = logging.getLogger(__name__)


class KernelCells(CellPolicy):
    def __init__(self, attributor: CellAttributor | None = None) -> None:
        self.attributor = attributor or CellAttributor()
        self._lock = threading.Lock()
        self._kernels: dict[int, int] = {}  # pid -> start_ns

    def add_kernel(self, pid: int, start_ns: int) -> None:
        with self._lock:
            self._kernels[pid] = start_ns
            self.attributor.add_kernel(pid, start_ns)

    def is_kernel(self, pid: int) -> bool:
        return pid in self._kernels

    def set_window(self, window: CellWindow) -> None:
        """Adds or replaces a window (same kernel pid and msg_id)."""
        with self._lock:
            self.attributor.add_window(window)

    # -- CellPolicy -----------------------------------------------------------
    def child_cell(self, parent: Proc, tid: int, ts_ns: int) -> str | None:
        if parent.pid not in self._kernels:
            return parent.cell
        return self._at(parent.pid, tid, ts_ns)

    def action_cell(self, p: Proc, tid: int, ts_ns: int) -> str | None:
        if p.pid not in self._kernels:
            return p.cell
        return self._at(p.pid, tid, ts_ns)

    def thread_started(self, p: Proc, tid: int, ts_ns: int) -> None:
        if p.pid in self._kernels:
            with self._lock:
                self.attributor.add_thread(ThreadRecord(tid=tid, pid=p.pid, start_ns=ts_ns))

    def _at(self, pid: int, tid: int, ts_ns: int) -> str | None:
        with self._lock:
            return self.attributor.attribute(pid, tid, ts_ns).cell


def attach_kernel(tracker: Tracker, pid: int, tag: int = 0) -> Proc:
    """Seed a running kernel from /proc, with what it mapped during its untraced start-up
    (in no cell), so that the run's libraries are complete."""
    p = tracker.live.get(pid) or tracker.attach(pid, tag)
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        tracker.gaps["kernel_maps_unreadable"] = tracker.gaps.get("kernel_maps_unreadable", 0) + 1
        log.info("event=kernel-maps-unreadable pid=%d error=%s", pid, e)
        return p
    now = Clock.now_mono_ns()
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/") or fields[5].endswith(" (deleted)"):
            continue
        fa = p.access(fields[5], now, None)
        fa.access.add("map")
        if "x" in fields[1]:
            fa.mapped_exec = True
    return p
