"""The provtrace TUI: runs -> one run (cells, processes, files, context) -> lineage.

The app only shows what a RunSource (tui/source.py) answers; every source
call runs in a worker thread and comes back as a message (tui/messages.py).
The app never prints: while it owns the terminal, log records go to
Textual's log instead of stderr.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from textual.app import App
from textual.binding import Binding
from textual.logging import TextualHandler

from .screens.runs import RunsScreen
from .source import RunSource


class ProvtraceApp(App):
    TITLE = "provtrace"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, source: RunSource) -> None:
        super().__init__()
        self.source = source
        self.sub_title = source.description

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())


@contextlib.contextmanager
def _logs_off_the_terminal() -> Iterator[None]:
    """Route root log handlers to Textual's log: a stderr line would tear the screen."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [TextualHandler()]
    try:
        yield
    finally:
        root.handlers = saved


def run_tui(source: RunSource) -> int:
    """Runs the app on source until the user quits; returns the exit status."""
    app = ProvtraceApp(source)
    with _logs_off_the_terminal():
        app.run()
    return app.return_code or 0
