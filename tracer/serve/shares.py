"""Per-uid shares of the daemon's gRPC worker threads (issue 12: RPC starvation).

gRPC runs every call on one of the server's worker threads, first come first
served; a call that waits for anything holds its worker. So the daemon sorts
its RPCs into three classes:

- control (Health, RegisterKernel, ReportCell*, TraceCommand, FinishCommand):
  short, and what a user's traced command or kernel waits on. They run on the
  workers the other classes must leave free; no total cap, but one non-root
  uid may hold at most half the workers (FinishCommand waits for its run's
  last events and fingerprints), so one user's control calls cannot take them all.
- query (ListSessions, ListCells, Lineage, Stale, GetContext, Export): may
  scan the whole store and re-hash files, seconds each on a big store.
- stream (StreamEvents): holds a worker for as long as the client listens.

Queries and streams each get a Share: at most `total` calls at once, at most
`per_uid` of them for one uid. A call over its share is refused at once with
RESOURCE_EXHAUSTED rather than queued, since a queued call would hold a worker
too. ApiServer sizes the shares so that together they leave workers free.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from ..errors import TracerError


class Busy(TracerError):
    """A share is full; the message says whose and what to do."""


class Share:
    """Counts the calls of one class in flight, in total and per uid."""

    def __init__(self, what: str, total: int | None, per_uid: int, exempt_root: bool = False) -> None:
        if per_uid < 1 or (total is not None and total < per_uid):
            raise ValueError(f"{what}: need 1 <= per_uid ({per_uid}) <= total ({total})")
        self.what = what
        self.total = total
        self.per_uid = per_uid
        self.exempt_root = exempt_root  # root is counted in the total, never capped per uid
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()

    def held(self, uid: int | None = None) -> int:
        """Calls in flight: of one uid, or of everyone."""
        with self._lock:
            return sum(self._held.values()) if uid is None else self._held.get(uid, 0)

    def acquire(self, uid: int) -> None:
        with self._lock:
            mine = self._held.get(uid, 0)
            if mine >= self.per_uid and not (uid == 0 and self.exempt_root):
                raise Busy(f"too many {self.what} (uid {uid} has {mine} in progress, "
                           f"at most {self.per_uid}); wait for one to finish and retry")
            if self.total is not None and sum(self._held.values()) >= self.total:
                raise Busy(f"too many {self.what} from all users ({self.total} in progress); retry shortly")
            self._held[uid] = mine + 1

    def release(self, uid: int) -> None:
        with self._lock:
            self._held[uid] -= 1
            if not self._held[uid]:
                del self._held[uid]

    @contextlib.contextmanager
    def hold(self, uid: int) -> Iterator[None]:
        self.acquire(uid)
        try:
            yield
        finally:
            self.release(uid)


def worker_budget(max_workers: int) -> tuple[int, int, int]:
    """(reserved for control, streams, queries) out of max_workers threads.

    A quarter (at least 2) stays free for control calls and for refusing the
    calls over their share; streams and queries split the rest."""
    if max_workers < 4:
        raise ValueError(f"max_workers must be >= 4 (2 for control calls, 1 stream, 1 query), got {max_workers}")
    reserved = max(2, max_workers // 4)
    streams = max(1, (max_workers - reserved) // 2)
    return reserved, streams, max_workers - reserved - streams
