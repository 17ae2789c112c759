"""Read-side queries: list runs, resolve a RUN argument, assemble provtrace.run/1."""

from __future__ import annotations

import errno
import json
from collections import defaultdict

from ..clock import us_to_iso as iso
from ..errors import RunNotFound
from ..model.paths import DATA, TEMP, classify, display, to_json
from . import sqlite as S
from .resources import attach_gpu_accounting, cell_resources, run_resources, usage_json
from .writer import KIND_NAMES, access_of

SCHEMA = "provtrace.run/1"


def list_runs(store: S.Store, uid: int | None = None, rid: int | None = None) -> list[dict]:
    """The runs uid may see (None: all), or only run rid among them."""
    # a run with no end whose tree has exited (RUN_RELEASED) is finishing: its completion is pending
    sql = ("SELECT rid, id, kind, label, backend, user, uid, started, ended, exit_code, "
           "lost_events, complete, CASE WHEN ended IS NULL THEN EXISTS(SELECT 1 FROM records r "
           f"WHERE r.rid=runs.rid AND r.kind={S.RUN_RELEASED}) END FROM runs WHERE 1=1")
    args: tuple = ()
    if uid is not None:
        sql += " AND uid=?"
        args = (uid,)
    if rid is not None:  # one run by its primary key: a lookup, not a scan of the whole store
        sql += " AND rid=?"
        args += (rid,)
    out = []
    for rid, rid_s, kind, label, backend, user, u, started, ended, code, lost, complete, finishing in \
            store.db.execute(sql + " ORDER BY rid", args):
        out.append({"id": rid_s, "kind": kind, "label": label, "backend": backend, "user": user,
                    "uid": u, "started": started, "ended": ended, "exit_code": code,
                    "lost_events": lost, "complete": None if complete is None else bool(complete),
                    "rid": rid, **({"finishing": True} if finishing else {})})
    return out


def resolve_run(store: S.Store, ref: str, uid: int | None = None) -> int:
    """A run id, a unique prefix of one, or 'last' -> rid."""
    where, args = ("", ()) if uid is None else (" AND uid=?", (uid,))
    if ref == "last":
        row = store.db.execute(f"SELECT max(rid) FROM runs WHERE 1=1{where}", args).fetchone()
        if row and row[0] is not None:
            return int(row[0])
        raise RunNotFound(ref, store.path)
    exact = store.db.execute(f"SELECT rid FROM runs WHERE id=?{where}", (ref,) + args).fetchone()
    if exact:  # a whole id (the daemon's clients send those): its index answers, no LIKE scan
        return int(exact[0])
    rows = store.db.execute(f"SELECT rid FROM runs WHERE (id=? OR id LIKE ?){where}",
                            (ref, ref.replace("%", "") + "%") + args).fetchall()
    if len(rows) == 1:
        return int(rows[0][0])
    if len(rows) > 1:
        raise RunNotFound(f"{ref} (ambiguous: {len(rows)} runs match)", store.path)
    raise RunNotFound(ref, store.path)


