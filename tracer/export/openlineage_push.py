"""Sending OpenLineage events to a catalog (Marquez, DataHub, OpenMetadata), never losing one.

The events are export/openlineage.py's. They go out through openlineage-python's
own client and transports (HTTP, Kafka, file, composite, ...), configured the
OpenLineage way: `openlineage.yml` (the file OPENLINEAGE_CONFIG names, else
./openlineage.yml, else ~/.openlineage/openlineage.yml), OPENLINEAGE__TRANSPORT__*
variables, or OPENLINEAGE_URL (with OPENLINEAGE_API_KEY, OPENLINEAGE_ENDPOINT).
A URL given here (`--url`) makes the transport HTTP to that URL; the file's and
the variables' other HTTP settings (auth, endpoint, retry, timeout) still apply.

Never lost:
- the transport retries as it is configured to (HTTP: urllib3 retries on
  connection errors and 500/502/503/504, 5 tries with backoff by default);
- an event it still cannot deliver, and every event after it in the same push,
  goes to the spool, a file of event keys (provtrace run id, runId, eventType),
  one JSON object a line, written atomically, under an exclusive lock;
- every push sends the spool first, in order, then its own events. A spooled
  event is rebuilt from the store, which is append-only and builds the same
  event each time (the runIds are derived from the run), so the spool stays
  small and a resent event is the event that failed.
(runId, eventType) identifies an event in OpenLineage, so an event sent twice
(a push repeated, a reply lost after the catalog stored it) is a duplicate
that consumers tolerate; an event is never spooled once it was delivered.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from ..atomic import atomic_write
from ..errors import TracerError, UsageError
from . import openlineage as OL

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".openlineage-spool"
EXIT_SPOOLED = 75  # sysexits EX_TEMPFAIL: nothing lost, try again later
_YAML_PLACES = ("./openlineage.yml", "~/.openlineage/openlineage.yml")


class PushConfigError(UsageError):
    """OpenLineage is not configured, is disabled, or its configuration is unusable."""


@dataclass(frozen=True, order=True)
class EventKey:
    """What identifies an event: (runId, eventType), and the provtrace run it comes from."""
    run: str
    run_id: str
    event_type: str

    def line(self) -> str:
        return json.dumps({"run": self.run, "runId": self.run_id, "eventType": self.event_type})

    @classmethod
    def parse(cls, line: str) -> EventKey:
        d = json.loads(line)
        return cls(str(d["run"]), str(d["runId"]), str(d["eventType"]))


def keyed_events(doc: dict) -> list[tuple[EventKey, object]]:
    """The run's events (export/openlineage.py), each with its key."""
    rid = str((doc.get("run") or {}).get("id"))
    return [(EventKey(rid, str(ev.run.runId), ev.eventType.value), ev) for ev in OL.events([doc])]


class Spool:
    """The events a push could not deliver, by key, in the order they were due."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One push at a time per spool (the daemon's and a user's may meet)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise TracerError(f"cannot use the OpenLineage spool {self.path}: {e.strerror or e}; "
                              "give --spool FILE in a folder you can write") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def keys(self) -> list[EventKey]:
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        keys = []
        for n, line in enumerate(lines, 1):
            try:
                keys.append(EventKey.parse(line))
            except (ValueError, KeyError, TypeError):
                log.warning("event=openlineage-spool-bad-line spool=%s line=%d", self.path, n)
        return keys

    def replace(self, keys: list[EventKey]) -> None:
        if keys:
            atomic_write(self.path, "".join(k.line() + "\n" for k in keys).encode("utf-8"))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def spool_for_store(db_path: str) -> str:
    return os.path.abspath(db_path) + SPOOL_SUFFIX


def spool_for_user() -> str:
    """Where a user's pushes through a daemon (--socket) spool: their state folder."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "provtrace", "openlineage" + SPOOL_SUFFIX)


def _configured() -> bool:
    """Whether the OpenLineage way names a transport (else the client would print to the console)."""
    if os.environ.get("OPENLINEAGE_URL") or any(k.startswith("OPENLINEAGE__TRANSPORT") for k in os.environ):
        return True
    named = os.environ.get("OPENLINEAGE_CONFIG")
    return bool(named) or any(os.path.isfile(os.path.expanduser(p)) for p in _YAML_PLACES)


