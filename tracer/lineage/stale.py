"""Staleness: which runs and cells consumed file versions that have since been superseded.

A *unit* is a run, or one cell of a notebook run. Its inputs are the file
versions its reads were bound to (lineage/versions.py), its outputs the last
version it wrote or renamed into place on each path. Each is followed forward
through renames made by any traced run (an output moved by a later run is
not "deleted"; an input moved and then rewritten is), to the version that
holds its bytes last, and judged:

- that version superseded by another unit's write -> "rewritten by run X"
  ("content" says whether the bytes on disk now differ);
- superseded by a change made outside tracing, or now different from its
  fingerprint (sha256 when recorded, else size/mtime/inode) -> "content changed"
  (an input) or "modified since" (an output);
- gone (deleted outside tracing, or by another unit) -> "deleted"; an output a
  later traced run replaced or deleted belongs to that run and is not judged;
- an input version whose bytes were produced by a process (or cell) that had
  itself read a superseded or stale version before writing them ->
  "upstream stale", naming the unit that produced it. Staleness travels
  through the versions consumed, not whole runs: a fresh output of a run
  with some stale inputs stays fresh when its writer read none of them.

What cannot be judged (no fingerprint, not a regular file, a symlink,
unreadable now) is listed under `unchecked`, never guessed. Files are read
now as each run's owner (its header's uid) would read them, never with more
privilege, and a symlink is never followed (store/fingerprint.py).

An input whose content changed and whose consumed version has a schema
(store/schema.py) carries `drift` (lineage/drift.py): how its columns
changed from the version the unit read to the file now. The result's
top-level `drift` lists each drifted file once, with the units that
consumed its old schema.

`uid` limits the whole computation to that user's runs (the daemon passes its
caller's): other runs' writes are then not seen, so an input another user
rewrote shows as "content changed", never as "rewritten by run X".
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..model.paths import display, to_json
from ..privs import Creds
from ..store import sqlite as S
from ..store.fingerprint import HashCache, fingerprint, schema_policy
from ..store.schema import format_of
from .drift import changed as drift_changed
from .drift import drift
from .drift import summary as drift_summary
from .versions import READ_BITS, WRITE_BITS, Act, FileRec, Model, Version

_JUDGED_KINDS = ("d", "t")  # data and temp, as the writer codes them
_SHOWN_REASONS = 4
_HOPS = 256  # renames followed from one version


@dataclass(frozen=True, order=True)
class Unit:
    rid: int
    cell: str | None = None


def _unit_of(act: Act) -> Unit:
    """The finest unit of an activity: its cell when it had one."""
    return Unit(act.rid, act.cell)


def _mine(unit: Unit, act: Act | None) -> bool:
    """Whether act belongs to unit (a run holds all its cells)."""
    if act is None:
        return False
    return act.rid == unit.rid and (unit.cell is None or act.cell == unit.cell)


class _Runs:
    """Every run's id, owner and cells; each unit's reads and writes (FILE records, renames)."""

    def __init__(self, store: S.Store, model: Model) -> None:
        self.m = model
        self.ids: dict[int, str] = dict(store.db.execute("SELECT rid, id FROM runs"))
        self.uid: dict[int, int | None] = {}
        self.cells: dict[int, list[str]] = {}
        for rid, kind, body in store.db.execute(
                "SELECT rid, kind, body FROM records WHERE kind IN (?,?) ORDER BY seq", (S.RUN_START, S.CELL)):
            b = json.loads(body)
            if kind == S.RUN_START:
                self.ids[rid] = b.get("id", self.ids.get(rid, str(rid)))
                self.uid[rid] = b.get("uid") if isinstance(b.get("uid"), int) else None
            elif b.get("id") is not None and b["id"] not in self.cells.setdefault(rid, []):
                self.cells[rid].append(b["id"])
        self.rids = sorted(r for r in set(self.ids) | set(self.uid) if model.sees(r))

    def units(self) -> list[Unit]:
        out = []
        for rid in self.rids:
            out.append(Unit(rid))
            out.extend(Unit(rid, c) for c in self.cells.get(rid, []))
        return out

    def files(self, unit: Unit) -> list[FileRec]:
        cells = self.cells.get(unit.rid, [])
        return [f for f in self.m.run_files(unit.rid) if f.kind in _JUDGED_KINDS and (
            unit.cell is None or (f.act.cell == unit.cell and unit.cell in cells))]

    def inputs(self, unit: Unit) -> dict[str, list[Version]]:
        """path -> the versions the unit read there, not counting its own output."""
        out: dict[str, list[Version]] = {}
        for f in self.files(unit):
            if f.bits & READ_BITS:
                v = self.m.read_version(f)
                seen = out.setdefault(f.path, [])
                if v is not None and not _mine(unit, _writer_act(self.m, v)) and v not in seen:
                    seen.append(v)
        return out

    def outputs(self, unit: Unit) -> dict[str, Version | None]:
        """path -> the last version the unit wrote or renamed there."""
        out: dict[str, Version | None] = {}
        for f in self.files(unit):
            if f.bits & WRITE_BITS:
                _keep_last(out, f.path, self.m.written_version(f))
        for src, dst, ev in self.m.renames_by(("cell", unit.rid, unit.cell) if unit.cell is not None
                                              else ("run", unit.rid, None)):
            _keep_last(out, dst, self.m.history(dst).made_by(ev.act, ev.t))
        return out

    def label(self, unit: Unit) -> dict:
        return {"run": self.ids.get(unit.rid, str(unit.rid)), "cell": unit.cell}

    def name(self, unit: Unit) -> str:
        run = f"run {self.ids.get(unit.rid, unit.rid)}"
        return f"{run} cell {unit.cell}" if unit.cell is not None else run


def _keep_last(out: dict, path: str, v: Version | None) -> None:
    if path not in out or (v is not None and (out[path] is None or v.start > out[path].start)):
        out[path] = v


def _writer(model: Model, v: Version | None) -> Version | None:
    """The version whose write produced v's bytes: renames followed back (None: moved
    from nowhere known)."""
    for _ in range(_HOPS):
        if v is None or v.how != "rename":
            return v
        v = model.renamed_from(v)
    return None


def _writer_act(model: Model, v: Version) -> Act | None:
    w = _writer(model, v)
    return w.act if w is not None else None


def _final(model: Model, v: Version) -> tuple[Version, list[Act]]:
    """Where v's bytes went: renames followed forward; and who made those renames."""
    movers = []
    for _ in range(_HOPS):
        nxt = model.renamed_to(v)
        if not nxt:
            break
        v = nxt[0]
        movers.append(v.act)
    return v, movers