def load_run(store: S.Store, rid: int, config=None) -> dict:
    """The provtrace.run/1 document of one run.

    config (tracer.config.Config): its [classify] rules give the files' kinds
    where they match; otherwise a file keeps the kind stored with it."""
    header: dict = {}
    end: dict | None = None
    released: dict | None = None  # the tree exited; context, fingerprints, end pending
    processes, files, renames, network, pipes, cells, gaps = [], [], [], [], [], [], []
    attempts: list[dict] = []
    links, dirs = [], []
    context: dict = {}
    cell_contexts: dict[str | None, dict] = {}
    fingerprints: dict[tuple[str, str | None], dict] = {}
    base = 0
    for _seq, _rid, kind, p1, p2, body in store.records(rid):
        b = json.loads(body)
        if kind == S.RUN_START:
            header = b
            base = b.get("start_us", 0)
        elif kind == S.RUN_END:
            end = b
        elif kind == S.RUN_RELEASED:
            released = b
        elif kind == S.PROCESS:
            processes.append(_process(b))
            attempts.extend(_attempts(b, base))
        elif kind == S.FILE:
            pid, bits, br, bw, first, last, cell, code = b[:8]
            extra = b[8] if len(b) > 8 else {}
            first, last = _abs(base, first), _abs(base, last)
            files.append({**to_json(p1), "pid": pid, "exe": _text(p2), "access": access_of(bits),
                          "bytes_read": br, "bytes_written": bw, "kind": KIND_NAMES.get(code, code),
                          "cell": cell,
                          "first": iso(first), "last": iso(last), "_first": first, "_last": last,
                          "_path": p1, **({"directory": True} if extra.get("dir") else {})})
            if extra.get("via"):  # opened through other names (symlinks)
                files[-1]["via"] = [to_json(v)["path"] for v in extra["via"]]
        elif kind == S.RENAME:
            pid, t, cell = b
            t = _abs(base, t)
            renames.append({"pid": pid, "from": p2, "to": p1, "time": iso(t), "cell": cell, "_t": t})
        elif kind == S.LINK:
            pid, t, cell, op, target = b
            links.append({"pid": pid, "op": op, "from": to_json(p2)["path"] if p2 is not None else None,
                          "to": to_json(p1)["path"], "target": target, "time": iso(_abs(base, t)),
                          "cell": cell})
        elif kind == S.DIR:
            pid, t, cell, op = b
            dirs.append({"pid": pid, "op": op, "path": to_json(p1)["path"], "time": iso(_abs(base, t)),
                         "cell": cell})
        elif kind == S.NET:
            pid, op, fam, addr, port, t, cell = b
            t = _abs(base, t)
            network.append({"pid": pid, "op": op, "family": fam, "address": addr, "port": port,
                            "time": iso(t), "cell": cell})
        elif kind == S.PIPE:
            ino, w, r = b
            pipes.append({"inode": ino, "writers": w, "readers": r})
        elif kind == S.CELL:
            _merge_cell(cells, b)
        elif kind == S.CONTEXT:
            context = b
        elif kind == S.CELL_CONTEXT:
            cell_contexts[b.pop("cell", None)] = b
        elif kind == S.GAP:
            gaps.append(b)
        elif kind == S.FINGERPRINT:
            fingerprints[(p1, b.get("cell"))] = b
    _mark_temp(files, renames)
    if config is not None:
        for f in files:
            f["kind"] = config.effective(f["_path"], f["kind"])
    lost = end.get("lost_events", 0) if end else 0
    run = {
        "id": header.get("id"), "kind": header.get("kind"), "backend": header.get("backend"),
        "label": header.get("label"), "argv": header.get("argv"), "cwd": header.get("cwd"),
        "host": header.get("host"), "user": header.get("user"), "uid": header.get("uid"),
        "started": header.get("started"), "ended": end.get("ended") if end else None,
        "exit_code": end.get("exit_code") if end else None, "lost_events": lost,
        "complete": bool(end and end.get("complete")),
        "lost_by_reason": end.get("lost_by_reason", {}) if end else {},
        # "run": counted for this run's process tree alone (standalone tracing);
        # "daemon": the daemon's counters over the run's lifetime, shared with
        # every run it traced meanwhile (docs/capture.md, "Lost events")
        "lost_scope": end.get("lost_scope", "run") if end else "run",
        "gaps": {**(end.get("gaps", {}) if end else _open_gaps(released)),
                 **{g.get("what", "gap"): 1 for g in gaps}},
    }
    if end is None and released is not None:  # finishing: the exit status is known already
        run.update({"finishing": True, "released": released.get("released"),
                    "exit_code": released.get("exit_code")})
    if any(len(g) > 1 for g in gaps):  # gaps with more to say than their name
        run["gap_details"] = [g for g in gaps if len(g) > 1]
    if header.get("notebook"):  # a notebook run: the file and kernel it ran (reproduce re-runs them)
        run.update({"notebook": header["notebook"], "kernel_name": header.get("kernel_name")})
    if end and end.get("end_reason"):  # ended by someone other than its writer, and why
        run["end_reason"] = end["end_reason"]
    attach_gpu_accounting(processes, context)
    for c in cells:
        _cell_io(c, files, renames, processes, config)
        c["context"] = cell_contexts.get(c.get("id"), {})
        c["resources"] = cell_resources(c, processes)
        c["context"].pop("kernel_usage", None)  # shown as resources.kernel
    run["resources"] = run_resources(run, processes, cells, context)
    _merge_fingerprints(files, fingerprints)
    _rename_fingerprints(renames, fingerprints)
    for f in files:
        for k in ("_first", "_last", "_path"):
            f.pop(k, None)
    for r in renames:
        r.pop("_t", None)
        r.update({"from": to_json(r["from"])["path"], "to": to_json(r["to"])["path"]})
    return {"schema": SCHEMA, "run": run, "processes": processes, "files": files,
            "renames": renames, "links": links, "directories": dirs,
            "network": network, "pipes": pipes, "cells": cells,
            "attempts": attempts, "context": context}


def _open_gaps(released: dict | None) -> dict:
    """The gaps of a run with no end: finishing (its completion pending), or not finished."""
    return {"completion_pending": 1} if released is not None else {"run_not_finished": 1}


def _merge_fingerprints(files: list[dict], fps: dict[tuple[str, str | None], dict]) -> None:
    """size_bytes, mtime, sha256 on each fingerprinted entry: the fingerprint
    taken at its cell's end, else at the run's end, else the path's latest."""
    latest = {path: fp for (path, _cell), fp in fps.items()}
    for f in files:
        fp = fps.get((f["_path"], f["cell"])) or fps.get((f["_path"], None)) or latest.get(f["_path"])
        if fp is None:
            continue
        f.update({"size_bytes": fp.get("size_bytes"), "mtime": fp.get("mtime"),
                  "sha256": fp.get("sha256")})
        if fp.get("hash_skipped"):
            f["hash_skipped"] = fp["hash_skipped"]
        if fp.get("schema") is not None:  # a tabular file: the schema of that very version
            f["schema"] = fp["schema"]
        if fp.get("error"):
            f["fingerprint_error"] = fp["error"]
        if fp.get("changed_before_hash"):  # rewritten after the run ended, before the finisher read it
            f["changed_before_hash"] = True


