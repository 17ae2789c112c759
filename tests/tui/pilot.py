"""Helpers for Pilot tests: wait for worker results by polling, read widgets as text."""

from __future__ import annotations

from textual.widgets import Static, Tree

from provtrace.tui.widgets.table import FilterableTable

SIZE = (120, 40)
TRIES = 400  # polls of 0.05 s: a bound on waiting, not an assertion on speed


async def until(pilot, cond, what: str) -> None:
    """Pause until cond() holds; workers run in threads, so results arrive later."""
    for _ in range(TRIES):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"never saw {what}")


def table_rows(app, selector: str) -> list[list[str]]:
    """The visible rows of a FilterableTable, as plain strings."""
    t = app.screen.query_one(selector, FilterableTable).table
    return [[str(getattr(c, "plain", c)) for c in t.get_row(k)] for k in t.rows]


def static_text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def tree_labels(app, selector: str) -> list[str]:
    tree = app.screen.query_one(selector, Tree)
    out, stack = [], [tree.root]
    while stack:
        node = stack.pop()
        out.append(node.label.plain)
        stack.extend(reversed(node.children))
    return out