def _successor(model: Model, v: Version) -> Version | None:
    """The first version on v's path after v ended."""
    versions = model.history(v.path).versions
    return versions[v.n] if v.end is not None and v.n < len(versions) else None  # in time order


def _content_fp(model: Model, v: Version) -> Version:
    """The version that holds v's fingerprint (itself, or where a rename took it from)."""
    for _ in range(_HOPS):
        if v.fp is not None or v.fp_problem is not None or v.how != "rename":
            return v
        src = model.renamed_from(v)
        if src is None:
            return v
        v = src
    return v


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
    def __init__(self, runs: _Runs) -> None:
        self.r = runs
        self.m = runs.m
        self._now: dict[tuple[int | None, str], dict] = {}
        self._cache: HashCache = {}
        self._creds: dict[int, Creds] = {}
        self.signatures: dict[str, tuple] = {}  # path -> its stat just before it was judged
        self._schemas: dict[tuple[int | None, str], dict | None] = {}
        self._schema_policy = None
        self._tainted: dict[int, Unit | None] = {}  # id(version) -> the unit that made it stale

    def now(self, unit: Unit, path: str) -> dict:
        """path as it is now, as the unit's owner sees it: never with more
        privilege than the owner has, so `stale` is no oracle on others' files."""
        uid = self.r.uid.get(unit.rid)
        if uid == os.geteuid():
            uid = None  # ourselves: nothing to take on
        if (uid, path) not in self._now:
            if uid is not None and uid not in self._creds:
                self._creds[uid] = Creds.of_user(uid)
            self.signatures[path] = _stat_signature(path)
            self._now[(uid, path)] = fingerprint(path, self._cache, creds=self._creds.get(uid))
        return self._now[(uid, path)]

    def check(self, unit: Unit, path: str, v: Version | None, role: str) -> tuple[dict | None, dict | None]:
        """(reason, unchecked) for one input or output version of a unit."""
        if v is None:
            return None, None
        end, movers = _final(self.m, v)
        if role == "output" and movers and _mine(unit, movers[0]):
            return None, None  # renamed by the unit itself: judged under the name it gave it
        moved = {"now_at": display(end.path)} if end.path != path else {}
        nxt = _successor(self.m, end)
        if end.end is not None and nxt is not None and nxt.act is not None:
            if _mine(unit, nxt.act):
                return None, None  # superseded by the unit itself (an update in place)
            if role == "output":
                return None, None  # a later traced run now owns the file
            status = self._status(unit, end)[0]
            by = _unit_of(nxt.act)
            return _reason(path, role, f"rewritten by {self.r.name(by)}", by=self.r.label(by),
                           content=status if status != "unknown" else "unknown", **moved), None
        if end.end is not None and nxt is None and end.ended_by is not None:
            if _mine(unit, end.ended_by) or role == "output":
                return None, None  # a temporary the unit removed, or a later run's decision
            return _reason(path, role, "deleted", **moved), None
        if end.end is not None and nxt is not None:  # changed outside tracing, seen by a fingerprint
            return _reason(path, role, "content changed" if role == "input" else "modified since",
                           basis="fingerprint", **moved), None
        holder = _content_fp(self.m, end)
        if holder.fp_problem is not None or holder.fp is None:
            why = ("no fingerprint recorded" if holder.fp is None and holder.fp_problem is None
                   else f"not fingerprinted: {holder.fp_problem}")
            return None, {**to_json(path), "role": role, "why": why}
        status, basis = self._status(unit, end)
        if status == "unknown":
            return None, {**to_json(path), "role": role, "why": basis}
        if status == "same":
            return None, None
        why = "deleted" if status == "deleted" else (
            "content changed" if role == "input" else "modified since")
        return _reason(path, role, why, basis=basis, **moved), None

    def drift(self, unit: Unit, v: Version, reason: dict | None) -> dict | None:
        """How the columns of an input changed, from the version the unit read to
        the file now; None when the reason is no content change or either side
        has no schema."""
        if reason is None or reason["role"] != "input" or not (
                reason["why"] == "content changed" or reason.get("content") == "changed"):
            return None
        held = _content_fp(self.m, v).fp or {}
        path = _final(self.m, v)[0].path
        if not held.get("schema") or format_of(path) is None:
            return None
        d = drift(held["schema"], self.now_schema(unit, path))
        if d is not None:
            d["from_sha256"] = held.get("sha256")
        return d

    def now_schema(self, unit: Unit, path: str) -> dict | None:
        """The schema of path now, read as the unit's owner, within the schema policy."""
        uid = self.r.uid.get(unit.rid)
        uid = None if uid == os.geteuid() else uid
        if (uid, path) not in self._schemas:
            if self._schema_policy is None:
                self._schema_policy = schema_policy()
            if not self._schema_policy.enabled:
                self._schemas[(uid, path)] = None
            else:
                if uid is not None and uid not in self._creds:
                    self._creds[uid] = Creds.of_user(uid)
                fp = fingerprint(path, self._cache, creds=self._creds.get(uid), schema=self._schema_policy)
                self._schemas[(uid, path)] = fp.get("schema")
        return self._schemas[(uid, path)]

    def _status(self, unit: Unit, v: Version) -> tuple[str, str | None]:
        holder = _content_fp(self.m, v)
        if holder.fp is None:
            return "unknown", "no fingerprint recorded"
        return _compare(holder.fp, self.now(unit, v.path))

    def tainted(self, v: Version) -> Unit | None:
        """The unit that produced v's bytes, when it did so from a superseded or
        stale version (None: v is sound as far as the store can tell)."""
        w = _writer(self.m, v)
        if w is None or w.act is None:
            return None
        key = id(w)
        if key in self._tainted:
            return self._tainted[key]
        self._tainted[key] = None  # a cycle says nothing new
        producer = _unit_of(w.act)
        bad = None
        for f in self.m.files_of(w.act.unit):
            if not (f.bits & READ_BITS and f.kind in _JUDGED_KINDS and f.first <= w.start[0]):
                continue
            r = self.m.read_version(f)
            if r is None or _mine(producer, _writer_act(self.m, r)):
                continue
            reason, _skip = self.check(producer, f.path, r, "input")
            if reason is not None or self.tainted(r) is not None:
                bad = producer
                break
        self._tainted[key] = bad
        return bad


