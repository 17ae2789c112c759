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
stat; "by" names the other traced run when one wrote the path (a live run's
snapshot of its writes, else the store's last FILE record writing it). A
file the session itself wrote is its own output, not watched. The new
version becomes the baseline: a further change is another event.

Cost per poll: one stat per watched file; a fingerprint (hash, and schema
within the [schema] policy) only of a file whose stat changed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field

from ..lineage.drift import changed as drift_changed
from ..lineage.drift import drift
from ..lineage.stale import _compare, _stat_signature
from ..privs import Creds
from ..store import sqlite as S
from ..store.fingerprint import HashCache, fingerprint
from ..store.writer import ACCESS_BITS
from .records import ApiEvent

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.25
_WRITE_BITS = ACCESS_BITS["write"] | ACCESS_BITS["create"] | ACCESS_BITS["truncate"]


@dataclass
class _Seen:
    signature: tuple
    fp: dict
    cells: set[str] = field(default_factory=set)


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
        live = self.tracing.live_runs()
        sessions = [r for r in live if r.kind == "session"]
        keep = set()
        for s in sessions:
            for path, cells in dict(s.reads).items():
                keep.add((s.run_id, path))
                self._check(s, path, cells, live)
        for key in set(self._seen) - keep:  # sessions ended, or the file became their own output
            del self._seen[key]

    def _check(self, session, path: str, cells: frozenset[str], live) -> None:
        key = (session.run_id, path)
        seen = self._seen.get(key)
        sig = _stat_signature(path)
        if seen is None:
            self._seen[key] = _Seen(sig, self._fingerprint(session, path), set(cells))
            self._publish(session, "watching", {"path": path, "cells": sorted(cells)})
            return
        seen.cells |= cells
        if sig == seen.signature:
            return
        seen.signature = sig
        now = self._fingerprint(session, path)
        status, _basis = _compare(seen.fp, now)
        if status in ("same", "unknown"):
            if status == "same":
                seen.fp = now
            return
        by = self._writer(path, session, live)
        why = ("deleted" if status == "deleted" else f"rewritten by run {by}" if by else "content changed")
        detail: dict = {"path": path, "why": why, "cells": sorted(seen.cells)}
        if by:
            detail["by"] = by
        d = drift(seen.fp.get("schema"), now.get("schema"))
        if drift_changed(d):
            detail["drift"] = {k: d[k] for k in ("removed", "added", "retyped", "breaking")}
            detail["words"] = d["words"]
        seen.fp = now
        self._publish(session, "stale", detail)
        self.pushed += 1
        log.info("event=stale-pushed session=%s path=%r why=%r cells=%d", session.run_id, path, why,
                 len(detail["cells"]))

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

    def _writer(self, path: str, session, live) -> str | None:
        """The traced run that wrote path last: a live one's snapshot, else the store's records."""
        for r in live:
            if r is not session and path in r.writes:
                return r.run_id
        return self.tracing.last_writer(path, exclude=session.rid)


def last_writer(store: S.Store, path: str, exclude: int) -> str | None:
    """The id of the run whose FILE record wrote path last (not the excluded rid)."""
    row = store.db.execute("SELECT id FROM paths WHERE path=?", (os.fsencode(path),)).fetchone()
    if row is None:
        return None
    for rid, body in store.db.execute(
            "SELECT rid, body FROM records WHERE p1=? AND kind=? AND rid<>? ORDER BY seq DESC LIMIT 64",
            (row[0], S.FILE, exclude)):
        if json.loads(body)[1] & _WRITE_BITS:
            found = store.db.execute("SELECT id FROM runs WHERE rid=?", (rid,)).fetchone()
            return found[0] if found else None
    return None
