"""Staleness: which runs and cells have inputs that changed after they ran.

A *unit* is a run, or one cell of a notebook run. A unit's inputs are the
data files it read; its outputs the data files it wrote or renamed into place.
Each is judged against the FINGERPRINT taken when the unit ended
(store/fingerprint.py) and the store's later writes:

- input rewritten by another unit after the fingerprint -> "rewritten by run X"
  (the most recent such writer is named; "content" says whether bytes differ);
- input now different (sha256 when recorded, else size/mtime/inode) -> "content changed";
- input gone -> "deleted";
- output changed or gone with no traced writer since -> "modified since" / "deleted";
- an input whose producer (the last unit that wrote it before it was read)
  is stale -> "upstream stale", transitively, over a networkx graph of units.

What cannot be judged (no fingerprint, not a regular file, a symlink,
unreadable now) is listed under `unchecked`, never guessed. Files are read
now as each run's owner (its header's uid) would read them, never with more
privilege, and a symlink is never followed (store/fingerprint.py).

`rids` limits the whole computation to some runs (the daemon passes a user's
own runs): other runs' writes are then not seen, so an input another user
rewrote shows as "content changed", never as "rewritten by run X".
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx

from ..correlate.clock import parse_iso
from ..model.paths import display, to_json
from ..privs import Creds
from ..store import sqlite as S
from ..store.fingerprint import HashCache, fingerprint
from ..store.writer import ACCESS_BITS

_WRITE_BITS = ACCESS_BITS["write"] | ACCESS_BITS["create"] | ACCESS_BITS["truncate"]
_READ_BITS = ACCESS_BITS["read"]
_JUDGED_KINDS = ("d", "t")  # data and temp, as the writer codes them
_SHOWN_REASONS = 4
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True, order=True)
class Unit:
    rid: int
    cell: str | None = None


@dataclass
class _Run:
    rid: int
    id: str
    uid: int | None = None  # the run's owner: its files are judged as that user sees them
    base_us: int = 0
    ended_us: int | None = None
    cells: dict[str, int | None] = field(default_factory=dict)  # id -> ended_us
    fps: dict[tuple[str, str | None], dict] = field(default_factory=dict)
    # unit -> path -> last read / write time (us)
    reads: dict[Unit, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    writes: dict[Unit, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))


@dataclass(frozen=True)
class _Write:
    unit: Unit  # the finest unit: the cell when the write had one
    first_us: int
    last_us: int


def _iso_us(text: str | None) -> int | None:
    if not text:
        return None
    try:
        when = parse_iso(text)
    except ValueError:
        return None
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


class _Facts:
    """One pass over the store: every run's data accesses, renames, cells, fingerprints."""

    def __init__(self, store: S.Store, rids: Iterable[int] | None = None) -> None:
        self.runs: dict[int, _Run] = {}
        self.writes: dict[str, list[_Write]] = defaultdict(list)
        kinds = (S.RUN_START, S.RUN_END, S.FILE, S.RENAME, S.CELL, S.FINGERPRINT)
        # Within a run, records come in chain order (RUN_START and CELL before
        # the accesses that need them); the order across runs does not matter.
        sources = [store.records(kinds=kinds)] if rids is None else \
            [store.records(rid=rid, kinds=kinds) for rid in sorted(set(rids))]
        for records in sources:
            for _seq, rid, kind, p1, p2, body in records:
                self._add(rid, kind, p1, p2, json.loads(body))

    def _run(self, rid: int) -> _Run:
        return self.runs.setdefault(rid, _Run(rid, str(rid)))

    def _units(self, run: _Run, cell: str | None) -> tuple[Unit, ...]:
        return (Unit(run.rid), Unit(run.rid, cell)) if cell in run.cells else (Unit(run.rid),)

    def _add(self, rid: int, kind: int, p1: str | None, p2: str | None, b) -> None:
        run = self._run(rid)
        if kind == S.RUN_START:
            run.id, run.base_us = b.get("id", run.id), b.get("start_us") or 0
            run.uid = b.get("uid") if isinstance(b.get("uid"), int) else None
        elif kind == S.RUN_END:
            run.ended_us = _iso_us(b.get("ended"))
        elif kind == S.CELL and b.get("id") is not None:
            run.cells[b["id"]] = _iso_us(b.get("ended"))
        elif kind == S.FINGERPRINT:
            run.fps[(p1, b.get("cell"))] = b
        elif kind == S.FILE and b[7] in _JUDGED_KINDS:
            _pid, bits, _br, _bw, first, last, cell, _code = b
            first_us, last_us = run.base_us + (first or 0), run.base_us + (last or 0)
            units = self._units(run, cell)
            if bits & _READ_BITS:
                for u in units:
                    run.reads[u][p1] = max(run.reads[u].get(p1, 0), last_us)
            if bits & _WRITE_BITS:
                self._wrote(run, units, p1, first_us, last_us)
        elif kind == S.RENAME:
            t_us = run.base_us + (b[1] or 0)
            self._wrote(run, self._units(run, b[2]), p1, t_us, t_us)

    def _wrote(self, run: _Run, units: tuple[Unit, ...], path: str, first_us: int, last_us: int) -> None:
        for u in units:
            run.writes[u][path] = max(run.writes[u].get(path, 0), last_us)
        self.writes[path].append(_Write(units[-1], first_us, last_us))

    def units(self) -> list[Unit]:
        out = []
        for rid in sorted(self.runs):
            out.append(Unit(rid))
            out.extend(Unit(rid, c) for c in self.runs[rid].cells)
        return out

    def baseline(self, unit: Unit, path: str) -> dict | None:
        fps = self.runs[unit.rid].fps
        found = fps.get((path, unit.cell)) or fps.get((path, None))
        if found is None and unit.cell is None:
            found = next((fp for (p, _c), fp in reversed(fps.items()) if p == path), None)
        return found

    def ended_us(self, unit: Unit) -> int | None:
        run = self.runs[unit.rid]
        return run.cells.get(unit.cell) if unit.cell is not None else run.ended_us

    def label(self, unit: Unit) -> dict:
        return {"run": self.runs[unit.rid].id, "cell": unit.cell}


