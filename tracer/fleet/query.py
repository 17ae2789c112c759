"""Query verbs over the central store: every host at once.

Whatever the connecting role may see is what row-level security lets it
see (migrations/0003_visibility.sql): an analyst's role sees its own runs,
the schema's owner all of them. Results name the host of every run,
process and file; a file on a shared filesystem names its filesystem key
and the hosts that touched it.

Lineage is a recursive CTE over `accesses` and `renames` that follows
versions of file keys (a read saw the version made by the last write that
closed before it, on any host), bounded by depth (`--depth` steps) and by
time (`at_us` bounds the first step), under a statement timeout.
"""

from __future__ import annotations

import base64
import json
import os

from ..clock import us_to_iso as iso
from ..errors import RunNotFound
from ..store import queries as Q
from .db import FleetError, connect, errors, first_line, redact
from .identity import Keyer

STATEMENT_TIMEOUT_MS = 30_000
FOREVER_US = 2**62


class Central:
    """A read connection to the central store, as the role the URL names."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = redact(url)  # what error messages name, as a store's path
        self.conn = connect(url, autocommit=True)
        try:
            self.conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            # a walk is many small index lookups: compiling it (JIT) costs more than it saves
            self.conn.execute("SET jit = off")
            if self.conn.execute("SELECT to_regclass('runs')").fetchone()[0] is None:
                raise FleetError(f"{self.path} has no fleet schema; run `provtrace fleet migrate URL` first")
        except errors() as e:
            raise FleetError(f"cannot query {self.path}: {first_line(e)}") from e

    def close(self) -> None:
        self.conn.close()

    def q(self, sql: str, args=()) -> list[tuple]:
        import psycopg  # noqa: PLC0415  (present: connect() succeeded)

        try:
            return self.conn.execute(sql, args).fetchall()
        except psycopg.errors.QueryCanceled as e:
            raise FleetError(f"query on {self.path} ran past {STATEMENT_TIMEOUT_MS // 1000} s and was "
                             "stopped; ask for less (a lower --depth, or --at)") from e
        except errors() as e:
            raise FleetError(f"query on {self.path} failed: {first_line(e)}") from e


# -- runs and show ------------------------------------------------------------

def list_runs(c: Central) -> list[dict]:
    out = []
    for host, rid, rid_s, kind, label, backend, user, uid, started, ended, code, lost, complete, hostname in c.q(
            "SELECT host_id, rid, id, kind, label, backend, \"user\", uid, started, ended, exit_code, "
            "lost_events, complete, hostname FROM runs ORDER BY started NULLS LAST, host_id, rid"):
        out.append({"id": rid_s, "kind": kind, "label": label, "backend": backend, "user": user, "uid": uid,
                    "started": started, "ended": ended, "exit_code": code, "lost_events": lost,
                    "complete": complete, "host_id": host, "hostname": hostname, "rid": rid})
    return out


def resolve_run(c: Central, ref: str) -> tuple[str, int]:
    """RUN, HOST:RUN (a run id, unique prefix, or 'last') -> (host_id, rid)."""
    host, _, run = ref.rpartition(":") if ":" in ref else (None, "", ref)
    where, args = ("", []) if not host else (" AND host_id = %s", [host])
    if run == "last":
        rows = c.q(f"SELECT host_id, rid FROM runs WHERE true{where} ORDER BY started DESC NULLS LAST LIMIT 1",
                   args)
    else:
        rows = c.q(f"SELECT host_id, rid FROM runs WHERE id = %s{where}", [run, *args]) or \
            c.q(f"SELECT host_id, rid FROM runs WHERE id LIKE %s{where}",
                [run.replace("%", "").replace("_", r"\_") + "%", *args])
    if len(rows) == 1:
        return rows[0][0], int(rows[0][1])
    if len(rows) > 1:
        raise RunNotFound(f"{ref} (ambiguous: {len(rows)} runs match; name one as HOST:RUN)", c.path)
    raise RunNotFound(ref, c.path)


class _HostRecords:
    """One host's records, shaped as Store.records() yields them, so that
    store/queries.py builds the provtrace.run/1 document unchanged."""

    def __init__(self, c: Central, host: str) -> None:
        self.c, self.host, self.path = c, host, c.path

    def records(self, rid: int | None = None, kinds=None):
        for seq, r, kind, p1, p2, body in self.c.q(
                "SELECT seq, rid, kind, p1, p2, body FROM records WHERE host_id = %s AND rid = %s ORDER BY seq",
                (self.host, rid)):
            yield seq, r, kind, _path(p1), _path(p2), body


def _path(raw: bytes | None) -> str | None:
    return None if raw is None else os.fsdecode(bytes(raw))


def _raw(entry: dict) -> bytes:
    """A file entry's path as bytes (path_b64 holds them for a name that is not UTF-8)."""
    if entry.get("path_b64"):
        return base64.b64decode(entry["path_b64"])
    return os.fsencode(entry["path"])


