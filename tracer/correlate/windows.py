"""A cell window: one execute_request's busy period on one kernel.

Windows come from IOPub (status busy/idle, execute_input, error), from gRPC
reports, or from the notebook runner. Times are CLOCK_MONOTONIC ns (see
clock.py); a window is closed [start_ns, end_ns], open-ended while running.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

RUNNING = "running"
OK = "ok"
ERROR = "error"
DIED = "died"  # end_reason when the kernel died mid-cell (status is ERROR)


@dataclass(frozen=True)
class CellWindow:
    kernel_pid: int
    msg_id: str
    start_ns: int
    end_ns: int | None = None
    cell_id: str | None = None
    execution_count: int | None = None
    code_sha256: str | None = None
    status: str = RUNNING
    end_reason: str | None = None
    error_name: str | None = None
    subshell_id: str | None = None
    # The kernel thread that executes this request, when a reporter knows it.
    tid: int | None = None
    # True when the busy message was missed (the observer joined mid-cell):
    # start_ns is then only the first time the window was seen.
    partial: bool = False

    @property
    def key(self) -> str:
        """The cell id when known, otherwise the execute_request msg_id."""
        return self.cell_id or self.msg_id

    def contains(self, ts_ns: int) -> bool:
        """Closed interval: an event at exactly start_ns or end_ns is inside."""
        return self.start_ns <= ts_ns and (self.end_ns is None or ts_ns <= self.end_ns)

    def replace(self, **changes: object) -> "CellWindow":
        return dataclasses.replace(self, **changes)
