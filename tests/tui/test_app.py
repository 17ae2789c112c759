"""The app under Pilot on real SQLite stores: runs -> run -> files -> lineage, cells, empty store."""

from __future__ import annotations

import pytest

from provtrace.tui.app import ProvtraceApp
from provtrace.tui.screens.lineage import LineageScreen
from provtrace.tui.screens.run import RunScreen
from provtrace.tui.screens.runs import RunsScreen
from provtrace.tui.source import StoreSource
from provtrace.tui.widgets.table import COLUMN_FLOOR, FilterableTable, fit_widths

from .pilot import SIZE, static_text, table_rows, tree_labels, until
from .stores import RUN_A, RUN_B, RUN_NB, build_store, empty_store


@pytest.fixture
def source(tmp_path):
    src = StoreSource(build_store(str(tmp_path / "prov.db")))
    yield src
    src.close()


def _runs_loaded(app) -> bool:
    return isinstance(app.screen, RunsScreen) and bool(table_rows(app, "#runs"))


def _run_loaded(app) -> bool:
    return isinstance(app.screen, RunScreen) and app.screen.doc is not None


async def _type(pilot, text: str) -> None:
    await pilot.press(*["space" if ch == " " else ch for ch in text])


async def test_runs_run_files_lineage(source):
    app = ProvtraceApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: _runs_loaded(app), "the runs list")
        rows = table_rows(app, "#runs")
        assert [r[0] for r in rows] == [RUN_NB, RUN_B, RUN_A]  # newest first
        assert rows[1][:3] == [RUN_B, "command", "report"]
        assert "3 runs in store" in static_text(app, "#status")

        await pilot.press("slash")
        await _type(pilot, "report")
        await pilot.press("enter")  # keeps the filter, back to the table
        assert [r[0] for r in table_rows(app, "#runs")] == [RUN_B]
        await pilot.press("enter")  # opens the run
        await until(pilot, lambda: _run_loaded(app), "run B loaded")
        screen = app.screen
        assert screen.run_id == RUN_B
        assert screen.query_one("#panes").active == "files"  # a command run opens on its files
        files = {r[0]: r for r in table_rows(app, "#files-table")}
        assert files["/data/report.txt"][1:4] == ["write,create", "data", "0 B"]
        assert files["/data/out.csv"][1] == "read" and files["/data/out.csv"][3] == "900 B"
        # a name with markup and a newline shows literally, escaped
        assert "/data/[red]odd\\nname.txt" in files

        await pilot.press("slash")
        await _type(pilot, "report.txt")
        await pilot.press("enter")
        assert [r[0] for r in table_rows(app, "#files-table")] == ["/data/report.txt"]
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LineageScreen)
                    and len(tree_labels(app, "#lineage-tree")) > 1, "upstream lineage")
        labels = tree_labels(app, "#lineage-tree")
        assert labels[0] == "upstream lineage of /data/report.txt"
        assert labels[1] == f"written by [run {RUN_B} pid 4200000] sh report.sh"
        assert labels[2:5] == ["reads /data/out.csv", "renamed from /data/out.csv.tmp",
                               f"written by [run {RUN_A} pid 4100001] python3 job.py"]

        await pilot.press("d")
        await until(pilot, lambda: tree_labels(app, "#lineage-tree")[0].startswith("downstream"),
                    "downstream lineage")
        assert tree_labels(app, "#lineage-tree")[1] == (
            "nothing downstream: no traced process read this path or renamed it")

        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen)
        await pilot.press("tab")
        assert app.screen.query_one("#panes").active == "resources"
        await pilot.press("tab")
        assert app.screen.query_one("#panes").active == "libraries"
        assert table_rows(app, "#libraries-table")[0][:3] == [
            "/usr/lib/x86_64-linux-gnu/libm.so.6", "libm.so.6", "libc6"]
        await pilot.press("tab")
        assert table_rows(app, "#packages-table") == [["numpy", "1.26.4", "pypi"], ["libc6", "2.36-9", "deb"]]
        await pilot.press("q")
    assert app.return_code == 0


