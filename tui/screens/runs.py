"""The first screen: every run and session the source holds."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ...tracer.errors import TracerError
from .. import rows as R
from ..messages import LoadFailed, RunsLoaded
from ..widgets.table import FilterableTable
from ..widgets.titlebar import TitleBar
from .run import RunScreen


class RunsScreen(Screen):
    DEFAULT_CSS = "RunsScreen #status { height: 1; padding: 0 1; }"
    BINDINGS = [Binding("r", "reload", "Reload")]

    runs: list = []

    def compose(self) -> ComposeResult:
        yield TitleBar(f"provtrace — runs — {R.printable(self.app.source.description)}")
        yield Static("loading runs…", id="status", markup=False)
        yield FilterableTable(R.RUN_COLUMNS, R.empty_runs_text(self.app.source.description), id="runs")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self._fetch, thread=True, exclusive=True, group="runs")

    def _fetch(self) -> None:
        try:
            self.post_message(RunsLoaded(self.app.source.list_runs()))
        except TracerError as exc:
            self.post_message(LoadFailed("runs", str(exc)))

    def on_runs_loaded(self, msg: RunsLoaded) -> None:
        self.runs = msg.runs
        self._fill()
        self.query_one("#status", Static).update(
            f"{len(msg.runs)} runs in {R.printable(self.app.source.description)}")
        self.query_one("#runs", FilterableTable).table.focus()

    def _fill(self) -> None:
        table = self.query_one("#runs", FilterableTable)
        # newest first: the run just traced is the one most often wanted
        table.set_rows([(r.id, R.run_row(r, r.id in self.app.stale)) for r in reversed(self.runs)])

    def show_stale(self) -> None:
        """A pushed staleness event: badges on the runs it names (a run not listed yet: reload)."""
        if any(run_id not in {r.id for r in self.runs} for run_id in self.app.stale):
            self.action_reload()
        else:
            self._fill()

    def on_load_failed(self, msg: LoadFailed) -> None:
        self.query_one("#status", Static).update(f"cannot load {msg.what}: {msg.error}")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.app.push_screen(RunScreen(str(event.row_key.value)))
