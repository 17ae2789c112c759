"""Lineage over file versions in a large store: time to answer `lineage PATH`.

    .venv/bin/python -m bench.lineage_versions [--runs 10000] [--names 100] [--reps 30]

Builds a synthetic store with the real Store and record layouts (no tracing):
each run reads the previous run's output, writes ``out-K.tmp`` and renames it
to ``out-K`` (K = run % names), and the run's end fingerprints its output, so
every ``out-K`` has runs/names versions. With --shared-tmp every run writes
the one name ``out.tmp``, which links all outputs through renames (the
largest rename component there can be: every version of the store at once).
Then it times lineage() of one output, upstream, depth 10, each call on a
fresh version model (nothing cached between calls), and prints the median
and the 90th percentile. The issue's target: under 100 ms at 10,000 runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time

from provtrace.tracer.lineage.graph import lineage
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.writer import ACCESS_BITS

READ = ACCESS_BITS["read"]
WRITE_NEW = ACCESS_BITS["write"] | ACCESS_BITS["create"] | ACCESS_BITS["truncate"]


def build(path: str, runs: int, names: int, shared_tmp: bool, work: str = "/bench/w") -> None:
    store = S.Store(path)
    t0 = 1_700_000_000_000_000
    try:
        for i in range(runs):
            start = t0 + i * 1_000_000
            rid = store.new_run(f"bench-{i:06d}", {"id": f"bench-{i:06d}", "kind": "command",
                                                   "argv": ["step", str(i)], "uid": 0, "start_us": start})
            pid = 100_000 + i
            store.append(rid, S.PROCESS, {"pid": pid, "ppid": 1, "exe": "/usr/bin/step", "argv": ["step", str(i)],
                                          "cwd": work, "uid": 0, "started_us": start, "ended_us": start + 900,
                                          "exit_code": 0, "signal": None, "cell": None})
            src = f"{work}/out-{(i - 1) % names}" if i else f"{work}/in.csv"
            dst = f"{work}/out-{i % names}"
            tmp = f"{work}/out.tmp" if shared_tmp else f"{dst}.tmp"
            store.append(rid, S.FILE, [pid, READ, 100, 0, 10, 20, None, "d"], p1=src, p2="/usr/bin/step")
            store.append(rid, S.FILE, [pid, WRITE_NEW, 0, 100, 30, 40, None, "d"], p1=tmp, p2="/usr/bin/step")
            store.append(rid, S.FILE, [pid, READ, 0, 0, 5, 6, None, "l"], p1="/usr/lib/libc.so.6",
                         p2="/usr/bin/step")
            store.append(rid, S.RENAME, [pid, 50, None], p1=dst, p2=tmp)
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            store.append(rid, S.FINGERPRINT, {"cell": None, "at_us": start + 800, "type": "file", "sha256": sha,
                                              "size_bytes": 100, "mtime_ns": start * 1000, "inode": i, "dev": 1},
                         p1=dst)
            store.end_run(rid, {"ended": None, "exit_code": 0, "lost_events": 0, "complete": True})
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--shared-tmp", action="store_true",
                    help="one temporary name for every output (links all of them through renames)")
    ap.add_argument("--db", help="reuse (or build into) this store file")
    args = ap.parse_args()
    db = args.db or os.path.join(tempfile.mkdtemp(prefix="provtrace-bench-"), "lineage.db")
    if not os.path.exists(db):
        t = time.perf_counter()
        build(db, args.runs, args.names, args.shared_tmp)
        print(f"built {args.runs} runs in {time.perf_counter() - t:.1f} s: {db}")
    store = S.Store(db, readonly=True)
    target = f"/bench/w/out-{(args.runs - 1) % args.names}"
    results = {}
    try:
        for label, kw in (("current version", {}), ("all versions", {"all_versions": True})):
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                result = lineage(store, target, "upstream", 10, **kw)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            results[label] = {"median_ms": round(statistics.median(times), 2),
                              "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
                              "nodes": len(result["nodes"]), "truncated": result["truncated"]}
    finally:
        store.close()
    print(json.dumps({"runs": args.runs, "names": args.names, "shared_tmp": args.shared_tmp, "path": target,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
