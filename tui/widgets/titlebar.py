"""The top line of every screen: what is shown, and from which source.

A plain Static rather than textual's Header: Header updates its title in a
callback that can fire while a screen is being torn down (seen under Pilot
as NoMatches for HeaderTitle), and a quit must never end in a traceback.
"""

from __future__ import annotations

from textual.widgets import Static


class TitleBar(Static):
    DEFAULT_CSS = """
    TitleBar { dock: top; height: 1; background: $panel; color: $foreground; text-style: bold; padding: 0 1; }
    """

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