def load_run(c: Central, host: str, rid: int, config=None) -> dict:
    """provtrace.run/1 of one run, with the host named on the run, every process and every file."""
    doc = Q.load_run(_HostRecords(c, host), rid, config)
    doc["run"]["host_id"] = host
    for p in doc["processes"]:
        p["host"] = host
    raws = [_raw(f) for f in doc["files"]]
    keys = {bytes(raw): (fkey, shared) for raw, fkey, shared in
            c.q("SELECT path, fkey, shared FROM paths WHERE host_id = %s AND path = ANY(%s)",
                (host, raws or [b""]))}
    for f, raw in zip(doc["files"], raws):
        f["host"] = host
        f["fkey"], f["shared"] = keys.get(raw, (None, False))
    doc["losses"] = losses(c, host)
    return doc


def losses(c: Central, host: str | None = None) -> list[dict]:
    where, args = ("WHERE host_id = %s", (host,)) if host else ("", ())
    return [{"host_id": h, "from": a, "to": b, "reason": r, "detail": d, "noted": n.isoformat()}
            for h, a, b, r, d, n in c.q(f"SELECT host_id, seq_from, seq_to, reason, detail, noted FROM losses "
                                        f"{where} ORDER BY host_id, seq_from", args)]


def hosts(c: Central) -> list[dict]:
    return [{"host_id": h, "head_seq": s, "last_ingest": t.isoformat() if t else None, "backlog": b,
             "losses": n}
            for h, s, t, b, n in c.q("SELECT h.host_id, h.head_seq, h.last_ingest, h.backlog, "
                                     "(SELECT count(*) FROM losses l WHERE l.host_id = h.host_id) "
                                     "FROM hosts h ORDER BY h.host_id")]


# -- lineage ---------------------------------------------------------------------

# The walk goes one file step at a time (tracer/fleet/query.py lineage()):
# each level asks, for all its files at once, the processes of the next
# step, and for those processes the files of the step after. A node already
# expanded is not expanded again, so a walk costs per node and edge it
# reaches; a recursive CTE expands a node once per path that reaches it,
# which in a graph where every step has two inputs doubles at each level.
#
# Versions, as in lineage/versions.py but over file keys of every host: the
# version a file held at a moment began with the last write that created or
# truncated it, or the last rename onto it, before that moment (vs); writes
# that closed from then until the moment made it (appends included). A read
# saw the version held when it began.

# Upstream, from files (key, bound): the writes that made the version held
# at the bound, and the rename that made it.
_UP_FILES = """
SELECT f.key, f.bound, a.host_id, a.rid, a.pid, a.last_us, a.cell, NULL::text
  FROM unnest(%(keys)s::text[], %(bounds)s::bigint[]) f(key, bound)
 CROSS JOIN LATERAL (SELECT coalesce(greatest(
         (SELECT max(x.last_us) FROM accesses x WHERE x.fkey = f.key AND x.bits & 12 <> 0 AND x.last_us <= f.bound),
         (SELECT max(n.t_us) FROM renames n WHERE n.to_key = f.key AND n.t_us <= f.bound)), -1) AS vs) v
  JOIN accesses a ON a.fkey = f.key AND a.bits & 14 <> 0 AND a.last_us <= f.bound AND a.last_us >= v.vs
UNION ALL
SELECT f.key, f.bound, NULL, NULL, NULL, n.t_us, NULL, n.from_key
  FROM unnest(%(keys)s::text[], %(bounds)s::bigint[]) f(key, bound)
 CROSS JOIN LATERAL (SELECT coalesce(greatest(
         (SELECT max(x.last_us) FROM accesses x WHERE x.fkey = f.key AND x.bits & 12 <> 0 AND x.last_us <= f.bound),
         (SELECT max(n.t_us) FROM renames n WHERE n.to_key = f.key AND n.t_us <= f.bound)), -1) AS vs) v
  JOIN renames n ON n.to_key = f.key AND n.t_us <= f.bound AND n.t_us >= v.vs
"""

