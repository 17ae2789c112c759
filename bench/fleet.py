"""The fleet store at scale: ingest rate and cross-host lineage latency.

    .venv/bin/python -m bench.fleet [--edges 1000000] [--hosts 2] [--url postgresql://...] [--reps 10]

Builds one synthetic store per host with the real Store and record layouts
(no tracing), ships each with the real Shipper into a PostgreSQL (a
temporary Debian postgresql-15 cluster unless --url names one), and times:

* ingest: records/s of `ship`, the central side verifying every hash and
  deriving runs, processes and accesses as it goes;
* lineage: fleet.query.lineage() upstream from the newest file, at several
  depths, median and 90th percentile of --reps calls.

The graph: processes in chains, one chain per host, each process reading its
chain's previous output and (with chance --cross) one earlier output of any
host (through a declared shared prefix, so chains cross hosts) and writing
one output; library maps pad each process to ten access edges. --edges counts access
edges (FILE records) over all hosts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time

from provtrace.tracer.fleet.identity import Keyer
from provtrace.tracer.fleet.migrate import migrate
from provtrace.tracer.fleet.query import Central, lineage
from provtrace.tracer.fleet.ship import Shipper
from provtrace.tracer.store import sqlite as S

SHARED = "/bench/shared"
EDGES_PER_PROC = 10
T0 = 1_700_000_000_000_000


def build(path: str, host: int, hosts: int, procs: int, rng: random.Random, cross: float = 1.0) -> None:
    """One host's store: procs processes in one run, times interleaved across hosts."""
    store = S.Store(path)
    try:
        rid = store.new_run(f"bench-h{host}", {"id": f"bench-h{host}", "kind": "command", "backend": "ebpf",
                                               "uid": 0, "user": "root", "host": f"h{host}",
                                               "started": "2026-12-07T00:00:00.000000Z", "start_us": T0})
        libs = [f"/usr/lib/lib{i}.so" for i in range(64)]
        for i in range(procs):
            t = (i * hosts + host) * 10   # a global order: step i of every host, then i + 1
            store.append(rid, S.PROCESS, {"pid": 1000 + i, "ppid": 1, "exe": "/usr/bin/step", "argv": ["step", str(i)],
                                          "cwd": "/", "uid": 0, "started_us": T0 + t, "ended_us": T0 + t + 9,
                                          "exit_code": 0, "cell": None})
            items = []
            if i:
                items.append(([1000 + i, 1, 10, 0, t, t + 1, None, "d"], f"{SHARED}/h{host}/o{i - 1}", None))
                if rng.random() < cross:
                    other = rng.randrange(hosts)
                    j = rng.randrange(i)
                    items.append(([1000 + i, 1, 10, 0, t, t + 1, None, "d"], f"{SHARED}/h{other}/o{j}", None))
            items.append(([1000 + i, 6, 0, 10, t + 2, t + 3, None, "d"], f"{SHARED}/h{host}/o{i}", None))
            while len(items) < EDGES_PER_PROC:
                items.append(([1000 + i, 64, 0, 0, t, t, None, "l"], rng.choice(libs), None))
            store.append_many(rid, S.FILE, items)
            if i % 2000 == 1999:
                store.flush()
        store.end_run(rid, {"ended": "2026-12-07T01:00:00.000000Z", "exit_code": 0, "lost_events": 0,
                            "complete": True})
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--url", help="an empty database to use (default: a temporary postgresql-15 cluster)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--depths", default="5,10,20")
    ap.add_argument("--cross", type=float, default=1.0, metavar="P",
                    help="chance that a process also reads a random earlier output (default 1: fan-in 2; "
                         "0: every walk is one chain)")
    args = ap.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        from tests.pgserver import PgServer  # noqa: PLC0415

        server = PgServer()
        server.init()
        server.start()
        url = server.create_db("bench")
    try:
        return run(args, url)
    finally:
        if server is not None:
            server.cleanup()


def run(args, url: str) -> int:
    migrate(url)
    rng = random.Random(7)
    procs = args.edges // EDGES_PER_PROC // args.hosts
    tmp = tempfile.mkdtemp(prefix="provtrace-bench-fleet-")
    stores = []
    t = time.perf_counter()
    for h in range(args.hosts):
        stores.append(f"{tmp}/h{h}.db")
        build(stores[-1], h, args.hosts, procs, rng, args.cross)
    print(f"built {args.hosts} stores, {procs} processes each, {args.edges} access edges "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    total = 0
    t = time.perf_counter()
    for h, db in enumerate(stores):
        shipper = Shipper(db, url, f"h{h}", keyer=Keyer(f"h{h}", mounts=[], shared=[SHARED]))
        res = shipper.ship()
        shipper.close()
        total += res.accepted
        assert res.losses == 0 and res.backlog == 0
    ingest_s = time.perf_counter() - t
    print(f"ingest: {total} records in {ingest_s:.1f} s = {total / ingest_s:,.0f} records/s", flush=True)
    c = Central(url)
    c.conn.execute("ANALYZE")
    size = c.q("SELECT pg_database_size(current_database())")[0][0]
    print(f"central database: {size / 2**20:,.0f} MiB = {size / total:,.0f} bytes per record", flush=True)
    root = f"{SHARED}/h0/o{procs - 1}"
    for depth in (int(d) for d in args.depths.split(",")):
        times, nodes = [], 0
        for _ in range(args.reps):
            t = time.perf_counter()
            result = lineage(c, root, "h0", "upstream", depth)
            times.append((time.perf_counter() - t) * 1000)
            nodes = len(result["nodes"])
        times.sort()
        print(f"lineage upstream depth {depth:>3}: median {statistics.median(times):8.1f} ms, "
              f"p90 {times[int(0.9 * (len(times) - 1))]:8.1f} ms, {nodes} nodes", flush=True)
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
