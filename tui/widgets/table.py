"""A row table with a filter line: every list in the TUI is one of these.

Rows arrive as (key, tuple of str) from tui/rows.py and are shown as rich
Text, never as markup: a file named "[red]x" must show as it is.

Column widths are computed here from all rows, not left to DataTable's
auto width: refilled after its first paint, DataTable kept drawing some
rows at the old (header) widths until they were repainted, seen in tmux.
Fixed widths also keep columns still while a filter narrows the rows.

A column is as wide as its longest line while the table fits its room (the
terminal, in every screen), so a wide terminal shows whole paths. When it
does not fit, the widest columns share what room is left, but none is cut
below COLUMN_FLOOR: a narrow terminal scrolls sideways. The room is measured
again when the table is resized. A line that is still cut ends in "…".

A cell holding a list (rows.py puts one item per line) shows at most
CELL_LINES lines, the last one saying how many more there are; the filter
still searches all of them.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable, Input, Static


COLUMN_FLOOR = 100  # a column is never cut narrower than this (a narrow terminal scrolls)
CELL_LINES = 4  # lines of a list cell shown in its row


def fit_widths(natural: list[int], room: int, floor: int = COLUMN_FLOOR) -> list[int]:
    """Widths for columns whose longest lines are natural cells wide, in room cells.

    All of them whole if they fit. Otherwise the narrow columns keep their width
    and the wide ones share what is left equally, but none is cut below floor."""
    if sum(natural) <= room:
        return list(natural)
    left, cap = room, floor
    for i, width in enumerate(sorted(natural)):
        share = left // (len(natural) - i)
        if width > share:
            cap = max(share, floor)
            break
        left -= width
    return [min(width, cap) for width in natural]


def shown_lines(cell: str) -> list[str]:
    """The lines of a cell as its row shows them: a long list ends in "… N more"."""
    lines = cell.split("\n")
    if len(lines) <= CELL_LINES:
        return lines
    return lines[:CELL_LINES - 1] + [f"… {len(lines) - CELL_LINES + 1} more"]


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
        self.room = 0  # the room the columns were fitted to

    def compose(self) -> ComposeResult:
        yield RowTable(cursor_type="row", zebra_stripes=True)
        yield Static(self.empty_text, classes="empty", markup=False)
        yield FilterInput(placeholder="filter: type to narrow, enter keeps it, escape clears")

    def on_mount(self) -> None:
        self._set_columns()

    def on_resize(self, event: events.Resize) -> None:
        # a wider or narrower terminal, or a pane shown for the first time
        if self._room() != self.room:
            row = self.table.cursor_row
            self._set_columns()
            self._refill()
            self.table.move_cursor(row=row)

    def _room(self) -> int:
        """Cells the columns' texts may take: the table's width (the app's while a
        hidden pane has none) less the cells' padding and a vertical scrollbar."""
        t = self.table
        width = t.size.width or self.size.width or self.app.size.width
        return width - t.styles.scrollbar_size_vertical - 2 * t.cell_padding * len(self.columns)

    def _set_columns(self) -> None:
        widths = [cell_len(c) for c in self.columns]
        for _key, row in self.rows:
            widths = [max(w, *map(cell_len, shown_lines(cell))) for w, cell in zip(widths, row)]
        self.room = self._room()
        self.table.clear(columns=True)
        for label, width in zip(self.columns, fit_widths(widths, self.room)):
            self.table.add_column(label, width=width)

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
                shown = [shown_lines(cell) for cell in row]
                t.add_row(*(Text("\n".join(lines), no_wrap=True, overflow="ellipsis") for lines in shown),
                          key=key, height=max(map(len, shown), default=1))
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
