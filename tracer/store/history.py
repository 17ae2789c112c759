"""Earlier runs of the same job, for resource charts across runs (report, TUI).

A job is a kind and an argv: the same command line, or `provtrace notebook
run` of the same notebook path.
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
    sql = ("SELECT r.rid, rec.body FROM runs r JOIN records rec ON rec.rid = r.rid "
           "AND rec.kind = ? WHERE r.kind = ?") + (" AND r.uid = ?" if uid is not None else "")
    args = (S.RUN_START, run["kind"]) + ((uid,) if uid is not None else ())
    rids = [rid for rid, body in store.db.execute(sql + " ORDER BY r.rid", args)
            if json.loads(body).get("argv") == run.get("argv")]
    return [entry(Q.load_run(store, rid, config)["run"], run["id"]) for rid in rids[-limit:]]


def entry(other: dict, this_id: str | None) -> dict:
    return {"id": other["id"], "started": other["started"], "exit_code": other["exit_code"],
            "complete": other["complete"], "resources": other.get("resources") or {},
            "this": other["id"] == this_id}
