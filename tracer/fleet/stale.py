"""Staleness over the fleet: runs and cells, on any host, that read a file
version which was replaced afterwards, anywhere in the fleet.

The rules are those of lineage/stale.py, judged from what the hosts shipped
instead of from the files on this machine:

- A *unit* is a run, or one cell of a notebook run, on its host.
- Each data read (a FILE record with the read bit, of kind data or temp) saw
  the version its file key held when the read began: the one made by the
  last write to that key, on any host, that closed before it (a file on a
  shared filesystem has one key on every host, so hosts meet at it).
- The read is superseded by the first event on that key after it began: a
  write or a rename onto it ("rewritten by run X on host H"), or a delete
  ("deleted"). One made by the unit itself (an update in place) is not.
- With no later traced event, the last fingerprint any host took of the key
  (at a run's or cell's end) differing from the first one taken after the
  read (normally the reader's own, at its end: what it read) says the
  content changed outside tracing ("content changed", basis "fingerprint").
  The file as it is on disk now is not read: it may not be on this machine
  at all, so an outside change shows once a later run on any host has
  fingerprinted the file.
- A version written by a process (or cell) that had read a superseded or
  upstream-stale version before writing it makes its readers "upstream
  stale", naming the producer.

Not judged over the fleet (docs/fleet.md): outputs (what a later run or an
outside change did to a unit's own output), an input followed through the
renames that moved it away, and schema drift.

The data is one SQL query over the central schema (accesses, renames, and
the FINGERPRINT records by path); what the connecting role may see is what
row-level security lets it see, so another user's rewrite shows only as a
fingerprint change, as the local `stale` shows it for a uid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..model.paths import to_json
from .query import Central, _path

# One row per data read: the read, the version it saw (its writer and when
# that write closed), the first event that replaced it, and the first and
# last fingerprints of the key taken after the read began.
_READS = """
SELECT r.host_id, r.rid, r.pid, r.cell, r.fkey, r.first_us, r.bits,
       (SELECT p.path FROM paths p WHERE p.host_id = r.host_id AND p.fkey = r.fkey ORDER BY p.path LIMIT 1),
       v.host_id, v.rid, v.pid, v.cell, v.last_us,
       nx.how, nx.host_id, nx.rid, nx.pid, nx.cell, nx.t_us,
       fp.first_fp, fp.last_fp
  FROM accesses r
  LEFT JOIN LATERAL (
    SELECT w.host_id, w.rid, w.pid, w.cell, w.last_us FROM accesses w
     WHERE w.fkey = r.fkey AND w.bits & 14 <> 0 AND w.last_us <= r.first_us
       AND (w.host_id, w.rid, w.pid, w.seq) <> (r.host_id, r.rid, r.pid, r.seq)
     ORDER BY w.last_us DESC LIMIT 1) v ON true
  LEFT JOIN LATERAL (
    SELECT * FROM (
        (SELECT 'write' AS how, w.host_id, w.rid, w.pid, w.cell, w.last_us AS t_us FROM accesses w
          WHERE w.fkey = r.fkey AND w.bits & 14 <> 0 AND w.last_us > r.first_us
          ORDER BY w.last_us LIMIT 1)
        UNION ALL
        (SELECT 'rename', n.host_id, n.rid, n.pid, NULL, n.t_us FROM renames n
          WHERE n.to_key = r.fkey AND n.t_us > r.first_us ORDER BY n.t_us LIMIT 1)
        UNION ALL
        (SELECT 'delete', d.host_id, d.rid, d.pid, d.cell, d.last_us FROM accesses d
          WHERE d.fkey = r.fkey AND d.bits & 16 <> 0 AND d.bits & 14 = 0 AND d.last_us > r.first_us
          ORDER BY d.last_us LIMIT 1)
    ) e ORDER BY e.t_us LIMIT 1) nx ON true
  LEFT JOIN LATERAL (
    SELECT (array_agg(f.body ORDER BY f.at_us))[1] AS first_fp,
           (array_agg(f.body ORDER BY f.at_us DESC))[1] AS last_fp
      FROM (SELECT x.body, (provtrace_jsonb(x.body)->>'at_us')::bigint AS at_us
              FROM paths p JOIN records x ON x.host_id = p.host_id AND x.p1 = p.path AND x.kind = 11
             WHERE p.fkey = r.fkey) f
     WHERE f.at_us >= r.first_us) fp ON nx.how IS NULL
 WHERE r.bits & 1 <> 0 AND r.fkind IN ('d', 't')
 ORDER BY r.host_id, r.rid, r.first_us
