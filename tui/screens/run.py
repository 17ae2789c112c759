"""One run: summary, cells, process tree, files, resources, libraries, packages, host and GPU."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Sparkline, Static, TabbedContent, TabPane, Tree

from ...tracer.errors import TracerError
from .. import rows as R
from ..messages import HistoryLoaded, LoadFailed, RunLoaded
from ..widgets.table import FilterableTable
from ..widgets.titlebar import TitleBar
from .lineage import LineageScreen

PANES = ("summary", "cells", "processes", "files", "resources", "libraries", "packages", "host")


class RunScreen(Screen):
    DEFAULT_CSS = """
    RunScreen #status { height: 1; padding: 0 1; }
    RunScreen #panes { height: 1fr; }
    RunScreen ContentSwitcher { height: 1fr; }
    RunScreen TabPane { height: 1fr; padding: 0; }
    RunScreen .spark { height: 2; margin: 0 1 1 1; }
    RunScreen .spark-caption { height: 1; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("tab", "switch_pane(1)", "Next pane"),
        Binding("shift+tab", "switch_pane(-1)", "Prev pane", show=False),
        Binding("l", "lineage", "Lineage"),
        Binding("a", "all_files", "All files"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.doc: dict | None = None
        self.all_files = False

    def compose(self) -> ComposeResult:
        yield TitleBar(f"provtrace — run {R.printable(self.run_id)} — "
                       f"{R.printable(self.app.source.description)}")
        yield Static(f"loading run {self.run_id}…", id="status", markup=False)
        with TabbedContent(id="panes"):
            with TabPane("Run", id="summary"):
                yield VerticalScroll(Static("", id="summary-text", markup=False))
            with TabPane("Cells", id="cells"):
                yield FilterableTable(R.CELL_COLUMNS, "no cells recorded (a command run has none)",
                                      id="cells-table")
            with TabPane("Processes", id="processes"):
                yield Tree("processes", id="proc-tree")
            with TabPane("Files", id="files"):
                yield FilterableTable(R.FILE_COLUMNS, "no data files recorded (a shows all kinds)",
                                      id="files-table")
            with TabPane("Resources", id="resources"):
                with VerticalScroll(id="resources-scroll"):
                    yield Static("", id="resources-text", markup=False)
                    yield Static("across runs: loading…", id="history-text", markup=False)
                    for key, _title in R.RESOURCE_SERIES:
                        yield Static("", id=f"caption-{key}", classes="spark-caption", markup=False)
                        yield Sparkline([], id=f"spark-{key}", classes="spark")
            with TabPane("Libraries", id="libraries"):
                yield FilterableTable(R.LIBRARY_COLUMNS, "no libraries recorded", id="libraries-table")
            with TabPane("Packages", id="packages"):
                yield FilterableTable(R.PACKAGE_COLUMNS, "no packages recorded", id="packages-table")
            with TabPane("Host & GPU", id="host"):
                yield VerticalScroll(Static("", id="host-text", markup=False))
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._fetch, thread=True, exclusive=True, group="run")

    def _fetch(self) -> None:
        try:
            doc = self.app.source.load_run(self.run_id)
            self.post_message(RunLoaded(self.run_id, doc))
            self.post_message(HistoryLoaded(self.run_id, self.app.source.job_history(doc)))
        except TracerError as exc:
            self.post_message(LoadFailed(f"run {self.run_id}", str(exc)))

    def on_load_failed(self, msg: LoadFailed) -> None:
        self.query_one("#status", Static).update(f"cannot load {msg.what}: {msg.error}")

    def on_run_loaded(self, msg: RunLoaded) -> None:
        doc = self.doc = msg.doc
        self.query_one("#status", Static).update(R.run_title(doc))
        self.query_one("#summary-text", Static).update("\n".join(R.run_lines(doc)))
        self.show_stale()
        self._fill_tree(R.process_tree(doc))
        self._fill_files()
        self.query_one("#libraries-table", FilterableTable).set_rows(R.library_rows(doc))
        self.query_one("#packages-table", FilterableTable).set_rows(R.package_rows(doc))
        self.query_one("#host-text", Static).update("\n".join(R.host_lines(doc)))
        self.query_one("#resources-text", Static).update(
            "\n".join(R.resource_lines(doc) + [""] + R.resource_bars(doc)))
        notebook = doc["run"].get("kind") in ("notebook", "session") or bool(doc.get("cells"))
        self._show("cells" if notebook else "files")

    def show_stale(self) -> None:
        """Cells with the stale badge, and what changed on the status line."""
        if self.doc is None:
            return
        run_id = self.doc["run"].get("id")
        self.query_one("#cells-table", FilterableTable).set_rows(
            R.cell_rows(self.doc, self.app.stale_cells(run_id)))
        marks = self.app.stale.get(run_id or "", {})
        if marks:
            latest = [t for texts in marks.values() for t in texts][-1]
            self.query_one("#status", Static).update(
                f"{R.run_title(self.doc)}   {R.STALE_BADGE}: {R.printable(latest)}")

    def on_history_loaded(self, msg: HistoryLoaded) -> None:
        """Sparklines of the job's latest runs, one per metric."""
        n = len(msg.history)
        self.query_one("#history-text", Static).update(
            f"across runs: {n} runs of this job (oldest to newest)" if n > 1 else
            "across runs: this is the only recorded run of this job")
        series = R.history_series(msg.history)
        for key, title in R.RESOURCE_SERIES:
            self.query_one(f"#caption-{key}", Static).update(R.history_caption(msg.history, key, title))
            self.query_one(f"#spark-{key}", Sparkline).data = series[key] if n > 1 else []

    def _fill_tree(self, items: list[R.TreeItem]) -> None:
        tree = self.query_one("#proc-tree", Tree)
        tree.clear()
        tree.root.set_label(Text(f"{len((self.doc or {}).get('processes') or [])} processes"))
        stack = [(tree.root, item) for item in reversed(items)]
        while stack:  # no recursion: process chains can be deep
            parent, item = stack.pop()
            node = parent.add(Text(item.label), expand=True) if item.children else \
                parent.add_leaf(Text(item.label))
            stack.extend((node, child) for child in reversed(item.children))
        tree.root.expand()

    def _fill_files(self) -> None:
        self.query_one("#files-table", FilterableTable).set_rows(R.file_rows(self.doc or {}, self.all_files))

    def _show(self, pane: str) -> None:
        self.query_one("#panes", TabbedContent).active = pane
        self._focus_pane(pane)

    def _focus_pane(self, pane: str) -> None:
        target = {"cells": "#cells-table RowTable", "files": "#files-table RowTable",
                  "libraries": "#libraries-table RowTable", "packages": "#packages-table RowTable",
                  "processes": "#proc-tree", "resources": "#resources-scroll"}.get(pane)
        if target:
            self.query_one(target).focus()

    def action_switch_pane(self, step: int) -> None:
        tabs = self.query_one("#panes", TabbedContent)
        self._show(PANES[(PANES.index(tabs.active) + step) % len(PANES)])

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._focus_pane(event.pane.id or "")

    def action_all_files(self) -> None:
        self.all_files = not self.all_files
        self._fill_files()
        self.notify("showing all file kinds" if self.all_files else "showing data and temp files")

    def action_lineage(self) -> None:
        files = self.query_one("#files-table", FilterableTable)
        key = files.current_key()
        if self.doc is None or key is None or self.query_one("#panes", TabbedContent).active != "files":
            self.notify("pick a file in the Files pane first", severity="warning")
            return
        self.app.push_screen(LineageScreen(R.file_path(self.doc, key)))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        key = str(event.row_key.value)
        if key.startswith("file-"):
            self.action_lineage()
        elif key.startswith("cell-") and self.doc is not None:
            # enter on a cell: its files, by filtering the Files pane on its id
            cell = self.doc["cells"][int(key.removeprefix("cell-"))]
            self.all_files = True
            self._fill_files()
            self.query_one("#files-table", FilterableTable).set_filter(R.printable(cell.get("id")))
            self._show("files")
