"""Log lines that a hostile or broken client cannot turn into a flood.

The daemon logs what it refuses and what fails; a local user can make it
refuse or fail hundreds of times a second. So a kind of line is written at
most once every `every_s` seconds, with the count of those held back since,
and without a traceback unless the daemon runs with --debug.
"""

from __future__ import annotations

import logging
import threading
import time


class _Window:
    """Per key: may a line go out now, and how many were held back before it?"""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def admit(self, key: object) -> int | None:
        """The count held back since the last line of key, or None: hold this one back too."""
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(key, (now - self.every_s, 0))
            if now - last < self.every_s:
                self._last[key] = (last, held + 1)
                return None
            self._last[key] = (now, 0)
            return held


def _debugging() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)


class RateLimitedLog:
    """At most one line per key every `every_s` seconds, with the count of those held back."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self.logger = logger
        self._window = _Window(every_s)

    def log(self, level: int, key: object, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        held = self._window.admit(key)
        if held is not None:
            self.logger.log(level, msg + " suppressed_since_last=%d", *args, held,
                            exc_info=exc_info if exc_info is not None and _debugging() else None)

    def warning(self, key: object, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key: object, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)


class RateLimitFilter(logging.Filter):
    """The same rule for a library's logger (grpc's server logs a traceback per bad request):
    one record per kind every `every_s` seconds, tracebacks only when debugging.
    The kind is the message up to its first colon ("Exception calling application: ...")."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self._window = _Window(every_s)

    def filter(self, record: logging.LogRecord) -> bool:
        held = self._window.admit((record.name, str(record.msg).split(":", 1)[0]))
        if held is None:
            return False
        if not _debugging():
            error = record.exc_info[1] if record.exc_info else None
            record.msg = record.getMessage() + (f" error={type(error).__name__}: {error}" if error else "")
            record.args = ()
            record.exc_info = record.exc_text = record.stack_info = None
        record.msg = f"{record.msg} suppressed_since_last={held}"
        return True