def _other(writer: Unit, unit: Unit) -> bool:
    """Whether a write by `writer` counts as someone else's for `unit`."""
    if unit.cell is None:
        return writer.rid != unit.rid
    return writer != unit


def _compare(then: dict, now: dict) -> tuple[str, str | None]:
    """('same'|'changed'|'deleted'|'unknown', basis or why)."""
    if now.get("error") == "vanished":
        return "deleted", None
    if now.get("error"):
        return "unknown", f"unreadable now: {now['error']}"
    if then.get("sha256") and now.get("sha256"):
        return ("same" if then["sha256"] == now["sha256"] else "changed"), "sha256"
    if then.get("sha256") and then.get("size_bytes") != now.get("size_bytes"):
        return "changed", "size"
    keys = ("size_bytes", "mtime_ns", "inode", "dev")
    return ("same" if all(then.get(k) == now.get(k) for k in keys) else "changed"), "size/mtime/inode"


class _Judge:
    def __init__(self, facts: _Facts) -> None:
        self.f = facts
        self._now: dict[tuple[int | None, str], dict] = {}
        self._cache: HashCache = {}
        self._creds: dict[int, Creds] = {}
        self.signatures: dict[str, tuple] = {}  # path -> its stat just before it was judged

    def now(self, unit: Unit, path: str) -> dict:
        """path as it is now, as the unit's owner sees it: never with more
        privilege than the owner has, so `stale` is no oracle on others' files."""
        uid = self.f.runs[unit.rid].uid
        if uid == os.geteuid():
            uid = None  # ourselves: nothing to take on
        if (uid, path) not in self._now:
            if uid is not None and uid not in self._creds:
                self._creds[uid] = Creds.of_user(uid)
            self.signatures[path] = _stat_signature(path)
            self._now[(uid, path)] = fingerprint(path, self._cache, creds=self._creds.get(uid))
        return self._now[(uid, path)]

    def later_writer(self, unit: Unit, path: str, after_us: int) -> _Write | None:
        later = [w for w in self.f.writes.get(path, ()) if _other(w.unit, unit) and w.last_us > after_us]
        return max(later, key=lambda w: w.last_us, default=None)

    def check(self, unit: Unit, path: str, role: str, used_us: int) -> tuple[dict | None, dict | None]:
        """(reason, unchecked) for one input or output path of a unit."""
        base = self.f.baseline(unit, path)
        after = (base or {}).get("at_us") or self.f.ended_us(unit) or used_us
        writer = self.later_writer(unit, path, after)
        if base is not None and base.get("error") == "vanished":
            return None, None  # gone when the unit ended (a temporary): nothing to judge
        if base is None or base.get("error") or base.get("type") != "file":
            why = ("no fingerprint recorded" if base is None else
                   f"not fingerprinted: {base.get('error') or base.get('hash_skipped')}")
            if writer and role == "input":
                return _reason(path, role, f"rewritten by {_name(self.f, writer.unit)}",
                               by=self.f.label(writer.unit), content="unknown"), None
            return None, {**to_json(path), "role": role, "why": why}
        status, basis = _compare(base, self.now(unit, path))
        if writer:
            if role == "output":
                return None, None  # superseded: the later run now owns the file
            return _reason(path, role, f"rewritten by {_name(self.f, writer.unit)}",
                           by=self.f.label(writer.unit), content=status), None
        if status == "unknown":
            return None, {**to_json(path), "role": role, "why": basis}
        if status == "same":
            return None, None
        why = "deleted" if status == "deleted" else (
            "content changed" if role == "input" else "modified since")
        return _reason(path, role, why, basis=basis), None