def make_client(url: str | None = None):
    """openlineage-python's client for url (HTTP), else as openlineage.yml and the
    environment configure it; PushConfigError (one line) when it cannot send."""
    from openlineage.client import OpenLineageClient  # noqa: PLC0415

    if url is not None:
        parts = urlparse(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PushConfigError(f"--url needs an http(s)://HOST[:PORT] address of an OpenLineage endpoint, "
                                  f"got {url!r}")
    elif not _configured():
        raise PushConfigError("no OpenLineage endpoint configured: give --url URL, set OPENLINEAGE_URL, or "
                              "write openlineage.yml (see docs/export.md)")
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        raise PushConfigError("OpenLineage is disabled (OPENLINEAGE_DISABLED=true): nothing would be sent")
    try:
        client = OpenLineageClient(config={"transport": {"type": "http", "url": url}} if url else None)
    except (ValueError, TypeError, KeyError, RuntimeError, ImportError) as e:
        raise PushConfigError(f"the OpenLineage configuration cannot be used: {_one_line(e)}") from e
    return client


def describe(client, url: str | None) -> str:
    """Where events go, for messages."""
    return url or f"the configured {client.transport.kind} transport"


@dataclass
class PushResult:
    sent: int = 0
    from_spool: int = 0
    spooled: list[EventKey] = field(default_factory=list)
    reason: str | None = None  # why delivery stopped
    handed: list[EventKey] = field(default_factory=list)  # sent or spooled: nothing of these is lost


def push(client, docs: list[dict], spool: Spool, load_doc: Callable[[str], dict],
         skip: set[EventKey] | frozenset = frozenset()) -> PushResult:
    """Send the spool, then docs' events (but those in skip); spool what is not delivered.
    load_doc(run id) rebuilds a spooled event's run from the store."""
    with spool.locked():
        pending = spool.keys()
        queue, kept = _from_spool(pending, load_doc)
        result = PushResult(from_spool=len(queue))
        due = {k for k, _ev in queue}
        for doc in docs:
            for key, ev in keyed_events(doc):
                if key not in due and key not in skip:
                    queue.append((key, ev))
                    due.add(key)
        for key, ev in queue:
            if result.reason is None:
                try:
                    client.emit(ev)
                    result.sent += 1
                    result.handed.append(key)
                    continue
                # A transport raises its own errors (requests, kafka, OSError, ...); whatever
                # it is, the event is spooled, not lost, and the push carries on spooling.
                except Exception as e:  # noqa: BLE001
                    result.reason = _reason(e)
                    log.info("event=openlineage-undelivered run=%s runId=%s type=%s reason=%r",
                             key.run, key.run_id, key.event_type, result.reason)
            result.spooled.append(key)
        try:
            spool.replace(kept + result.spooled)
        except OSError as e:
            raise TracerError(f"{len(result.spooled)} OpenLineage events were not delivered ({result.reason}) "
                              f"and cannot be spooled to {spool.path}: {e.strerror or e}; push again when "
                              "the endpoint is up, or give --spool FILE") from e
        result.handed += result.spooled
        result.from_spool = min(result.from_spool, result.sent)
    return result


def quiet_transport_logs() -> None:
    """urllib3 logs a warning per retry; the push's own one-line summary says what matters."""
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


SENT_SUFFIX = ".openlineage-sent"


class Emitter:
    """The daemon's push (`daemon --openlineage` or `--openlineage-url URL`): each tick, the
    spool, then every event of the store's runs not handed over yet (sent, or spooled).

    What was handed over is kept in STORE.openlineage-sent (event keys, appended), so a
    restarted daemon does not send again what it sent; its first tick sends what the store
    held before (a backfill). A run whose end is recorded and whose events were all handed
    over is not read again."""

    def __init__(self, db_path: str, url: str | None = None) -> None:
        self.client = make_client(url)
        self.where = describe(self.client, url)
        self.spool = Spool(spool_for_store(db_path))
        self.sent_path = os.path.abspath(db_path) + SENT_SUFFIX
        self.handed: set[EventKey] = set(Spool(self.sent_path).keys())
        self.finished: set[str] = set()  # provtrace run ids with nothing left to hand over
        quiet_transport_logs()

    def tick(self, store) -> PushResult:
        from ..store import queries as Q  # noqa: PLC0415

        docs = []
        for r in Q.list_runs(store):
            if r["id"] not in self.finished:
                docs.append(Q.load_run(store, r["rid"]))

        def load_doc(run_id: str) -> dict:
            return Q.load_run(store, Q.resolve_run(store, run_id))
        result = push(self.client, docs, self.spool, load_doc, skip=self.handed)
        fresh = [k for k in result.handed if k not in self.handed]
        if fresh:
            with open(self.sent_path, "a", encoding="utf-8") as f:
                f.write("".join(k.line() + "\n" for k in fresh))
            self.handed.update(fresh)
        for doc in docs:
            if (doc.get("run") or {}).get("ended") and all(k in self.handed for k, _ev in keyed_events(doc)):
                self.finished.add(str(doc["run"]["id"]))
        if result.spooled:
            log.warning("event=openlineage-spooled endpoint=%s reason=%r spooled=%d spool=%s", self.where,
                        result.reason, len(result.spooled), self.spool.path)
        elif result.sent:
            log.info("event=openlineage-sent endpoint=%s sent=%d from_spool=%d", self.where, result.sent,
                     result.from_spool)
        return result

    def close(self) -> None:
        self.client.close()


def _from_spool(pending: list[EventKey], load_doc) -> tuple[list, list[EventKey]]:
    """(key, event) for each spooled key, rebuilt from its run; and the keys kept as they
    are because their run cannot be read now."""
    events: dict[str, dict] = {}
    kept: list[EventKey] = []
    queue = []
    for key in pending:
        if key.run not in events:
            try:
                events[key.run] = dict(keyed_events(load_doc(key.run)))
            except TracerError as e:
                log.warning("event=openlineage-spool-unreadable run=%s error=%r", key.run, str(e))
                events[key.run] = {}
        ev = events[key.run].get(key)
        if ev is not None:
            queue.append((key, ev))
        elif events[key.run]:  # the run is there, but builds no such event: a bug, said loudly
            log.error("event=openlineage-spool-unknown run=%s runId=%s type=%s", key.run, key.run_id,
                      key.event_type)
            kept.append(key)
        else:
            kept.append(key)
    return queue, kept


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _reason(e: BaseException) -> str:
    """A short cause: what a person can act on, not the transport's nested repr."""
    text = str(e)
    response = getattr(e, "response", None)
    if getattr(response, "status_code", None) is not None:
        return f"HTTP {response.status_code}"
    for needle, said in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("Name or service not known", "unknown host"), ("too many 5", "HTTP 5xx")):
        if needle in text:
            return said
    return f"{type(e).__name__}: {_one_line(e)[:120]}"
