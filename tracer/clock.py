"""The one place where CLOCK_MONOTONIC nanoseconds meet wall-clock UTC.

eBPF timestamps (bpf_ktime_get_ns) and the daemon's own ordering use
CLOCK_MONOTONIC. Jupyter message headers, gRPC reports and the JSON schema
use wall-clock UTC. A Clock is calibrated once, when it is built, from the
tightest of a few (monotonic, realtime, monotonic) samples; afterwards both
directions are plain arithmetic, so a wall-clock step (NTP, settimeofday)
after calibration does not reorder events. Build a new Clock to recalibrate.
"""

from __future__ import annotations

import datetime as dt
import functools
import time

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)


class Clock:
    """Converts CLOCK_MONOTONIC ns <-> aware UTC datetimes with one fixed offset."""

    def __init__(self, samples: int = 5, offset_ns: int | None = None) -> None:
        if offset_ns is None:
            offset_ns = _calibrate(samples)
        # realtime_ns = monotonic_ns + offset_ns
        self.offset_ns = offset_ns

    @staticmethod
    def now_mono_ns() -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def mono_ns_to_utc(self, mono_ns: int) -> dt.datetime:
        epoch_ns = mono_ns + self.offset_ns
        return _EPOCH + dt.timedelta(microseconds=epoch_ns // 1000)

    def utc_to_mono_ns(self, when: dt.datetime) -> int:
        """Monotonic ns of a wall-clock instant; naive datetimes are taken as UTC."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=_UTC)
        delta = when - _EPOCH
        epoch_ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        return epoch_ns - self.offset_ns

    def iso_to_mono_ns(self, text: str) -> int:
        """Monotonic ns of an ISO-8601 string as Jupyter writes it ("...Z" or "+00:00")."""
        return self.utc_to_mono_ns(parse_iso(text))


def parse_iso(text: str) -> dt.datetime:
    """Parses an ISO-8601 timestamp into an aware UTC datetime; raises ValueError."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_UTC)
    return when.astimezone(_UTC)


def iso_utc(when: dt.datetime) -> str:
    """The schema's time format: ISO-8601 UTC with microseconds."""
    return when.astimezone(_UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def us_to_iso(epoch_us: int | None) -> str | None:
    """Wall-clock microseconds since the epoch (as the store keeps them) -> schema time."""
    if epoch_us is None:
        return None
    return iso_utc(_EPOCH + dt.timedelta(microseconds=epoch_us))


def _calibrate(samples: int) -> int:
    best_width = None
    best_offset = 0
    for _ in range(max(1, samples)):
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        width = after - before
        if best_width is None or width < best_width:
            best_width = width
            best_offset = real - (before + width // 2)
    return best_offset


@functools.lru_cache(maxsize=1)
def default_clock() -> Clock:
    """The process-wide Clock, calibrated on first use (not at import)."""
    return Clock()