def _reason(path: str, role: str, why: str, **extra) -> dict:
    return {**to_json(path), "role": role, "why": why, **{k: v for k, v in extra.items() if v}}


def _name(facts: _Facts, unit: Unit) -> str:
    run = f"run {facts.runs[unit.rid].id}"
    return f"{run} cell {unit.cell}" if unit.cell is not None else run


def _producer(facts: _Facts, unit: Unit, path: str, read_last_us: int) -> Unit | None:
    """The unit that last wrote path before `unit` read it (None: outside any trace)."""
    run_of = unit.rid
    cands = [w for w in facts.writes.get(path, ()) if w.first_us <= read_last_us
             and (w.unit.rid != run_of or (unit.cell is not None and w.unit.cell not in (None, unit.cell)))]
    best = max(cands, key=lambda w: w.last_us, default=None)
    return best.unit if best else None


def staleness(store: S.Store, rid: int | None = None, *, rids: Iterable[int] | None = None,
              looked_at: dict[str, tuple] | None = None) -> dict:
    """{"stale": [...], "fresh": [...]} for every unit of the store, or of one run.

    rids: judge over these runs only (None: all). looked_at, when given, is
    filled with the files compared against their state now, each with its
    stat signature from before it was read (see StaleCache)."""
    facts = _Facts(store, rids)
    judge = _Judge(facts)
    units = facts.units()
    reasons: dict[Unit, list[dict]] = {u: [] for u in units}
    unchecked: dict[Unit, list[dict]] = {u: [] for u in units}
    g = nx.DiGraph()
    g.add_nodes_from(units)
    for u in units:
        run = facts.runs[u.rid]
        outputs = run.writes.get(u, {})
        for role, paths in (("input", run.reads.get(u, {})), ("output", outputs)):
            for path, used_us in sorted(paths.items()):
                if role == "input" and path in outputs:
                    continue  # updated in place: judged as an output
                reason, skip = judge.check(u, path, role, used_us)
                reasons[u] += [reason] if reason else []
                unchecked[u] += [skip] if skip else []
                producer = _producer(facts, u, path, used_us) if role == "input" else None
                if producer is not None and producer in g:
                    g.add_edge(producer, u, path=path)
    stale = {u for u in units if reasons[u]}
    for u in list(stale):
        stale |= nx.descendants(g, u)
    for v in stale:
        for p in sorted(g.predecessors(v)):
            if p in stale and p != v:
                path = g.edges[p, v]["path"]
                reasons[v].append(_reason(path, "input", "upstream stale", **{"from": facts.label(p)}))
    wanted = [u for u in units if rid is None or u.rid == rid]
    if looked_at is not None:
        looked_at.update(judge.signatures)
    return {
        "stale": [{**facts.label(u), "reasons": reasons[u], "unchecked": unchecked[u]}
                  for u in wanted if u in stale],
        "fresh": [{**facts.label(u), "inputs": len(facts.runs[u.rid].reads.get(u, {})),
                   "outputs": len(facts.runs[u.rid].writes.get(u, {})), "unchecked": unchecked[u]}
                  for u in wanted if u not in stale],
    }


