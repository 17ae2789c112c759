"""Staleness pushed live: the daemon watches what its notebook sessions read.

Every live session's router snapshot (LiveRun.reads: data file -> the cells
that read it) is polled every WATCH_INTERVAL_S by stat(2). The first time a
(session, file) pair is seen, the file is fingerprinted as the session's
owner: that is the version the cells consumed. When the file's stat changes
afterwards, it is fingerprinted again; if the content differs (sha256, else
size/mtime/inode, as `stale` judges), one "stale" event goes on the gRPC
stream (StreamEvents) to the session's owner and root (and, when a file is
first watched, one "watching" event with its path and cells, so a client
knows from when on a change will be seen):

    kind "stale", session_id, run_id (the session), cell_id (the first cell),
    detail {"path", "why": "content changed"|"deleted"|"rewritten by run X",
            "cells": [cell ids], "by"?: run id, "drift"?: {...}, "words"?: [...]}

A traced write by another run and an untraced edit are both seen, by the
stat; "by" names the other traced run when the router saw one write the
path after the baseline (RunRouter notes the writers of watched files every
0.2 s and as each run ends). An event with no writer yet waits up to
WRITER_WAIT_S for one, so a push takes about 0.6 s after the change. A
file the session itself wrote is its own output, not watched. The new
version becomes the baseline: a further change is another event.

Cost per poll: one stat per watched file; a fingerprint (hash, and schema
within the [schema] policy) only of a file whose stat changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field

from ..clock import Clock
from ..lineage.drift import changed as drift_changed
from ..lineage.drift import drift
from ..lineage.stale import _compare, _stat_signature
from ..privs import Creds
from ..store.fingerprint import HashCache, fingerprint
from ..serve.records import ApiEvent

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.25
WRITER_WAIT_S = 0.35  # how long a change's event waits for the router to name a traced writer


@dataclass
class _Seen:
    signature: tuple
    fp: dict
    since_ns: int  # when this version became the baseline (CLOCK_MONOTONIC)
    cells: set[str] = field(default_factory=set)
    changed_at: float | None = None  # a change seen, its event held for its writer (monotonic s)


class InputWatcher:
    """step() polls once; the daemon runs it in a guarded loop."""

    def __init__(self, tracing, hub, schema=None) -> None:
        self.tracing = tracing
        self.hub = hub
        self.schema = schema  # a SchemaPolicy, or None: the system config's
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._creds: dict[int, Creds] = {}
        self.pushed = 0

    def step(self) -> None:
        sessions = [r for r in self.tracing.live_runs() if r.kind == "session"]
        keep = set()
        for s in sessions:
            for path, cells in dict(s.reads).items():
                keep.add((s.run_id, path))
                self._check(s, path, cells)
        for key in set(self._seen) - keep:  # sessions ended, or the file became their own output
            del self._seen[key]
        watched = frozenset(path for _sid, path in keep)
        if watched != self.tracing.router.watched:
            self.tracing.router.watched = watched  # the router notes who writes these

    def _check(self, session, path: str, cells: frozenset[str]) -> None:
        key = (session.run_id, path)
        seen = self._seen.get(key)
        if seen is None:
            sig = _stat_signature(path)
            self._seen[key] = _Seen(sig, self._fingerprint(session, path), Clock.now_mono_ns(), set(cells))
            self._publish(session, "watching", {"path": path, "cells": sorted(cells)})
            return
        seen.cells |= cells
        if seen.changed_at is None:
            sig = _stat_signature(path)
            if sig == seen.signature:
                return
            seen.signature = sig
            now = self._fingerprint(session, path)
            status, _basis = _compare(seen.fp, now)
            if status == "unknown":
                return
            if status == "same":
                seen.fp = now
                return
            seen.changed_at = time.monotonic()
        by = self._writer(path, session, seen)
        if by is None and time.monotonic() - seen.changed_at < WRITER_WAIT_S:
            return  # the router notes writes every 0.2 s: give a traced writer that long to show
        self._push(session, path, seen, by)

    def _push(self, session, path: str, seen: _Seen, by: str | None) -> None:
        now = self._fingerprint(session, path)
        seen.signature = _stat_signature(path)
        if now.get("error") == "vanished":
            why = "deleted"
        else:
            why = f"rewritten by run {by}" if by else "content changed"
        detail: dict = {"path": path, "why": why, "cells": sorted(seen.cells)}
        if by:
            detail["by"] = by
        d = drift(seen.fp.get("schema"), now.get("schema"))
        if drift_changed(d):
            detail["drift"] = {k: d[k] for k in ("removed", "added", "retyped", "breaking")}
            detail["words"] = d["words"]
        seen.fp, seen.since_ns, seen.changed_at = now, Clock.now_mono_ns(), None
        self._publish(session, "stale", detail)
        self.pushed += 1
        log.info("event=stale-pushed session=%s path=%r why=%r cells=%d", session.run_id, path, why,
                 len(detail["cells"]))

    def _writer(self, path: str, session, seen: _Seen) -> str | None:
        """The traced run (not the session) that wrote path since the baseline, if any."""
        last = self.tracing.router.last_writer(path)
        if last is None or last[0] == session.run_id or last[1] < seen.since_ns:
            return None
        return last[0]

    def _publish(self, session, kind: str, detail: dict) -> None:
        self.hub.publish(ApiEvent(kind=kind, uid=session.uid if session.uid is not None else 0,
                                  time=dt.datetime.now(dt.timezone.utc), session_id=session.run_id,
                                  run_id=session.run_id, cell_id=detail["cells"][0] if detail["cells"] else None,
                                  detail=detail))

    def _fingerprint(self, session, path: str) -> dict:
        uid = session.uid
        creds = None
        if uid is not None and uid != os.geteuid():
            if uid not in self._creds:
                self._creds[uid] = Creds.of_user(uid)
            creds = self._creds[uid]
        if self.schema is None:
            from .router import _system_schema_policy  # noqa: PLC0415

            self.schema = _system_schema_policy()
        cache: HashCache = {}
        return fingerprint(path, cache, creds=creds, schema=self.schema)