def _reason(path: str, role: str, why: str, **extra) -> dict:
    return {**to_json(path), "role": role, "why": why, **{k: v for k, v in extra.items() if v}}


def staleness(store: S.Store, rid: int | None = None, *, uid: int | None = None,
              looked_at: dict[str, tuple] | None = None, config=None) -> dict:
    """{"stale": [...], "fresh": [...]} for every unit of the store, or of one run.

    uid: judge over that uid's runs only (None: all). looked_at, when given, is
    filled with the files compared against their state now, each with its stat
    signature from before it was read (see StaleCache). config: its [classify]
    rules decide which files are judged."""
    model = Model(store, uid, config=config)
    runs = _Runs(store, model)
    judge = _Judge(runs)
    stale, fresh = [], []
    drifts: dict[tuple[str, str | None], dict] = {}
    for u in runs.units():
        if rid is not None and u.rid != rid:
            continue
        reasons, unchecked = [], []
        inputs, outputs = runs.inputs(u), runs.outputs(u)
        for path in sorted(inputs):
            if path in outputs and not inputs[path]:
                continue
            for v in inputs[path]:
                reason, skip = judge.check(u, path, v, "input")
                d = judge.drift(u, v, reason)
                if d is not None:
                    reason["drift"] = d
                    _note_drift(drifts, reason, runs.label(u))
                reasons += [reason] if reason else []
                unchecked += [skip] if skip else []
                by = judge.tainted(v)
                if by is not None:
                    reasons.append(_reason(path, "input", "upstream stale", **{"from": runs.label(by)}))
        for path in sorted(outputs):
            reason, skip = judge.check(u, path, outputs[path], "output")
            reasons += [reason] if reason else []
            unchecked += [skip] if skip else []
        if reasons:
            stale.append({**runs.label(u), "reasons": reasons, "unchecked": unchecked})
        else:
            fresh.append({**runs.label(u), "inputs": len(inputs), "outputs": len(outputs),
                          "unchecked": unchecked})
    if looked_at is not None:
        looked_at.update(judge.signatures)
    return {"stale": stale, "fresh": fresh, "drift": list(drifts.values())}