"""


@dataclass(frozen=True)
class Act:
    """Who did something: a process of a run on a host, in a cell or not."""

    host: str
    rid: int
    pid: int | None
    cell: str | None

    def unit(self) -> tuple:
        """Its finest unit: (host, rid, cell or None)."""
        return (self.host, self.rid, self.cell)


@dataclass
class Read:
    act: Act
    fkey: str
    first_us: int
    bits: int
    path: str
    version: Act | None       # the writer of the version read (None: there before tracing)
    version_us: int | None    # when that write closed
    next_how: str | None      # 'write', 'rename' or 'delete': what replaced it first
    next_by: Act | None
    first_fp: dict | None
    last_fp: dict | None


def _mine(unit: tuple, act: Act | None) -> bool:
    """Whether act belongs to unit (host, rid, cell or None for the whole run)."""
    if act is None:
        return False
    host, rid, cell = unit
    return act.host == host and act.rid == rid and (cell is None or act.cell == cell)


def _fp(body: str | None) -> dict | None:
    return json.loads(body) if body else None


def _fp_changed(then: dict | None, now: dict | None) -> bool:
    """Whether two fingerprints of one key differ: sha256 when both hold one,
    else size and mtime (inode and device are per host, not per file)."""
    if not then or not now or then.get("error") or now.get("error"):
        return False
    if then.get("sha256") and now.get("sha256"):
        return then["sha256"] != now["sha256"]
    return (then.get("size_bytes"), then.get("mtime_ns")) != (now.get("size_bytes"), now.get("mtime_ns"))


def _reads(c: Central) -> list[Read]:
    out = []
    for (h, rid, pid, cell, fkey, first, bits, raw, vh, vrid, vpid, vcell, vus,
         how, nh, nrid, npid, ncell, _nt, first_fp, last_fp) in c.q(_READS):
        out.append(Read(Act(h, rid, pid, cell), fkey, first, bits,
                        _path(raw) if raw is not None else fkey.split(":", 2)[-1],
                        Act(vh, vrid, vpid, vcell) if vh is not None else None, vus,
                        how, Act(nh, nrid, npid, ncell) if nh is not None else None,
                        _fp(first_fp), _fp(last_fp)))
    return out


class _Fleet:
    """Every visible data read, by unit and by process, and run ids by (host, rid)."""

    def __init__(self, c: Central) -> None:
        self.ids = {(h, rid): rid_s for h, rid, rid_s in c.q("SELECT host_id, rid, id FROM runs")}
        self.reads = _reads(c)
        # data files each unit wrote: per run, and per cell of a notebook run
        self.outputs = {(h, rid, None if whole else cell): n for h, rid, cell, whole, n in c.q(
            "SELECT host_id, rid, cell, grouping(cell) = 1, count(DISTINCT fkey) FROM accesses "
            "WHERE bits & 14 <> 0 AND fkind IN ('d', 't') "
            "GROUP BY GROUPING SETS ((host_id, rid), (host_id, rid, cell)) "
            "HAVING grouping(cell) = 1 OR cell IS NOT NULL")}
        self.by_proc: dict[tuple, list[Read]] = {}
        for r in self.reads:
            self.by_proc.setdefault((r.act.host, r.act.rid, r.act.pid), []).append(r)
        self._tainted: dict[tuple, tuple | None] = {}

    def label(self, unit: tuple) -> dict:
        host, rid, cell = unit
        return {"run": self.ids.get((host, rid), str(rid)), "cell": cell, "host_id": host}

    def name(self, unit: tuple) -> str:
        host, rid, cell = unit
        run = f"run {self.ids.get((host, rid), rid)}"
        return (f"{run} cell {cell}" if cell is not None else run) + f" on host {host}"

    def judge(self, unit: tuple, r: Read) -> dict | None:
        """Why the version r read is stale for unit, or None."""
        if r.next_how is not None:
            if _mine(unit, r.next_by):
                return None  # replaced by the unit itself (an update in place)
            if r.next_how == "delete":
                return _reason(r, "deleted", by=self.label(r.next_by.unit()))
            return _reason(r, f"rewritten by {self.name(r.next_by.unit())}", by=self.label(r.next_by.unit()),
                           **({"how": "renamed over"} if r.next_how == "rename" else {}))
        if _fp_changed(r.first_fp, r.last_fp):
            return _reason(r, "content changed", basis="fingerprint")
        return None

    def tainted(self, writer: Act | None, until_us: int | None) -> tuple | None:
        """The unit that produced a version, when its process (or cell) had read a
        superseded or upstream-stale version before writing it (None: sound)."""
        if writer is None or until_us is None:
            return None
        key = (writer, until_us)
        if key in self._tainted:
            return self._tainted[key]
        self._tainted[key] = None  # a cycle says nothing new
        producer = writer.unit()
        bad = None
        for r in self._producer_reads(writer):
            if r.first_us > until_us or _mine(producer, r.version):
                continue
            if self.judge(producer, r) is not None or self.tainted(r.version, r.version_us) is not None:
                bad = producer
                break
        self._tainted[key] = bad
        return bad

    def _producer_reads(self, writer: Act) -> list[Read]:
        if writer.cell is None:
            return self.by_proc.get((writer.host, writer.rid, writer.pid), [])
        return [r for r in self.reads if r.act.unit() == writer.unit()]


def _reason(r: Read, why: str, **extra) -> dict:
    return {**to_json(r.path), "fkey": r.fkey, "role": "input", "why": why, **extra}


def staleness(c: Central, run: tuple[str, int] | None = None) -> dict:
    """{"stale": [...], "fresh": [...], "drift": []} for every visible unit of
    the fleet, or of one run (host, rid); each entry names its host."""
    fleet = _Fleet(c)
    units: dict[tuple, list[Read]] = {}
    for (host, rid) in sorted(fleet.ids):
        if run is None or run == (host, rid):
            units.setdefault((host, rid, None), [])
    for r in fleet.reads:
        if run is not None and run != (r.act.host, r.act.rid):
            continue
        units.setdefault((r.act.host, r.act.rid, None), []).append(r)
        if r.act.cell is not None:
            units.setdefault(r.act.unit(), []).append(r)
    stale, fresh = [], []
    for unit in sorted(units, key=lambda u: (u[0], u[1], u[2] is not None, u[2] or "")):
        reasons, inputs = [], set()
        for r in units[unit]:
            if _mine(unit, r.version) or (r.version is None and r.bits & 4):
                continue  # its own output read back
            inputs.add(r.fkey)
            reason = fleet.judge(unit, r)
            if reason is not None and reason not in reasons:
                reasons.append(reason)
            by = fleet.tainted(r.version, r.version_us)
            if by is not None:
                up = _reason(r, "upstream stale", **{"from": fleet.label(by)})
                if up not in reasons:
                    reasons.append(up)
        if reasons:
            stale.append({**fleet.label(unit), "reasons": reasons, "unchecked": []})
        else:
            fresh.append({**fleet.label(unit), "inputs": len(inputs), "outputs": fleet.outputs.get(unit, 0),
                          "unchecked": []})
    return {"stale": stale, "fresh": fresh, "drift": [], "store": c.path}
