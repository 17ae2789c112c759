"""Issue 15's memory figures for `provtrace daemon`, measured in one run:

1. idle: RSS once the daemon serves, after a quiet settle (target <= 150 MB);
2. runs: RSS across N consecutive `provtrace run --socket S -- true` (target:
   flat; 1,000 runs in the full mode), sampled every N/10 runs;
3. concurrent: peak RSS while one traced command holds P processes alive at
   once (target <= 200 MB at 1,000), sampled every 0.2 s, with the kernel's own
   high-water mark (VmHWM) beside it.

RSS is the daemon's VmRSS from /proc/PID/status. The daemon is a real one, on
a temporary socket and store, started and stopped here. Figures are printed;
nothing here asserts a target.

Run as root: .venv/bin/python -m bench.daemon_memory [--full] [--runs N] [--procs P] [--out F.json]
(the default, short mode: 200 runs, 1,000 processes; --full: 1,000 runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")
SETTLE_S = 5.0  # after "serving": the first scans of /proc and the probes' first events


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of pid, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


def mb(kb: int) -> float:
    return round(kb / 1024, 1)


def start_daemon(base: str, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    sock, db = os.path.join(base, "p.sock"), os.path.join(base, "p.db")
    log = open(os.path.join(base, "daemon.log"), "w")
    proc = subprocess.Popen([PROVTRACE, "daemon", "--socket", sock, "--db", db], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(extra_env or {})})
    line = ""
    for _ in range(600):
        line = proc.stderr.readline()
        if "serving" in line or proc.poll() is not None:
            break
    if proc.poll() is not None:
        raise SystemExit(f"daemon failed to start: {line}")
    # the rest of its log goes to a file: a pipe nobody reads would block it
    threading.Thread(target=shutil.copyfileobj, args=(proc.stderr, log), daemon=True).start()
    return proc, sock


RETRIES = 3  # a busy shared host can refuse a client a thread (EAGAIN); the run is tried again


def consecutive_runs(pid: int, sock: str, n: int, cwd: str) -> tuple[list[dict], list[str]]:
    """RSS after 0, n/10, 2n/10, ... n runs of `true` through the daemon, and
    the failures that were tried again (each said, never hidden)."""
    every = max(1, n // 10)
    samples = [{"runs": 0, **status_kb(pid)}]
    failures = []
    for i in range(1, n + 1):
        for attempt in range(RETRIES):
            r = subprocess.run([PROVTRACE, "run", "--socket", sock, "--", "true"], cwd=cwd,
                               capture_output=True, text=True)
            if r.returncode == 0 and not r.stderr:
                break
            failures.append(f"run {i}: {(r.stderr.strip().splitlines() or ['exit %d' % r.returncode])[-1]}")
            print(f"  {failures[-1]} (tried again)", flush=True)
            time.sleep(1)
        else:
            raise SystemExit(f"run {i} failed {RETRIES} times")
        if i % every == 0:
            samples.append({"runs": i, **status_kb(pid)})
    return samples, failures


def concurrent_procs(pid: int, sock: str, procs: int, hold_s: float, cwd: str) -> dict:
    """Peak RSS while one traced shell holds `procs` sleepers alive at once."""
    script = f"i=0; while [ $i -lt {procs} ]; do sleep {hold_s} & i=$((i+1)); done; wait"
    before = status_kb(pid)
    client = subprocess.Popen([PROVTRACE, "run", "--socket", sock, "--", "sh", "-c", script], cwd=cwd,
                              stderr=subprocess.PIPE, text=True)
    peak = 0
    while client.poll() is None:
        peak = max(peak, status_kb(pid)["VmRSS"])
        time.sleep(0.2)
    err = client.stderr.read()
    if client.returncode != 0:
        raise SystemExit(f"the concurrent run failed: {err.strip()}")
    after = status_kb(pid)
    return {"procs": procs, "before_rss_kb": before["VmRSS"], "peak_rss_kb": peak,
            "after_rss_kb": after["VmRSS"], "hwm_kb": after["VmHWM"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.daemon_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="1,000 consecutive runs (default: 200)")
    ap.add_argument("--runs", type=int, help="consecutive runs (overrides the mode)")
    ap.add_argument("--procs", type=int, default=1000, help="processes alive at once (default 1000)")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds each of them sleeps (default 10)")
    ap.add_argument("--out", metavar="F.json", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon loads eBPF probes")
    runs = args.runs if args.runs is not None else (1000 if args.full else 200)
    base = tempfile.mkdtemp(prefix="pt-bench-mem-")
    os.chmod(base, 0o755)
    work = os.path.join(base, "work")
    os.mkdir(work)
    proc, sock = start_daemon(base)
    try:
        time.sleep(SETTLE_S)
        idle = status_kb(proc.pid)
        print(f"idle after start: RSS {mb(idle['VmRSS'])} MB (HWM {mb(idle['VmHWM'])} MB)", flush=True)
        samples, failures = consecutive_runs(proc.pid, sock, runs, work)
        print(f"{runs} consecutive runs of `true`: RSS MB at " +
              ", ".join(f"{s['runs']}: {mb(s['VmRSS'])}" for s in samples), flush=True)
        first = samples[1]["VmRSS"] if len(samples) > 1 else samples[0]["VmRSS"]
        growth = samples[-1]["VmRSS"] - first
        print(f"  growth from run {samples[1]['runs'] if len(samples) > 1 else 0} to {runs}: "
              f"{mb(growth)} MB", flush=True)
        time.sleep(SETTLE_S)
        idle_after = status_kb(proc.pid)
        print(f"idle after the runs: RSS {mb(idle_after['VmRSS'])} MB", flush=True)
        conc = concurrent_procs(proc.pid, sock, args.procs, args.hold, work)
        print(f"{args.procs} concurrent processes: peak RSS {mb(conc['peak_rss_kb'])} MB "
              f"(before {mb(conc['before_rss_kb'])}, after {mb(conc['after_rss_kb'])}, "
              f"HWM {mb(conc['hwm_kb'])})", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        shutil.rmtree(base, ignore_errors=True)
    doc = {"idle_rss_kb": idle["VmRSS"], "runs": samples, "run_growth_kb": growth, "run_failures": failures,
           "idle_after_runs_rss_kb": idle_after["VmRSS"], "concurrent": conc,
           "targets_mb": {"idle": 150, "concurrent": 200}}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(doc, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
