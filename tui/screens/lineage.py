"""Lineage of one file: what produced it (upstream) or what came of it (downstream)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static, Tree

from ...tracer.errors import TracerError
from .. import model as M
from .. import rows as R
from ..messages import LineageLoaded, LoadFailed
from ..widgets.titlebar import TitleBar

DEPTH = 10  # provtrace lineage's default


class LineageScreen(Screen):
    DEFAULT_CSS = """
    LineageScreen #status { height: 1; padding: 0 1; }
    LineageScreen Tree { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("u", "direction('upstream')", "Upstream"),
        Binding("d", "direction('downstream')", "Downstream"),
    ]

    def __init__(self, path: str, direction: str = M.UPSTREAM) -> None:
        super().__init__()
        self.path = path
        self.direction = direction

    def compose(self) -> ComposeResult:
        yield TitleBar(f"provtrace — lineage — {R.printable(self.app.source.description)}")
        yield Static("", id="status", markup=False)
        yield Tree(Text(R.printable(self.path)), id="lineage-tree")
        yield Footer()

    def on_mount(self) -> None:
        self._load()

    def _load(self) -> None:
        self.query_one("#status", Static).update(
            f"loading {self.direction} lineage of {R.printable(self.path)}…")
        self.run_worker(self._fetch, thread=True, exclusive=True, group="lineage")

    def _fetch(self) -> None:
        path, direction = self.path, self.direction
        try:
            lin = self.app.source.lineage(path, direction, DEPTH)
            self.post_message(LineageLoaded(path, direction, lin))
        except TracerError as exc:
            self.post_message(LoadFailed(f"lineage of {R.printable(path)}", str(exc)))

    def on_lineage_loaded(self, msg: LineageLoaded) -> None:
        if (msg.path, msg.direction) != (self.path, self.direction):
            return  # an answer to a question no longer asked
        item = R.lineage_tree(msg.lineage)
        tree = self.query_one("#lineage-tree", Tree)
        tree.clear()
        tree.root.set_label(Text(item.label))
        tree.root.data = item.key
        stack = [(tree.root, child) for child in reversed(item.children)]
        while stack:
            parent, it = stack.pop()
            node = parent.add(Text(it.label), data=it.key, expand=True) if it.children else \
                parent.add_leaf(Text(it.label), data=it.key)
            stack.extend((node, c) for c in reversed(it.children))
        tree.root.expand()
        nodes = len(msg.lineage.nodes) - 1
        self.query_one("#status", Static).update(
            f"{msg.direction}: {nodes} node{'' if nodes == 1 else 's'}   "
            "(u upstream, d downstream, enter on a file re-roots)")
        tree.focus()

    def on_load_failed(self, msg: LoadFailed) -> None:
        self.query_one("#status", Static).update(f"cannot load {msg.what}: {msg.error}")

    def action_direction(self, direction: str) -> None:
        if direction != self.direction:
            self.direction = direction
            self._load()

    def on_tree_node_selected(self, event: Tree.NodeSelected) -> None:
        event.stop()
        key = event.node.data
        path = M.path_of(key) if isinstance(key, str) else None
        if path is not None and path != self.path:
            self.app.push_screen(LineageScreen(path, self.direction))
