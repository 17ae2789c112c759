"""Earlier runs of the same job, for resource charts across runs (report, TUI).

A job is a kind and an argv: the same command line, or `provtrace notebook
run` of the same notebook path. A session (a kernel the daemon followed) is
matched by its label, the notebook path its kernel was registered with: its
kernel's argv names a connection file of its own.
"""

from __future__ import annotations

import json

from . import queries as Q
from . import sqlite as S

SAME_JOB_RUNS = 20  # the latest runs of a job that the charts show


def same_job(store: S.Store, doc: dict, uid: int | None = None, config=None,
             limit: int = SAME_JOB_RUNS) -> list[dict]:
    """The latest runs (this one included) of doc's job, oldest first:
    {id, started, exit_code, complete, resources, this}."""
    run = doc["run"]
    sql = ("SELECT r.rid, r.label, rec.body FROM runs r JOIN records rec ON rec.rid = r.rid "
           "AND rec.kind = ? WHERE r.kind = ?") + (" AND r.uid = ?" if uid is not None else "")
    args = (S.RUN_START, run["kind"]) + ((uid,) if uid is not None else ())
    by_label = run["kind"] == "session" and run.get("label")
    rids = [rid for rid, label, body in store.db.execute(sql + " ORDER BY r.rid", args)
            if (label == run["label"] if by_label else json.loads(body).get("argv") == run.get("argv"))]
    return [entry(Q.load_run(store, rid, config)["run"], run["id"]) for rid in rids[-limit:]]


def entry(other: dict, this_id: str | None) -> dict:
    return {"id": other["id"], "started": other["started"], "exit_code": other["exit_code"],
            "complete": other["complete"], "resources": other.get("resources") or {},
            "this": other["id"] == this_id}