def _note_drift(drifts: dict, reason: dict, consumer: dict) -> None:
    """One entry per drifted file version, naming every unit that read that version."""
    if not drift_changed(reason["drift"]):
        return
    then = reason["drift"].get("from_sha256")
    entry = drifts.setdefault((reason["path"], then), {
        **{k: reason[k] for k in ("path", "path_b64") if k in reason}, "sha256": then,
        **({"now_at": reason["now_at"]} if reason.get("now_at") else {}),
        "breaking": reason["drift"]["breaking"], "words": reason["drift"]["words"],
        "consumers": []})
    if consumer not in entry["consumers"]:
        entry["consumers"].append(consumer)


def plan(result: dict, runs: dict[str, dict]) -> list[dict]:
    """What to re-run, in order: each run with something stale, once, in the order
    the runs ran (a producer always ran before what read its output), with its
    stale cells and, where known, its command line and folder."""
    order = {run_id: i for i, run_id in enumerate(runs)}
    steps: dict[str, dict] = {}
    for u in result["stale"]:
        step = steps.setdefault(u["run"], {"run": u["run"], "cells": [], "why": []})
        if u["cell"] is not None:
            step["cells"].append(u["cell"])
        step["why"] += [r["why"] for r in u["reasons"] if r["why"] not in step["why"]]
    out = []
    for run_id in sorted(steps, key=lambda r: (order.get(r, len(order)), r)):
        header = runs.get(run_id) or {}
        out.append({**steps[run_id], **{k: header.get(k) for k in ("kind", "label", "argv", "cwd")}})
    return out


def render_plan(steps: list[dict]) -> str:
    if not steps:
        return "nothing to re-run: nothing is stale"
    lines = []
    for i, s in enumerate(steps, 1):
        what = " ".join(display(a) for a in s.get("argv") or []) or s.get("label") or "(command not known)"
        cells = f" (cells {', '.join(s['cells'])})" if s["cells"] else ""
        where = f" in {display(s['cwd'])}" if s.get("cwd") else ""
        lines.append(f"{i}. run {s['run']}{cells}{where}: {what}   [{'; '.join(s['why'])}]")
    return "\n".join(lines)


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
        who = f"run {s['run']}" + (f" cell {s['cell']}" if s["cell"] is not None else "") + _on_host(s)
        parts = [f"{r['path']}: {why_text(r)}" for r in s["reasons"]]
        more = len(parts) - _SHOWN_REASONS
        text = "; ".join(parts[:_SHOWN_REASONS]) + (f"; +{more} more (see --json)" if more > 0 else "")
        lines.append(f"stale {who}: {text}")
    for d in result.get("drift", []):
        readers = ", ".join(f"run {c['run']}" + (f" cell {c['cell']}" if c["cell"] else "")
                            for c in d["consumers"])
        lines.append(f"drift {d['path']}: {drift_summary(d)} (read before the change by {readers})")
    n_unchecked = sum(len(x["unchecked"]) for x in result["stale"] + result["fresh"])
    summary = f"{len(result['stale'])} stale, {len(result['fresh'])} fresh"
    if n_unchecked:
        summary += f" ({n_unchecked} file(s) could not be checked; see --json)"
    return "\n".join(lines + [summary])


def _on_host(unit: dict) -> str:
    """' on host H' for a unit of the fleet store (tracer/fleet/stale.py), else nothing."""
    return f" on host {unit['host_id']}" if unit.get("host_id") else ""


def why_text(r: dict) -> str:
    why = r["why"]
    if r["role"] == "output" and why == "deleted":
        why = "output deleted"
    if why == "upstream stale":
        src = r["from"]
        why += f" (from run {src['run']}" + (f" cell {src['cell']}" if src["cell"] else "") + _on_host(src) + ")"
    if r.get("content") and r["why"].startswith("rewritten"):
        why += f", content {r['content']}"
    if r.get("basis"):
        why += f" ({r['basis']})"
    if drift_changed(r.get("drift")):
        why += f" [{drift_summary(r['drift'])}]"
    return display(why)
