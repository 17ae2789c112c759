"""Messages the workers post back to the screens: small dataclasses.

Workers run source calls in threads; post_message is the thread-safe way
back to the event loop, and each result carries what was asked for so a
screen can drop answers to a question it no longer asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from .model import Lineage, RunSummary, StaleNotice


@dataclass
class RunsLoaded(Message):
    runs: list[RunSummary]


@dataclass
class RunLoaded(Message):
    run_id: str
    doc: dict


@dataclass
class HistoryLoaded(Message):
    run_id: str
    history: list[dict]  # the job's latest runs with their resources, oldest first


@dataclass
class LineageLoaded(Message):
    path: str
    direction: str
    lineage: Lineage


@dataclass
class LoadFailed(Message):
    what: str  # "runs", "run RUN", "lineage PATH"
    error: str  # one line, as the CLI would print it


@dataclass
class StaleSeen(Message):
    notice: StaleNotice  # pushed by the daemon: a file some cells read has changed
