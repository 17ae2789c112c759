"""The TUI's own entry: `provtrace-tui`, `python -m provtrace.tui`, and the
`provtrace tui` verb, which tracer/cli.py hands to run() here.

That hand-over is the one import from the tracer package into tui, made
lazily so that no other verb loads textual (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..tracer.errors import UsageError
from ..tracer.output import run_and_exit
from .source import open_source


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="provtrace-tui", description="the terminal UI: runs, cells, processes, files, lineage, context",
        epilog="keys: q quit, / filter, enter open, l lineage, tab next pane, escape back")
    ap.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--db", metavar="PATH", help="store file (default: as for the other verbs), or a fleet "
                   "store's postgresql:// URL")
    g.add_argument("--socket", metavar="PATH", help="ask a live daemon on this socket instead")
    return ap


def run(args: argparse.Namespace) -> int:
    """The terminal UI. The source is opened first, so a bad store or an absent
    daemon is one line on stderr before the app takes over the terminal."""
    from ..tracer import config  # noqa: PLC0415
    from ..tracer.fleet.db import is_url  # noqa: PLC0415

    db = args.db
    if not args.socket and not db and is_url(os.environ.get("PROVTRACE_DB")):
        db = os.environ["PROVTRACE_DB"]  # the fleet store, as for the other verbs
    source = open_source(db=db, socket_path=args.socket, config=config.load())
    try:
        # Textual draws on stderr and reads keys from stdin; stdout may be piped.
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise UsageError("provtrace tui needs a terminal; in scripts use provtrace runs/show --json")
        from .app import run_tui  # noqa: PLC0415  (textual loads only here)

        return run_tui(source)
    finally:
        source.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="provtrace: %(levelname)s %(name)s %(message)s")
    run_and_exit(lambda: run(args), debug=args.debug)
