"""The TUI on a run traced for real: the probes, the kernel, the store, then Pilot."""

from __future__ import annotations

import pytest

from provtrace.tui.app import ProvtraceApp
from provtrace.tui.screens.lineage import LineageScreen
from provtrace.tui.screens.run import RunScreen
from provtrace.tui.source import StoreSource

from ..integration.helpers import trace
from .pilot import SIZE, static_text, table_rows, tree_labels, until


@pytest.mark.privileged
async def test_tui_on_a_traced_pipeline(capture, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text("b\na\nc\n")
    db = str(tmp_path / "store.db")
    code, doc = trace(capture, ["sh", "-c", "sort in.txt > sorted.txt && wc -l sorted.txt > count.txt"],
                      cwd=work, db=db, label="tui-real")
    assert code == 0
    src = StoreSource(db)
    app = ProvtraceApp(src)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: bool(table_rows(app, "#runs")), "the traced run")
            assert table_rows(app, "#runs")[0][:3] == [doc["run"]["id"], "command", "tui-real"]
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.doc is not None, "run")
            access: dict[str, set[str]] = {}  # one row per (process, path): sh creates, wc writes
            for row in table_rows(app, "#files-table"):
                access.setdefault(row[0], set()).update(row[1].split(","))
            assert {"create", "write"} <= access[f"{work}/count.txt"] and access[f"{work}/in.txt"] == {"read"}
            procs = tree_labels(app, "#proc-tree")
            assert any("sort in.txt" in label for label in procs) and any("wc -l" in label for label in procs)
            host = static_text(app, "#host-text")
            assert "GPUs:" in host and ("no NVIDIA GPU/driver" in host or " driver " in host)

            await pilot.press("slash", *"count.txt", "enter", "l")
            await until(pilot, lambda: isinstance(app.screen, LineageScreen)
                        and len(tree_labels(app, "#lineage-tree")) > 3, "the lineage of count.txt")
            labels = tree_labels(app, "#lineage-tree")
            assert labels[0] == f"upstream lineage of {work}/count.txt"
            # writers of count.txt: wc, and the shell that opened it for the redirect
            assert any(x.startswith("written by [run ") and x.endswith("] wc -l sorted.txt") for x in labels)
            assert any(x.startswith("written by [run ") and x.endswith("] sort in.txt") for x in labels)
            assert f"reads {work}/sorted.txt" in labels and f"reads {work}/in.txt" in labels
            await pilot.press("q")
        assert app.return_code == 0
    finally:
        src.close()