def _stat_signature(path: str) -> tuple:
    """What changes when a file's content may have: identity, size, times, mode
    (of the last component itself: symlinks are never followed when judging)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return ("error", e.errno)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


class StaleCache:
    """Reuses a staleness answer while neither the store nor a file it compared has changed.

    The caller keys an answer by who asks, which run, and the store's head
    hash (any new record changes it). A hit is checked by stat'ing again every
    file the answer compared, which is cheap next to reading the store and
    hashing, so an edit made outside any trace still shows at once. Callers
    asking the same question at the same time wait for one computation.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.hits = 0
        self._entries: OrderedDict[tuple, tuple[dict, dict[str, tuple]]] = OrderedDict()
        self._computing: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, compute: Callable[[dict[str, tuple]], dict]) -> dict:
        """The cached answer for key, or compute(looked_at) stored under it."""
        with self._lock:
            flight = self._computing.setdefault(key, threading.Lock())
        try:
            with flight:
                found = self._valid(key)
                if found is not None:
                    return found
                looked_at: dict[str, tuple] = {}
                result = compute(looked_at)
                with self._lock:
                    self._entries[key] = (result, looked_at)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
                return result
        finally:
            with self._lock:
                self._computing.pop(key, None)

    def _valid(self, key: tuple) -> dict | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        result, signatures = entry
        if any(_stat_signature(p) != sig for p, sig in signatures.items()):
            return None
        self.hits += 1
        return result


def render(result: dict) -> str:
    """One line per stale run or cell, with its reasons; then a count."""
    lines = []
    for s in result["stale"]:
        who = f"run {s['run']}" + (f" cell {s['cell']}" if s["cell"] is not None else "")
        parts = [f"{r['path']}: {_why_text(r)}" for r in s["reasons"]]
        more = len(parts) - _SHOWN_REASONS
        text = "; ".join(parts[:_SHOWN_REASONS]) + (f"; +{more} more (see --json)" if more > 0 else "")
        lines.append(f"stale {who}: {text}")
    n_unchecked = sum(len(x["unchecked"]) for x in result["stale"] + result["fresh"])
    summary = f"{len(result['stale'])} stale, {len(result['fresh'])} fresh"
    if n_unchecked:
        summary += f" ({n_unchecked} file(s) could not be checked; see --json)"
    return "\n".join(lines + [summary])


def _why_text(r: dict) -> str:
    why = r["why"]
    if r["role"] == "output" and why == "deleted":
        why = "output deleted"
    if why == "upstream stale":
        src = r["from"]
        why += f" (from run {src['run']}" + (f" cell {src['cell']})" if src["cell"] else ")")
    if r.get("content") and r["why"].startswith("rewritten"):
        why += f", content {r['content']}"
    if r.get("basis"):
        why += f" ({r['basis']})"
    return display(why)