async def test_downstream_across_runs_and_reroot(source):
    app = ProvtraceApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: _runs_loaded(app), "the runs list")
        await pilot.press("down", "down", "enter")  # the oldest run: A
        await until(pilot, lambda: _run_loaded(app), "run A loaded")
        assert app.screen.run_id == RUN_A
        files = [r[0] for r in table_rows(app, "#files-table")]
        assert files == ["/data/caf\\xe9.csv", "/data/in.csv", "/data/out.csv.tmp"]  # data and temp
        await pilot.press("a")  # all kinds: the library and the exec'd interpreter too
        assert "/usr/lib/x86_64-linux-gnu/libm.so.6" in [r[0] for r in table_rows(app, "#files-table")]
        await pilot.press("a")
        await pilot.press("down", "down", "enter")  # out.csv.tmp: enter opens its lineage
        await until(pilot, lambda: isinstance(app.screen, LineageScreen), "the lineage screen")
        await pilot.press("d")
        await until(pilot, lambda: len(tree_labels(app, "#lineage-tree")) > 2
                    and tree_labels(app, "#lineage-tree")[0].startswith("downstream"), "downstream")
        labels = tree_labels(app, "#lineage-tree")
        assert labels[1:4] == ["renamed to /data/out.csv",
                               f"read by [run {RUN_B} pid 4200000] sh report.sh", "writes /data/report.txt"]
        # enter on a file node re-roots the walk there
        tree = app.screen.query_one("#lineage-tree")
        tree.move_cursor(tree.root.children[0])
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LineageScreen) and app.screen.path == "/data/out.csv"
                    and tree_labels(app, "#lineage-tree")[0].startswith("downstream lineage of /data/out.csv"),
                    "lineage re-rooted at out.csv")


async def test_non_utf8_lineage_uses_the_raw_name(source):
    app = ProvtraceApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: _runs_loaded(app), "the runs list")
        await pilot.press("down", "down", "enter")
        await until(pilot, lambda: _run_loaded(app), "run A loaded")
        await pilot.press("l")  # the first row: /data/caf\xe9.csv
        await until(pilot, lambda: isinstance(app.screen, LineageScreen)
                    and len(tree_labels(app, "#lineage-tree")) > 1, "downstream of café")
        await pilot.press("d")
        await until(pilot, lambda: tree_labels(app, "#lineage-tree")[0].startswith("downstream"), "downstream")
        labels = tree_labels(app, "#lineage-tree")
        assert labels[0] == "downstream lineage of /data/caf\\xe9.csv"
        assert labels[1] == f"read by [run {RUN_A} pid 4100000] python3 job.py"


async def test_notebook_run_shows_cells(source):
    app = ProvtraceApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: _runs_loaded(app), "the runs list")
        await pilot.press("enter")  # newest first: the notebook run
        await until(pilot, lambda: _run_loaded(app), "the notebook run")
        assert app.screen.run_id == RUN_NB
        assert app.screen.query_one("#panes").active == "cells"
        assert table_rows(app, "#cells-table") == [
            ["0", "1", "ok", "c1", "/nb/train.csv", "/nb/model.pkl", "0"],
            ["1", "2", "error", "c2", "", "", "1"],
        ]
        await pilot.press("down", "enter")  # a cell's files: the Files pane, filtered on its id
        assert app.screen.query_one("#panes").active == "files"
        rows = table_rows(app, "#files-table")
        assert rows and all(r[6] == "c2" for r in rows)
        assert "/usr/bin/false" in [r[0] for r in rows]
        await pilot.press("escape")  # the filter line is not focused: escape leaves the run
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("enter")
        await until(pilot, lambda: _run_loaded(app), "the notebook run again")
        app.screen.query_one("#panes").active = "processes"
        await pilot.pause()
        labels = tree_labels(app, "#proc-tree")
        assert labels[0] == "2 processes"
        assert labels[1].startswith("4300000  python3 -m ipykernel_launcher  (exit 0)")
        assert labels[2] == "4300001  false  (exit 1)  cell c2"
        app.screen.query_one("#panes").active = "host"
        await pilot.pause()
        host = static_text(app, "#host-text")
        assert "no NVIDIA GPU/driver" in host and "python 3.11.2  /usr/bin/python3.11" in host
        summary = static_text(app, "#summary-text")
        assert "kind notebook" in summary and "2 cells" in summary