# Upstream, from processes (host, rid, pid, bound, the file they were reached
# from): the data files each had read before the bound, at the time it read.
_UP_PROCS = """
SELECT p.host_id, p.rid, p.pid, p.bound, p.from_key, a.fkey, a.first_us, a.cell
  FROM unnest(%(hosts)s::text[], %(rids)s::bigint[], %(pids)s::int[], %(bounds)s::bigint[], %(froms)s::text[])
       p(host_id, rid, pid, bound, from_key)
  JOIN accesses a ON a.host_id = p.host_id AND a.rid = p.rid AND a.pid = p.pid
 WHERE a.bits & 1 <> 0 AND a.fkind IN ('d', 't') AND a.first_us <= p.bound AND a.fkey <> p.from_key
"""

# Downstream, the mirror, from files (key, bound, whether it is the file asked
# about): the reads of the version written at the bound (until the next write
# that created or truncated it, or rename onto it: ve), and the rename that
# moved that version. The file asked about stands for all its versions.
_DOWN_FILES = f"""
SELECT f.key, f.bound, a.host_id, a.rid, a.pid, a.first_us, a.cell, NULL::text
  FROM unnest(%(keys)s::text[], %(bounds)s::bigint[], %(roots)s::bool[]) f(key, bound, root)
 CROSS JOIN LATERAL (SELECT CASE WHEN f.root THEN {FOREVER_US} ELSE coalesce(least(
         (SELECT min(x.last_us) FROM accesses x WHERE x.fkey = f.key AND x.bits & 12 <> 0 AND x.last_us > f.bound),
         (SELECT min(n.t_us) FROM renames n WHERE n.to_key = f.key AND n.t_us > f.bound)), {FOREVER_US}) END AS ve) v
  JOIN accesses a ON a.fkey = f.key AND a.bits & 1 <> 0 AND a.first_us >= f.bound AND a.first_us < v.ve
UNION ALL
SELECT f.key, f.bound, NULL, NULL, NULL, n.t_us, NULL, n.to_key
  FROM unnest(%(keys)s::text[], %(bounds)s::bigint[], %(roots)s::bool[]) f(key, bound, root)
 CROSS JOIN LATERAL (SELECT CASE WHEN f.root THEN {FOREVER_US} ELSE coalesce(least(
         (SELECT min(x.last_us) FROM accesses x WHERE x.fkey = f.key AND x.bits & 12 <> 0 AND x.last_us > f.bound),
         (SELECT min(n.t_us) FROM renames n WHERE n.to_key = f.key AND n.t_us > f.bound)), {FOREVER_US}) END AS ve) v
  JOIN renames n ON n.from_key = f.key AND n.t_us >= f.bound AND n.t_us < v.ve
"""

# Downstream, from processes: the data files each wrote after the bound.
_DOWN_PROCS = """
SELECT p.host_id, p.rid, p.pid, p.bound, p.from_key, a.fkey, a.last_us, a.cell
  FROM unnest(%(hosts)s::text[], %(rids)s::bigint[], %(pids)s::int[], %(bounds)s::bigint[], %(froms)s::text[])
       p(host_id, rid, pid, bound, from_key)
  JOIN accesses a ON a.host_id = p.host_id AND a.rid = p.rid AND a.pid = p.pid
 WHERE a.bits & 14 <> 0 AND a.fkind IN ('d', 't') AND a.last_us >= p.bound AND a.fkey <> p.from_key
"""


def root_keys(c: Central, path: str, host: str) -> list[str]:
    """The fleet keys of path as host names it: as that host shipped it, else
    as this machine's mounts and [fleet] shared say, else as any host shipped it."""
    raw = os.fsencode(path)
    rows = c.q("SELECT DISTINCT fkey FROM paths WHERE host_id = %s AND path = %s", (host, raw))
    if rows:
        return [r[0] for r in rows]
    fkey, shared = Keyer(host).key(raw)
    if shared:
        return [fkey]
    rows = c.q("SELECT DISTINCT fkey FROM paths WHERE path = %s", (raw,))
    return [r[0] for r in rows] or [fkey]


