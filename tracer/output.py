"""What a command-line entry writes: JSON on stdout, and every failure as one
line on stderr and a non-zero exit (a traceback only with --debug).

Shared by the verbs (commands.py) and the two entries, `provtrace`
(cli.py) and `provtrace-tui` (tui/entry.py), so that none of them imports
another for it. Below commands in the layers (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from .errors import TracerError, UsageError


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise UsageError(msg)


class _NeverRaised(Exception):
    pass


def _store_damaged() -> type[Exception]:
    """sqlite3.DatabaseError once sqlite3 is loaded; before, none can have been
    raised (a verb that opened no store, like `provtrace run` through the daemon,
    need not load sqlite3 at all: start-up)."""
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3.DatabaseError if sqlite3 is not None else _NeverRaised


def run_and_exit(verb: Callable[[], int | None], *, debug: bool) -> NoReturn:
    """Runs one verb and exits with its code, or with one line for a failure it raised."""
    try:
        code = verb()
    except TracerError as e:
        if debug:
            raise
        print(f"provtrace: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except _store_damaged() as e:  # a damaged store file: say so, never a traceback
        if debug:
            raise
        print(f"provtrace: the store cannot be read ({e}); run `provtrace verify` to see what is damaged",
              file=sys.stderr)
        sys.exit(4)
    except KeyboardInterrupt:
        print("provtrace: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code or 0)
