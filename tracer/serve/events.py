"""Live events fanned out to StreamEvents subscribers.

Publishing never blocks: each subscriber has a bounded queue, and when a
slow subscriber's queue is full its events are dropped and counted; it then
receives one "gap" event saying how many it lost. A subscriber that goes
away is removed with close(); nothing else is kept per subscriber.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import queue
import threading
from dataclasses import replace
from typing import Iterable

from .records import ApiEvent

log = logging.getLogger(__name__)


class Subscription:
    def __init__(self, hub: "EventHub", uid: int | None, session_id: str | None,
                 kinds: Iterable[str], maxsize: int) -> None:
        self._hub = hub
        self.uid = uid
        self.session_id = session_id or None
        self.kinds = frozenset(kinds)
        self._queue: queue.Queue[ApiEvent] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self._reported = 0

    def wants(self, event: ApiEvent) -> bool:
        if self.uid is not None and event.uid != self.uid:
            return False
        if self.session_id and event.session_id != self.session_id:
            return False
        return not self.kinds or event.kind in self.kinds

    def offer(self, event: ApiEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def get(self, timeout_s: float) -> ApiEvent | None:
        """The next event; after drops, a "gap" event once the queue is drained; None on timeout."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            pass
        if self.dropped > self._reported:
            lost, self._reported = self.dropped - self._reported, self.dropped
            return ApiEvent(kind="gap", uid=self.uid if self.uid is not None else 0,
                            time=dt.datetime.now(dt.timezone.utc), detail={"dropped": lost})
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._hub._remove(self)


class EventHub:
    def __init__(self, queue_size: int = 1024) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def publish(self, event: ApiEvent) -> ApiEvent:
        with self._lock:
            event = replace(event, seq=next(self._seq))
            subs = list(self._subs)
        for sub in subs:
            if sub.wants(event):
                sub.offer(event)
        return event

    def subscribe(self, uid: int | None, session_id: str | None = None,
                  kinds: Iterable[str] = ()) -> Subscription:
        sub = Subscription(self, uid, session_id, kinds, self.queue_size)
        with self._lock:
            self._subs.append(sub)
        return sub

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