def lineage(c: Central, path: str, host: str, direction: str = "upstream", depth: int = 10,
            at_us: int | None = None, keys: list[str] | None = None) -> dict:
    """The lineage of path as host names it (or of the fleet keys given)."""
    keys = keys or root_keys(c, path, host)
    up = direction == "upstream"
    files: dict[str, dict] = {k: {"root": True} for k in keys}
    procs: dict[tuple, dict] = {}
    edges: dict[tuple, dict] = {}
    edge_ = _edge_up if up else _edge_down

    def add_edge(a: str, b: str, rel: str, cell: str | None) -> None:
        edge = edges.setdefault((a, b, rel), {"from": a, "to": b, "rel": rel, "cells": []})
        if cell is not None and cell not in edge["cells"]:
            edge["cells"].append(cell)  # the notebook cell(s) the read or write happened in

    start = (at_us if at_us is not None else FOREVER_US) if up else 0
    level = [(k, start, True) for k in keys]  # (key, bound, is the file asked about) of one file step
    seen_files = {(k, start) for k in keys}
    seen_procs: set[tuple] = set()
    reached = False
    for d in range(1, depth + 1):
        if not level:
            break
        args = {"keys": [k for k, _b, _r in level], "bounds": [b for _k, b, _r in level],
                "roots": [r for _k, _b, r in level]}
        step: list[tuple] = []   # processes of this step: (host, rid, pid, bound, from key)
        nxt: list[tuple] = []    # files of the next step
        for key, _bound, h, rid, pid, t, cell, other in c.q(_UP_FILES if up else _DOWN_FILES, args):
            reached = True
            if other is not None:  # a rename: from (upstream) or to (downstream) another key
                files.setdefault(other, {})
                add_edge(*edge_(_fid(other), _fid(key), "renamed_to"), "renamed_to", None)
                if (other, t) not in seen_files:
                    seen_files.add((other, t))
                    nxt.append((other, t, False))
                continue
            procs.setdefault((h, rid, pid), {})
            add_edge(*edge_(_pid(h, rid, pid), _fid(key), "wrote" if up else "read_by"),
                     "wrote" if up else "read_by", cell)
            if (h, rid, pid, t, key) not in seen_procs:
                seen_procs.add((h, rid, pid, t, key))
                step.append((h, rid, pid, t, key))
        if step:
            cols = list(zip(*step))
            for h, rid, pid, _bound, _from, fkey, t, cell in c.q(
                    _UP_PROCS if up else _DOWN_PROCS,
                    {"hosts": list(cols[0]), "rids": list(cols[1]), "pids": list(cols[2]),
                     "bounds": list(cols[3]), "froms": list(cols[4])}):
                files.setdefault(fkey, {})
                rel = "read_by" if up else "wrote"
                add_edge(*edge_(_fid(fkey), _pid(h, rid, pid), rel), rel, cell)
                if (fkey, t) not in seen_files:
                    seen_files.add((fkey, t))
                    nxt.append((fkey, t, False))
        level = nxt
    # files at the depth limit: is there more beyond them?
    frontier = sorted({k for k, _b, _r in level})
    truncated = bool(frontier) and bool(c.q(
        "SELECT 1 FROM accesses WHERE fkey = ANY(%s) AND bits & " + ("14" if up else "1") + " <> 0 LIMIT 1",
        (frontier,)))
    nodes = _file_nodes(c, files) + _process_nodes(c, procs)
    return {"root": path, "host_id": host, "keys": keys, "direction": direction, "depth": depth,
            "nodes": nodes, "edges": list(edges.values()), "found": reached or _touched(c, keys),
            "truncated": truncated, "store": c.path}


def _edge_up(node: str, reached_from: str, rel: str) -> tuple[str, str]:
    """(from, to) of the edge that reached node walking upstream: edges point
    input -> output, and upstream every node is an input of the one before."""
    return node, reached_from


def _edge_down(node: str, reached_from: str, rel: str) -> tuple[str, str]:
    return reached_from, node


def _fid(key: str) -> str:
    return f"file:{key}"


def _pid(host: str, rid: int, pid: int) -> str:
    return f"process:{host}:{rid}:{pid}"


def _touched(c: Central, keys: list[str]) -> bool:
    return bool(c.q("SELECT 1 FROM accesses WHERE fkey = ANY(%s) LIMIT 1", (keys,)))


