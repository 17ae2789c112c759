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

from ..tracer.errors import TracerError
from .messages import StaleSeen
from .screens.runs import RunsScreen
from .source import RunSource

log = logging.getLogger(__name__)


class ProvtraceApp(App):
    TITLE = "provtrace"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, source: RunSource) -> None:
        super().__init__()
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
