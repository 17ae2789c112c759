"""ProvtraceKernelConnection: jupyter_server's kernel websocket connection that
also reports each execute_request (ReportCellStart: msg_id, JupyterLab's
`metadata.cellId`, sha256 of the code) and its execute_reply (ReportCellEnd:
status, execution_count) to the daemon.

Messages flow exactly as in the parent class: reading them never changes,
delays or drops one, and reporting is a queue put (CellReporter sends from
its own thread).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

from . import messages
from .kernels import facts_of
from .reporter import CellEnd, CellReporter, CellStart

log = logging.getLogger(__name__)

REPORTER_SETTING = "provtrace_reporter"  # key in the tornado application's settings
MAX_PENDING = 10000  # execute_requests awaiting a reply, per connection


class ProvtraceKernelConnection(ZMQChannelsWebsocketConnection):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # msg_id -> cellId of the execute_requests this connection sent and saw no reply to
        self._pending: OrderedDict[str, str | None] = OrderedDict()

    def handle_incoming_message(self, incoming_msg: str) -> None:
        reporter = self._reporter()
        if reporter is not None and self.channels and self._may_execute():
            start = messages.execute_request(incoming_msg, self.subprotocol, self.session.unpack)
            if start is not None:
                self._report(reporter, start)
        super().handle_incoming_message(incoming_msg)

    def handle_outgoing_message(self, stream: Any, outgoing_msg: list[Any]) -> None:
        reporter = self._reporter()
        channel = stream if isinstance(stream, str) else getattr(stream, "channel", None)
        if reporter is not None and channel == "shell" and self._pending:
            end = messages.execute_reply(outgoing_msg, self.session.unpack)
            if end is not None and end.msg_id in self._pending:
                cell_id = self._pending.pop(end.msg_id)
                self._report(reporter, dataclasses.replace(end, cell_id=cell_id))
        super().handle_outgoing_message(stream, outgoing_msg)

    def _may_execute(self) -> bool:
        """False when the server is configured to drop execute_requests (the parent ignores them)."""
        allowed = self.multi_kernel_manager.allowed_message_types
        return not allowed or "execute_request" in allowed

    def _reporter(self) -> CellReporter | None:
        handler = self.websocket_handler
        return handler.settings.get(REPORTER_SETTING) if handler is not None else None

    def _report(self, reporter: CellReporter, item: CellStart | CellEnd) -> None:
        kernel = facts_of(self.kernel_manager)
        if kernel is None:
            log.debug("event=no-kernel-pid kernel=%s msg_id=%s", self.kernel_id, item.msg_id)
            return
        if isinstance(item, CellStart):
            self._pending[item.msg_id] = item.cell_id
            while len(self._pending) > MAX_PENDING:  # requests a dead kernel never answered
                self._pending.popitem(last=False)
        reporter.report(kernel, item)