async def test_empty_store_has_an_empty_state(tmp_path):
    db = empty_store(str(tmp_path / "empty.db"))
    src = StoreSource(db)
    app = ProvtraceApp(src)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "0 runs" in static_text(app, "#status"), "the empty list")
            empty = app.screen.query_one("#runs .empty")
            assert empty.has_class("-active") and f"No runs in store {db}" in str(empty.content)
            await pilot.press("enter", "slash", "x", "enter", "l", "tab")  # nothing to open; no crash
            assert isinstance(app.screen, RunsScreen)
            assert "no rows match 'x'" not in str(empty.content)  # no rows at all: still the empty state
            await pilot.press("escape", "q")  # tab moved focus to the filter line; escape leaves it
        assert app.return_code == 0
    finally:
        src.close()


async def test_unknown_run_is_shown_not_raised(source):
    app = ProvtraceApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: _runs_loaded(app), "the runs list")
        await app.push_screen(RunScreen("no-such-run"))
        await until(pilot, lambda: "cannot load" in static_text(app, "#status"), "the error line")
        assert "no run 'no-such-run'" in static_text(app, "#status")
        await pilot.press("l")  # no file to trace: a notice, not a crash
        assert isinstance(app.screen, RunScreen)


def test_fit_widths():
    assert fit_widths([3, 150, 10], 200) == [3, 150, 10]  # all fit: every column whole
    assert fit_widths([3, 300, 10], 200) == [3, 187, 10]  # the wide one takes what is left
    assert fit_widths([3, 300, 250, 10], 400) == [3, 193, 193, 10]  # two wide ones share it
    assert fit_widths([3, 300, 10], 80) == [3, COLUMN_FLOOR, 10]  # narrow: cut at the floor, scrolls


WIDE = "/tmp/" + "/".join(f"level-{i:02}-of-a-deep-tree" for i in range(7)) + "/train.csv"  # 182 chars


def _column_widths(app, selector: str) -> dict[str, int]:
    t = app.screen.query_one(selector, FilterableTable).table
    return {str(c.label): c.width for c in t.columns.values()}


async def test_cells_fit_the_terminal_and_lists_stay_short(tmp_path):
    """A cell reading six files: three of them, then "… 3 more", each path whole in a wide
    terminal; a narrow one cuts the column at the floor and scrolls sideways."""
    reads = (WIDE, *(f"/work/part-{i}.csv" for i in range(5)))  # shown sorted: WIDE first
    src = StoreSource(build_store(str(tmp_path / "prov.db"), nb_reads=reads))
    app = ProvtraceApp(src)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: _runs_loaded(app), "the runs list")
            await pilot.press("enter")
            await until(pilot, lambda: _run_loaded(app), "the notebook run")
            cells = table_rows(app, "#cells-table")
            assert cells[0][4].split("\n") == [WIDE, "/work/part-0.csv", "/work/part-1.csv", "… 3 more"]
            assert _column_widths(app, "#cells-table")["READS"] == COLUMN_FLOOR  # 120 columns
            table = app.screen.query_one("#cells-table", FilterableTable).table
            assert table.virtual_size.width > table.size.width  # scrolls sideways

            await pilot.press("down")  # the cursor stays on its row through a resize
            await pilot.resize_terminal(250, 40)
            await until(pilot, lambda: _column_widths(app, "#cells-table")["READS"] == len(WIDE),
                        "the READS column as wide as the long path")
            assert table.cursor_row == 1
            assert table.virtual_size.width <= table.size.width  # all of it on screen

            await pilot.press("slash", *"part-4", "enter")  # the filter searches the hidden reads too
            assert [r[3] for r in table_rows(app, "#cells-table")] == ["c1"]
            await pilot.press("slash", "escape")  # clears the filter
            await pilot.press("tab", "tab")  # Processes, then Files
            files = table_rows(app, "#files-table")
            assert WIDE in [r[0] for r in files]
            assert _column_widths(app, "#files-table")["PATH"] == len(WIDE)
    finally:
        src.close()
