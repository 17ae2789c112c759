"""Issue 3's two daemon figures, measured in one run:

1. CPU of `provtrace daemon` while it follows N idle Jupyter kernels (target
   < 2% of one core with 20 kernels): the daemon's own user+sys time over a
   quiet window, as a share of one core.
2. What cell attribution adds to a cell's visible latency (target < 5 ms):
   execute_request -> idle round trips of a trivial cell on one ipykernel,
   first with no daemon, then with the daemon following and tracing the
   kernel, interleaved in blocks; paired medians with min and max.

Run as root: .venv/bin/python -m bench.daemon_kernels [--kernels 20] [--window 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from jupyter_client.manager import KernelManager

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")


def _start_daemon(base: str) -> subprocess.Popen:
    sock, db = os.path.join(base, "p.sock"), os.path.join(base, "p.db")
    proc = subprocess.Popen([PROVTRACE, "daemon", "--socket", sock, "--db", db],
                            stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        line = proc.stderr.readline()
        if "serving" in line or proc.poll() is not None:
            break
    if proc.poll() is not None:
        raise SystemExit(f"daemon failed to start: {line}")
    return proc


def _sessions(base: str) -> int:
    import sqlite3  # noqa: PLC0415

    db = sqlite3.connect(f"file:{base}/p.db?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM runs WHERE kind='session'").fetchone()[0]
    finally:
        db.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def _kernels(n: int, cwd: str) -> list[tuple[KernelManager, object]]:
    out = []
    for _ in range(n):
        km = KernelManager(kernel_name="python3")
        km.start_kernel(cwd=cwd)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        out.append((km, kc))
    return out


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def idle_cpu(n: int, window_s: float) -> dict:
    base = tempfile.mkdtemp(prefix="pt-bench-daemon-")
    kernels = _kernels(n, base)
    daemon = _start_daemon(base)
    try:
        deadline = time.monotonic() + 180
        while _sessions(base) < n and time.monotonic() < deadline:
            time.sleep(1)
        followed = _sessions(base)
        time.sleep(5)  # let discovery and IOPub readiness settle
        p = psutil.Process(daemon.pid)
        c0, t0 = _cpu_s(p), time.monotonic()
        time.sleep(window_s)
        c1, t1 = _cpu_s(p), time.monotonic()
        rss = p.memory_info().rss
    finally:
        _stop(daemon)
        for km, kc in kernels:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return {"kernels": n, "followed": followed, "window_s": round(t1 - t0, 1),
            "cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 3),
            "daemon_rss_mib": round(rss / 2**20, 1)}


def _latencies(kc, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        kc.execute_interactive("pass", timeout=30)
        out.append((time.perf_counter() - t) * 1000)
    return out


def cell_latency(blocks: int, per_block: int) -> dict:
    base = tempfile.mkdtemp(prefix="pt-bench-lat-")
    ((km, kc),) = _kernels(1, base)
    untraced: list[float] = []
    traced: list[float] = []
    try:
        _latencies(kc, 20)  # warm-up
        for _ in range(blocks):
            untraced.append(statistics.median(_latencies(kc, per_block)))
            daemon = _start_daemon(base)
            try:
                deadline = time.monotonic() + 60
                while _sessions(base) < 1 and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(3)  # followed: IOPub watcher ready, pid traced
                traced.append(statistics.median(_latencies(kc, per_block)))
            finally:
                _stop(daemon)
            os.remove(os.path.join(base, "p.db"))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    diffs = [t - u for t, u in zip(traced, untraced)]
    return {"blocks": blocks, "cells_per_block": per_block,
            "untraced_ms_median": round(statistics.median(untraced), 3),
            "traced_ms_median": round(statistics.median(traced), 3),
            "added_ms_median": round(statistics.median(diffs), 3),
            "added_ms_min": round(min(diffs), 3), "added_ms_max": round(max(diffs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=20)
    ap.add_argument("--window", type=float, default=30.0, help="idle measurement window, s")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--cells", type=int, default=50, help="cells per latency block")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon loads eBPF probes")
    result = {"idle": idle_cpu(args.kernels, args.window), "latency": cell_latency(args.blocks, args.cells)}
    idle, lat = result["idle"], result["latency"]
    print(f"daemon following {idle['followed']}/{idle['kernels']} idle kernels: "
          f"{idle['cpu_percent_of_one_core']}% of one core over {idle['window_s']} s, RSS {idle['daemon_rss_mib']} MiB "
          f"(target < 2%: {'met' if idle['cpu_percent_of_one_core'] < 2 else 'MISSED'})")
    print(f"cell round trip: untraced {lat['untraced_ms_median']} ms, followed+traced {lat['traced_ms_median']} ms; "
          f"added {lat['added_ms_median']} ms (min {lat['added_ms_min']}, max {lat['added_ms_max']}) "
          f"(target < 5 ms: {'met' if lat['added_ms_median'] < 5 else 'MISSED'})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
