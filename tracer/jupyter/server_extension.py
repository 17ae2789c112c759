"""The jupyter_server extension `provtrace.tracer.jupyter`.

Enable it with
    jupyter server --ServerApp.jpserver_extensions='{"provtrace.tracer.jupyter": true}'
or once, in jupyter_server_config.py, with
    c.ServerApp.jpserver_extensions.update({"provtrace.tracer.jupyter": True})
(`jupyter server extension enable` refuses a package that ships no config
JSON.) When loaded it makes the server's kernel websockets ProvtraceKernelConnection
(which reports cells to the daemon) and gives them one CellReporter. A
server configured with another websocket connection class (a gateway, a
custom class) is left as it is, with a warning.
"""

from __future__ import annotations

import atexit
import logging

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

from .connection import REPORTER_SETTING, ProvtraceKernelConnection
from .reporter import CellReporter, resolve_socket

log = logging.getLogger(__name__)

CONNECTION_SETTING = "kernel_websocket_connection_class"


def _load_jupyter_server_extension(serverapp) -> None:
    settings = serverapp.web_app.settings
    current = settings.get(CONNECTION_SETTING)
    # the websocket handler reads this setting for each new connection, so
    # replacing it after the web app exists takes effect for every kernel
    if current is ZMQChannelsWebsocketConnection:
        settings[CONNECTION_SETTING] = ProvtraceKernelConnection
    elif not (isinstance(current, type) and issubclass(current, ProvtraceKernelConnection)):
        serverapp.log.warning("provtrace: kernel websocket connection class is %s, not jupyter_server's "
                              "default; cells will not be reported to the daemon", current)
        return
    _log_to(serverapp.log)
    reporter = CellReporter(resolve_socket())
    settings[REPORTER_SETTING] = reporter
    # jupyter_server has no unload hook for a module extension: reports still
    # queued when the server stops are sent (bounded by the reporter's timeout)
    atexit.register(reporter.close)
    serverapp.log.info("provtrace: reporting notebook cells to the daemon at %s", reporter.socket_path)


def _log_to(server_log: logging.Logger) -> None:
    """This package's records (the provisioner's too) go to the server's log, at its level."""
    ours = logging.getLogger(__package__)
    for handler in server_log.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.setLevel(server_log.level)
    ours.propagate = bool(not ours.handlers)  # the server has no handlers: keep Python's default
