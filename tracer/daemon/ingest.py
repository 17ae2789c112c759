"""Feeds what the kernel follower sees into the sessions (the IOPub path).

Windows become cell start/end reports with source "iopub"; monotonic times
become UTC through the one Clock. Reports from provisioners and the notebook
runner merge with these in the store (same msg_id).
"""

from __future__ import annotations

import logging
import pwd

from ..clock import Clock, default_clock
from ..correlate.kernels import DiscoveredKernel
from ..correlate.windows import RUNNING, CellWindow
from ..errors import ProcessError
from ..serve.auth import start_time_ns
from ..serve.backend import SessionWrites
from ..serve.records import CellEndReport, CellStartReport

log = logging.getLogger(__name__)


class StoreSink:
    """A FollowerSink (correlate/follower.py) that writes to the sessions (SessionWrites)."""

    def __init__(self, store: SessionWrites, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or default_clock()

    def kernel_found(self, kernel: DiscoveredKernel) -> str:
        try:
            user = pwd.getpwuid(kernel.uid).pw_name
        except KeyError:
            user = None
        try:
            start_ns = start_time_ns(kernel.pid)
        except ProcessError:
            start_ns = 0  # gone already; the watcher will notice and close the session
        record = self.store.register_kernel(
            pid=kernel.pid, pid_start_ns=start_ns, uid=kernel.uid, user=user,
            connection_file=kernel.connection_file, notebook_path=None,
            kernel_name=kernel.connection.kernel_name if kernel.connection else None,
            language=kernel.language, session_id=None,
        )
        return record.session_id

    def window_changed(self, session_id: str, window: CellWindow) -> None:
        self.store.cell_start(CellStartReport(
            session_id=session_id, source="iopub", msg_id=window.msg_id,
            execution_count=window.execution_count, code_sha256=window.code_sha256,
            started=self.clock.mono_ns_to_utc(window.start_ns), subshell_id=window.subshell_id,
        ))
        if window.end_ns is not None and window.status != RUNNING:
            self.store.cell_end(CellEndReport(
                session_id=session_id, source="iopub", status=window.status, msg_id=window.msg_id,
                execution_count=window.execution_count, ended=self.clock.mono_ns_to_utc(window.end_ns),
                end_reason=window.end_reason, error_name=window.error_name,
            ))

    def kernel_gone(self, session_id: str) -> None:
        self.store.end_session(session_id)
