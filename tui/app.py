"""The provtrace TUI: runs -> one run (cells, processes, files, context) -> lineage.

The app only shows what a RunSource (tui/source.py) answers; every source
call runs in a worker thread and comes back as a message (tui/messages.py).
The app never prints: while it owns the terminal, log records go to
Textual's log instead of stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from textual.app import App
from textual.binding import Binding
from textual.driver import Driver
from textual.drivers.linux_driver import LinuxDriver
from textual.logging import TextualHandler

from ..tracer.errors import TracerError
from .messages import StaleSeen
from .screens.runs import RunsScreen
from .source import RunSource

log = logging.getLogger(__name__)


class ProvtraceApp(App):
    TITLE = "provtrace"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, source: RunSource, driver_class: type[Driver] | None = None) -> None:
        super().__init__(driver_class=driver_class)
        self.source = source
        self.sub_title = source.description
        # pushed staleness: run id -> cell id ("" for the run itself) -> what changed
        self.stale: dict[str, dict[str, list[str]]] = {}

    def on_mount(self) -> None:
        self.run_worker(self._watch_stale, thread=True, group="stale", exit_on_error=False)
        self.push_screen(RunsScreen())

    def _watch_stale(self) -> None:
        """Blocks on the source's staleness stream; each event comes back as a message."""
        try:
            self.source.watch_stale(lambda notice: self.post_message(StaleSeen(notice)))
        except TracerError as exc:  # the daemon went away: the badges already shown stay
            log.warning("event=stale-stream-ended error=%r", str(exc))

    def stale_cells(self, run_id: str | None) -> frozenset[str]:
        return frozenset(self.stale.get(run_id or "", {}))

    def on_stale_seen(self, msg: StaleSeen) -> None:
        n = msg.notice
        marks = self.stale.setdefault(n.run_id, {})
        for cell in n.cells or ("",):
            marks.setdefault(cell, []).append(n.text)
        self.notify(f"stale: {n.text} (run {n.run_id}, {len(n.cells)} cell(s))", severity="warning")
        for screen in self.screen_stack:
            show = getattr(screen, "show_stale", None)
            if show is not None:
                show()


class TerminalSizedDriver(LinuxDriver):
    """Textual's Linux driver, sized by the terminal it draws on (stderr).

    Textual sizes the app by shutil.get_terminal_size(), which takes COLUMNS
    and LINES from the environment first, then asks stdout. A stale
    COLUMNS=80 (Python's readline exports it when imported without a
    terminal, so a tmux started from such a process hands it to every pane)
    or a piped stdout kept the app 80 columns wide in a 300-column window,
    and every resize measured the same 80 again.
    """

    def _get_terminal_size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self._file.fileno())
        except (AttributeError, ValueError, OSError):  # not a terminal: Textual's own guess
            return super()._get_terminal_size()
        return size.columns or 80, size.lines or 25


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
    app = ProvtraceApp(source, TerminalSizedDriver if os.name == "posix" else None)
    with _logs_off_the_terminal():
        app.run()
    return app.return_code or 0