def _file_nodes(c: Central, files: dict[str, dict]) -> list[dict]:
    """Each file: its key, and per host that names it the path there."""
    seen: dict[str, list[dict]] = {}
    if files:
        for fkey, host, raw, shared in c.q("SELECT fkey, host_id, path, shared FROM paths WHERE fkey = ANY(%s)",
                                           (list(files),)):
            seen.setdefault(fkey, []).append({"host": host, "path": _path(raw), "shared": shared})
    out = []
    for key, extra in files.items():
        names = sorted(seen.get(key, []), key=lambda n: n["host"])
        shared = key.split(":", 1)[0] != "host"
        node = {"id": _fid(key), "kind": "file", "key": key, "shared": shared,
                "path": names[0]["path"] if names else key.split(":", 2)[-1],
                "hosts": [n["host"] for n in names], "paths": names, **extra}
        if not shared:
            node["host"] = key.split(":", 2)[1]
        out.append(node)
    return out


def _process_nodes(c: Central, procs: dict[tuple, dict]) -> list[dict]:
    """Each process with its identity (host, boot, pid, start) and its run, in one query."""
    info: dict[tuple, tuple] = {}
    if procs:
        hosts, rids, pids = (list(col) for col in zip(*procs))
        for row in c.q("SELECT DISTINCT ON (p.host_id, p.rid, p.pid) p.host_id, p.rid, p.pid, p.boot, "
                       "p.started_us, p.exe, p.argv, p.uid, p.cell, r.id, r.\"user\", r.hostname "
                       "FROM unnest(%s::text[], %s::bigint[], %s::int[]) AS k(host_id, rid, pid) "
                       "JOIN processes p ON p.host_id = k.host_id AND p.rid = k.rid AND p.pid = k.pid "
                       "JOIN runs r ON r.host_id = p.host_id AND r.rid = p.rid "
                       "ORDER BY p.host_id, p.rid, p.pid, p.started_us DESC", (hosts, rids, pids)):
            info[(row[0], row[1], row[2])] = row[3:]
    out = []
    for (host, rid, pid), extra in procs.items():
        boot, started, exe, argv, uid, cell, run_id, user, hostname = info.get((host, rid, pid), (None,) * 9)
        out.append({"id": _pid(host, rid, pid), "kind": "process", "host": host, "hostname": hostname,
                    "boot": boot, "pid": pid, "started": iso(started) if started else None, "exe": exe,
                    "argv": argv if isinstance(argv, list) else (json.loads(argv) if argv else None),
                    "uid": uid, "user": user, "run": run_id, "cell": cell, **extra})
    return out


def render(result: dict) -> str:
    """Text: the file asked about, then each step away from it, indented; hosts named."""
    nodes = {n["id"]: n for n in result["nodes"]}
    up = result["direction"] == "upstream"
    children: dict[str, list[str]] = {}
    for e in result["edges"]:
        a, b = (e["to"], e["from"]) if up else (e["from"], e["to"])
        children.setdefault(a, []).append(b)
    lines = [f"{result['direction']} lineage of {result['root']} on host {result['host_id']} "
             f"(fleet store {result['store']})"]
    if not result["found"]:
        lines.append("  (nothing recorded: no shipped run touched this path)")
        return "\n".join(lines)

    def label(nid: str) -> str:
        n = nodes[nid]
        if n["kind"] == "file":
            where = f"shared {n['key']}, seen on {', '.join(n['hosts']) or '?'}" if n["shared"] \
                else f"on host {n.get('host')}"
            return f"{n['path']} ({where})"
        cells = sorted({c for e in result["edges"] if nid in (e["from"], e["to"]) for c in e.get("cells", [])})
        in_cells = f", cell {', '.join(cells)}" if cells else ""
        return (f"process {n['pid']} on host {n['host']} ({n.get('hostname') or '?'}), run {n.get('run')}"
                f"{in_cells}, user {n.get('user')}: {' '.join(n.get('argv') or [])[:80]}")

    printed: set[str] = set()

    def walk(nid: str, indent: int) -> None:
        again = nid in printed
        lines.append("  " * indent + ("<- " if up and indent else "-> " if indent else "") + label(nid)
                     + (" (see above)" if again and children.get(nid) else ""))
        if again:
            return
        printed.add(nid)
        for child in children.get(nid, []):
            walk(child, indent + 1)

    for key in result["keys"]:
        if _fid(key) in nodes:
            walk(_fid(key), 0)
    if result["truncated"]:
        lines.append(f"  … (depth limit {result['depth']}: more may lie beyond)")
    return "\n".join(lines)
