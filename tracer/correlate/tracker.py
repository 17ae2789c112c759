"""IOPub messages -> cell windows, as a pure state machine.

Keyed by the parent header's msg_id (the execute_request), so several
windows of one kernel may be open at once (ipykernel 7 subshells):
- status busy, parent execute_request: opens a window;
- execute_input: fills code sha256 and execution_count;
- error: marks the window status error (ename kept);
- status idle: closes it (ok unless an error was seen);
- the kernel's death: closes every open window, status error, reason died.
Only the language-agnostic protocol is used: IRkernel's display_data in
place of execute_result, for instance, makes no difference here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any, Mapping

from ..clock import Clock, default_clock
from .windows import DIED, ERROR, OK, CellWindow

log = logging.getLogger(__name__)


class WindowTracker:
    def __init__(self, kernel_pid: int, clock: Clock | None = None) -> None:
        self.kernel_pid = kernel_pid
        self.clock = clock or default_clock()
        self._open: dict[str, CellWindow] = {}
        self._closed: list[CellWindow] = []
        self._errored: set[str] = set()

    @property
    def open_windows(self) -> list[CellWindow]:
        return list(self._open.values())

    @property
    def closed_windows(self) -> list[CellWindow]:
        return list(self._closed)

    def on_message(self, msg: Mapping[str, Any], recv_ns: int) -> CellWindow | None:
        """Feeds one deserialized IOPub message; returns the window it changed, if any."""
        header = msg.get("header") or {}
        parent = msg.get("parent_header") or {}
        msg_type = header.get("msg_type") or msg.get("msg_type")
        parent_id = parent.get("msg_id")
        if not parent_id or parent.get("msg_type") not in (None, "execute_request"):
            return None
        content = msg.get("content") or {}
        ts_ns = self._ts_ns(header.get("date"), recv_ns)
        if msg_type == "status":
            state = content.get("execution_state")
            if state == "busy" and parent.get("msg_type") == "execute_request":
                return self._open_window(parent_id, parent, ts_ns, partial=False)
            if state == "idle":
                return self._close(parent_id, parent, ts_ns)
            return None
        if msg_type == "execute_input":
            window = self._ensure(parent_id, parent, ts_ns)
            code = content.get("code")
            count = content.get("execution_count")
            window = window.replace(
                code_sha256=hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
                if isinstance(code, str) else window.code_sha256,
                execution_count=count if isinstance(count, int) else window.execution_count,
            )
            self._open[parent_id] = window
            return window
        if msg_type == "error":
            window = self._ensure(parent_id, parent, ts_ns)
            self._errored.add(parent_id)
            ename = content.get("ename")
            window = window.replace(status=ERROR, error_name=ename if isinstance(ename, str) else None)
            self._open[parent_id] = window
            return window
        return None

    def on_kernel_died(self, ts_ns: int) -> list[CellWindow]:
        """Closes every open window: a kernel killed mid-cell never sends idle."""
        closed = []
        for msg_id in list(self._open):
            window = self._open.pop(msg_id).replace(end_ns=ts_ns, status=ERROR, end_reason=DIED)
            self._closed.append(window)
            closed.append(window)
        return closed

    # -- internals -----------------------------------------------------------
    def _open_window(self, msg_id: str, parent: Mapping[str, Any], ts_ns: int, partial: bool) -> CellWindow:
        window = self._open.get(msg_id)
        if window is None:
            window = CellWindow(
                kernel_pid=self.kernel_pid, msg_id=msg_id, start_ns=ts_ns,
                subshell_id=_str_or_none(parent.get("subshell_id")), partial=partial,
            )
            self._open[msg_id] = window
        return window

    def _ensure(self, msg_id: str, parent: Mapping[str, Any], ts_ns: int) -> CellWindow:
        window = self._open.get(msg_id)
        if window is None:
            log.info("event=window-joined-late kernel_pid=%d msg_id=%s", self.kernel_pid, msg_id)
            window = self._open_window(msg_id, parent, ts_ns, partial=True)
        return window

    def _close(self, msg_id: str, parent: Mapping[str, Any], ts_ns: int) -> CellWindow | None:
        window = self._open.pop(msg_id, None)
        if window is None:
            if parent.get("msg_type") != "execute_request":
                return None
            window = CellWindow(kernel_pid=self.kernel_pid, msg_id=msg_id, start_ns=ts_ns, partial=True,
                                subshell_id=_str_or_none(parent.get("subshell_id")))
        status = ERROR if msg_id in self._errored else OK
        self._errored.discard(msg_id)
        window = window.replace(end_ns=max(ts_ns, window.start_ns), status=status)
        self._closed.append(window)
        return window

    def _ts_ns(self, date: object, recv_ns: int) -> int:
        """The message's own time (its header date) on the monotonic clock."""
        try:
            if isinstance(date, dt.datetime):
                ts_ns = self.clock.utc_to_mono_ns(date)
            elif isinstance(date, str):
                ts_ns = self.clock.iso_to_mono_ns(date)
            else:
                return recv_ns
        except ValueError:
            return recv_ns
        # A header from the future means a skewed clock; never trust it past receipt.
        return min(ts_ns, recv_ns)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