def _rename_fingerprints(renames: list[dict], fps: dict[tuple[str, str | None], dict]) -> None:
    """sha256, size_bytes, mtime of what a rename put in place (its target's
    fingerprint), so a file the run produced only under a renamed name is
    compared by content too (diff)."""
    for r in renames:
        fp = fps.get((r["to"], r["cell"])) or fps.get((r["to"], None))
        if fp is not None and fp.get("type") == "file":
            r.update({"sha256": fp.get("sha256"), "size_bytes": fp.get("size_bytes"),
                      "mtime": fp.get("mtime")})
            if fp.get("schema") is not None:
                r["schema"] = fp["schema"]


def _merge_cell(cells: list[dict], body: dict) -> None:
    """One entry per execution: a later record of the same id (a second source
    reporting its end) fills in or overrides what it knows."""
    for c in cells:
        if body.get("id") is not None and c.get("id") == body.get("id"):
            c.update({k: v for k, v in body.items() if v is not None})
            return
    cells.append(body)


def _abs(base: int, rel: int | None) -> int | None:
    return None if rel is None else base + rel


def _text(s: str | None) -> str | None:
    """Undecodable bytes of a name as \\xNN, so JSON output is valid UTF-8."""
    return None if s is None else display(s)


def _process(b: dict) -> dict:
    return {"pid": b["pid"], "ppid": b["ppid"], "exe": _text(b["exe"]),
            "argv": [_text(a) for a in b["argv"]], "cwd": _text(b["cwd"]),
            "uid": b["uid"], "started": iso(b["started_us"]), "ended": iso(b["ended_us"]),
            "exit_code": b["exit_code"], "signal": b.get("signal"), "cell": b["cell"],
            "resources": usage_json(b.get("usage"), iso(b["started_us"]), iso(b["ended_us"])),
            **({"privileged": True} if b.get("privileged") else {})}


def _attempts(b: dict, base: int) -> list[dict]:
    """A process's failed opens (ENOENT, EACCES) as attempted accesses: the
    path it tried, why it failed, and when first."""
    return [{**to_json(path), "pid": b["pid"], "exe": _text(exe or b["exe"]),
             "errno": errno.errorcode.get(err, str(err)), "access": "write" if write else "read",
             "time": iso(_abs(base, t)), "cell": cell}
            for path, err, write, t, cell, exe in b.get("attempts", ())]


def _mark_temp(files: list[dict], renames: list[dict]) -> None:
    """A data file created and then removed (deleted or renamed away) in the run is temp."""
    created: dict[str, int] = {}
    removed: dict[str, int] = defaultdict(int)
    for f in files:
        if "create" in f["access"]:
            created[f["_path"]] = max(created.get(f["_path"], 0), f["_first"] or 0)
        if "delete" in f["access"]:
            removed[f["_path"]] = max(removed[f["_path"]], f["_last"] or 0)
    for r in renames:
        removed[r["from"]] = max(removed[r["from"]], r["_t"] or 0)
    for f in files:
        p = f["_path"]
        if f["kind"] == DATA and p in created and p in removed and removed[p] >= created[p]:
            f["kind"] = TEMP


def _kind(path: str, config) -> str:
    """A path's kind with no record of its own (a rename's target): a rule's, else the default."""
    return (config.kind_of(path) if config is not None else None) or classify(path)


def _final_name(path: str, renames: list[dict], after_us: int) -> str:
    """Follow renames (in time order) from path, starting after a time."""
    for r in sorted(renames, key=lambda r: r["_t"] or 0):
        if r["from"] == path and (r["_t"] or 0) >= after_us:
            path = r["to"]
            after_us = r["_t"] or 0
    return path


def _cell_io(cell: dict, files: list[dict], renames: list[dict], processes: list[dict],
             config=None) -> None:
    """A cell's data reads and writes (renames followed) and its processes."""
    cid = cell.get("id")
    reads, writes = set(), set()
    for f in files:
        if f["cell"] != cid or f.get("directory"):  # a listed directory is in lineage, not here
            continue
        kind_ok = f["kind"] in (DATA, TEMP)
        if not kind_ok:
            continue
        acc = set(f["access"])
        if acc & {"write", "create", "truncate"}:
            final = _final_name(f["_path"], renames, f["_first"] or 0)
            if f["kind"] == DATA or (final != f["_path"] and _kind(final, config) == DATA):
                writes.add(final)  # a temp file counts only under the data name it became
        if "read" in acc and f["kind"] == DATA:
            reads.add(f["_path"])
    cell["reads"] = sorted(to_json(p)["path"] for p in reads)
    cell["writes"] = sorted(to_json(p)["path"] for p in writes)
    cell["processes"] = sorted(p["pid"] for p in processes if p["cell"] == cid)
