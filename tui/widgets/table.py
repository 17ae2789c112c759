"""A row table with a filter line: every list in the TUI is one of these.

Rows arrive as (key, tuple of str) from tui/rows.py and are shown as rich
Text, never as markup: a file named "[red]x" must show as it is.

Column widths are computed here from all rows, not left to DataTable's
auto width: refilled after its first paint, DataTable kept drawing some
rows at the old (header) widths until they were repainted, seen in tmux.
Fixed widths also keep columns still while a filter narrows the rows.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable, Input, Static


MAX_COLUMN_WIDTH = 100


class RowTable(DataTable):
    # Shown in the footer: DataTable binds enter too, but hides it.
    BINDINGS = [Binding("enter", "select_cursor", "Open")]


class FilterInput(Input):
    BINDINGS = [Binding("escape", "cancel", "Clear filter")]

    class Cancelled(Message):
        pass

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled())


class FilterableTable(Vertical):
    """RowTable + a filter line (shown by "/") + a line for the empty state."""

    DEFAULT_CSS = """
    FilterableTable { height: 1fr; }
    FilterableTable > RowTable { height: 1fr; }
    FilterableTable > FilterInput { display: none; }
    FilterableTable > FilterInput.-active { display: block; }
    FilterableTable > .empty { display: none; padding: 1 2; color: $text-muted; }
    FilterableTable > .empty.-active { display: block; }
    """
    BINDINGS = [Binding("slash", "filter", "Filter")]

    def __init__(self, columns: tuple[str, ...], empty: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = columns
        self.empty_text = empty
        self.rows: list[tuple[str, tuple[str, ...]]] = []
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        yield RowTable(cursor_type="row", zebra_stripes=True)
        yield Static(self.empty_text, classes="empty", markup=False)
        yield FilterInput(placeholder="filter: type to narrow, enter keeps it, escape clears")

    def on_mount(self) -> None:
        self._set_columns()

    def _set_columns(self) -> None:
        widths = [cell_len(c) for c in self.columns]
        for _key, row in self.rows:
            widths = [max(w, cell_len(cell)) for w, cell in zip(widths, row)]
        self.table.clear(columns=True)
        for label, width in zip(self.columns, widths):
            self.table.add_column(label, width=min(width, MAX_COLUMN_WIDTH))

    @property
    def table(self) -> RowTable:
        return self.query_one(RowTable)

    def set_rows(self, rows: list[tuple[str, tuple[str, ...]]]) -> None:
        self.rows = rows
        self._set_columns()
        self._refill()

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        box = self.query_one(FilterInput)
        box.value = text
        box.set_class(bool(text), "-active")
        self._refill()

    def visible_keys(self) -> list[str]:
        return [str(k.value) for k in self.table.rows]

    def current_key(self) -> str | None:
        t = self.table
        if t.row_count == 0:
            return None
        return str(t.coordinate_to_cell_key(Coordinate(t.cursor_row, 0)).row_key.value)

    def _refill(self) -> None:
        t = self.table
        t.clear()
        needle = self.filter_text.casefold()
        for key, row in self.rows:
            if not needle or any(needle in cell.casefold() for cell in row):
                t.add_row(*(Text(cell) for cell in row), key=key)
        empty = self.query_one(".empty", Static)
        if not self.rows:
            empty.update(self.empty_text)
        elif t.row_count == 0:
            empty.update(f"no rows match {self.filter_text!r} (escape clears the filter)")
        empty.set_class(t.row_count == 0, "-active")

    def action_filter(self) -> None:
        box = self.query_one(FilterInput)
        box.add_class("-active")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter_text = event.value
        self._refill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not event.value:
            event.input.remove_class("-active")
        self.table.focus()

    def on_filter_input_cancelled(self, event: FilterInput.Cancelled) -> None:
        event.stop()
        self.set_filter("")
        self.table.focus()
