"""provtrace benchmarks: overhead, loss and throughput, side by side with peer tracers.

Runs every workload under every configuration, interleaved, with the order
rotated per repetition and a wait for a quiet machine before each run. Prints
paired medians of wall and CPU time as ratios to the untraced run (min and max
beside them), records and lost events, tracer RSS; the start-up cost of
`provtrace run -- true`; the zero-loss syscall-rate ceiling; the flood (one
unpaced syscall generator per CPU, traced); and a verdict per target of issues
5 and 15 ("MISSED target" where one is missed). Saves results.json, table.txt
and plot.png under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import configs, measure, report, throughput, workloads  # noqa: E402

log = logging.getLogger("bench")

EXAMPLES = """\
examples:
  .venv/bin/python -m bench.run --quick
      every workload and configuration, 3 reps, small sizes (~5 min here)
  .venv/bin/python -m bench.run
      the full run: 20,000-file churn, 200 MB streams, 5 reps
  .venv/bin/python -m bench.run --quick --workloads stream,exec --configs provtrace-daemon,strace
      two workloads, two configurations (untraced is always added)
  .venv/bin/python -m bench.run --reps 9 --out /tmp/bench-a
      more repetitions, results in /tmp/bench-a
  .venv/bin/python -m bench.run --quick --skip-ceiling --skip-startup --workdir /var/tmp
      overhead only, workload data on disk instead of tmpfs
  .venv/bin/python -m bench.run --configs provtrace-daemon,provtrace-ebpf,ebpf-hook-floor --skip-ceiling
      the targets of issue 15 in one run: every workload, daemon against the hook floor, the flood

configurations: """ + ", ".join(configs.NAMES) + """
workloads:      """ + ", ".join(workloads.NAMES) + """

Run as root (eBPF, bpftrace). Peers missing on this host are installed
(apt-get for strace/bpftrace, pip for reprozip) unless --no-install; a peer
that still cannot run gets a row saying why.
"""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 reps, small sizes, short ceiling trials")
    p.add_argument("--reps", type=int, help="repetitions per workload and configuration (default 3 quick, 5 full)")
    p.add_argument("--workloads", type=_csv, default=list(workloads.NAMES), metavar="A,B",
                   help="workloads to run (default: all)")
    p.add_argument("--configs", type=_csv, default=list(configs.NAMES), metavar="X,Y",
                   help="configurations to run (default: all; untraced is always included)")
    p.add_argument("--out", type=Path, help="results folder (default bench/results/<UTC timestamp>/)")
    p.add_argument("--workdir", type=Path, help="where workload data is generated (default: /dev/shm, "
                   "a tmpfs, so that a drifting virtual disk does not hide per-syscall costs; else $TMPDIR)")
    p.add_argument("--store-dir", type=Path, help="where tracers write their stores and traces, as they would "
                   "for a user: on disk (default: $TMPDIR)")
    p.add_argument("--provtrace", default=str(Path(sys.executable).parent / "provtrace"),
                   help="provtrace entry point (default: next to this python)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before one run is killed (default 900)")
    p.add_argument("--quiet-threshold", type=float, default=0.15,
                   help="busy fraction of all CPUs under which the machine counts as quiet (default 0.15)")
    p.add_argument("--quiet-cap", type=float, help="longest wait for quiet, s (default 3 quick, 10 full)")
    p.add_argument("--skip-startup", action="store_true", help="do not measure `provtrace run -- true`")
    p.add_argument("--skip-ceiling", action="store_true", help="do not search the syscall-rate ceiling")
    p.add_argument("--skip-flood", action="store_true",
                   help="do not offer the syscall flood (one unpaced generator per CPU, issue 15)")
    p.add_argument("--no-install", action="store_true", help="never apt-get/pip install a missing peer")
    p.add_argument("--keep-workdir", action="store_true", help="keep data, stores and traces of every run")
    p.add_argument("-v", "--verbose", action="store_true", help="log each run's command line")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if args.quiet_cap is None:
        args.quiet_cap = 3.0 if args.quick else 10.0
    for name, chosen, allowed in (("--workloads", args.workloads, workloads.NAMES),
                                  ("--configs", args.configs, configs.NAMES)):
        bad = [c for c in chosen if c not in allowed]
        if bad:
            p.error(f"{name}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return args


def _setup_workloads(wls: list[workloads.Workload]) -> tuple[list[workloads.Workload], dict[str, str]]:
    ready, skipped = [], {}
    for wl in wls:
        try:
            wl.setup()
            ready.append(wl)
            log.info("workload %-9s %s", wl.name, wl.describe())
        except (workloads.WorkloadError, OSError) as e:
            skipped[wl.name] = str(e)
            log.warning("workload %s skipped: %s", wl.name, e)
    return ready, skipped


def _prepare_configs(cfgs: list[configs.Config]) -> tuple[list[configs.Config], dict[str, str]]:
    ready, unavailable = [], {}
    for cfg in cfgs:
        t0 = time.monotonic()
        try:
            cfg.prepare()
            ready.append(cfg)
            log.info("config %-17s ready (%.1f s)", cfg.name, time.monotonic() - t0)
        except configs.Unavailable as e:
            unavailable[cfg.name] = e.reason
            log.warning("config %-17s not available: %s", cfg.name, e.reason)
        except (OSError, subprocess.SubprocessError) as e:
            unavailable[cfg.name] = f"{type(e).__name__}: {e}"
            log.warning("config %-17s not available: %s", cfg.name, unavailable[cfg.name])
            cfg.close()
    return ready, unavailable


def run_one(cfg: configs.Config, wl: workloads.Workload, rep: int, position: int, runs_dir: Path,
            args: argparse.Namespace, quiet_kw: dict) -> dict:
    """One timed run of wl under cfg, with everything untimed around it; returns the sample."""
    rundir = runs_dir / f"{wl.name}-{cfg.name}-{rep}"
    rundir.mkdir(parents=True, exist_ok=True)
    quiet = measure.wait_for_quiet(**quiet_kw)
    sample = {"workload": wl.name, "config": cfg.name, "rep": rep, "position": position,
              "quiet": {"waited_s": quiet.waited_s, "busy": quiet.busy_fraction, "quiet": quiet.quiet}}
    try:
        cfg.before_run(rundir)
    except configs.Unavailable as e:
        sample.update(exit_code=None, error=e.reason)
        return sample
    argv = cfg.argv(wl, rundir)
    if args.verbose:
        log.info("  $ %s", " ".join(argv))
    dpid = cfg.daemon_pid()
    d0 = measure.tree_cpu_s(dpid) if dpid else 0.0
    res = measure.run_timed(argv, wl.dir, args.timeout, rundir / "stdout", rundir / "stderr",
                            env={**os.environ, **cfg.env} if cfg.env else None)
    d1 = measure.tree_cpu_s(dpid) if dpid else 0.0
    dmem = measure.tree_mem_kb(dpid) if dpid else {}
    rec = cfg.after_run(rundir)
    wl.reset()
    error = None
    if res.timed_out:
        error = f"timed out after {args.timeout:.0f} s"
    elif res.exit_code != 0:
        error = f"exit {res.exit_code}: " + (measure.last_line(res.stderr_tail) or "no stderr")
    elif "error" in rec.detail:
        error = rec.detail["error"]
    sample.update(
        exit_code=res.exit_code, timed_out=res.timed_out, error=error, argv=list(argv),
        wall_s=res.wall_s, user_s=res.user_s, sys_s=res.sys_s, tracer_daemon_cpu_s=d1 - d0,
        cpu_s=res.cpu_s + (d1 - d0), tree_maxrss_kb=res.maxrss_kb, root_hwm_kb=res.root_hwm_kb,
        daemon_mem_kb=dmem, tracer_rss_kb=dmem.get("VmHWM") if dpid else res.root_hwm_kb,
        records=rec.emitted, lost=rec.lost, complete=rec.complete, detail=rec.detail,
        span_s=rec.detail.get("span_s"),
    )
    if not args.keep_workdir:
        shutil.rmtree(rundir, ignore_errors=True)
    return sample


def _progress(s: dict) -> str:
    if s.get("error") or s.get("wall_s") is None:
        return f"{s['workload']:<9} {s['config']:<17} rep {s['rep']}: {s.get('error')}"
    lost = "" if s.get("lost") is None else f" lost={s['lost']}"
    return (f"{s['workload']:<9} {s['config']:<17} rep {s['rep']}: wall {s['wall_s']:.3f} s "
            f"cpu {s['cpu_s']:.3f} s{lost} (quiet wait {s['quiet']['waited_s']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path(__file__).resolve().parent / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    data_parent = args.workdir or _default_data_parent()
    for d in (data_parent, args.store_dir):
        if d:
            d.mkdir(parents=True, exist_ok=True)
    datadir = Path(tempfile.mkdtemp(prefix="provtrace-bench-data-", dir=data_parent))
    workdir = Path(tempfile.mkdtemp(prefix="provtrace-bench-", dir=args.store_dir))
    quiet_kw = {"threshold": args.quiet_threshold, "window_s": 0.3 if args.quick else 0.5, "cap_s": args.quiet_cap}
    sizes = workloads.QUICK if args.quick else workloads.FULL
    if os.geteuid() != 0:
        log.warning("not root: eBPF configurations and bpftrace will be unavailable")

    ctx = configs.Context(workdir=workdir, python=sys.executable, provtrace=args.provtrace,
                          allow_install=not args.no_install)
    wls, skipped = _setup_workloads(workloads.build(args.workloads, datadir, sizes, sys.executable))
    all_cfgs = configs.build(args.configs, ctx)
    samples: list[dict] = []
    startup: dict | None = None if args.skip_startup else {}  # None: skipped on purpose
    ceilings: list[dict] | None = None if args.skip_ceiling else []
    floods: list[dict] | None = None if args.skip_flood else []
    probe_load: dict | None = None
    try:
        cfgs, unavailable = _prepare_configs(all_cfgs)
        runs_dir = workdir / "runs"
        for rep in range(args.reps):
            for wl in wls:
                for pos, cfg in enumerate(report.rotated(cfgs, rep)):
                    s = run_one(cfg, wl, rep, pos, runs_dir, args, quiet_kw)
                    samples.append(s)
                    log.info("%s", _progress(s))
        by_name = {c.name: c for c in cfgs}
        if not args.skip_startup:
            startup = _guarded("start-up", _measure_startup, by_name, unavailable, args, workdir, quiet_kw) or {}
            if "provtrace-ebpf" in by_name:
                probe_load = _guarded("probe load", _measure_probe_load, args)
        if not args.skip_ceiling:
            ceilings = _guarded("ceiling", _measure_ceiling, by_name, unavailable, args, workdir, quiet_kw) or []
        if not args.skip_flood:
            floods = _guarded("flood", _measure_flood, by_name, unavailable, args, workdir, quiet_kw) or []
    except KeyboardInterrupt:
        log.warning("interrupted: reporting what was measured")
    finally:
        for cfg in all_cfgs:
            cfg.close()

    names_wl = [w.name for w in wls]
    names_cfg = [c.name for c in all_cfgs]
    offsets = {}
    base_true = ((startup or {}).get("untraced") or {}).get("median_s")
    for name in ("provtrace-ebpf", "provtrace-daemon"):
        if ((startup or {}).get(name) or {}).get("median_s") is not None and base_true is not None:
            offsets[name] = startup[name]["median_s"] - base_true
    rows = report.summarize(samples, names_wl, names_cfg, unavailable, offsets)
    ebpf_cfgs = [c.name for c in all_cfgs if c.ebpf]
    checks = report.evaluate_targets(rows, startup, ceilings, ebpf_cfgs, unavailable)
    checks15 = report.issue15_checks(rows, startup, floods, probe_load, skipped)

    meta = {
        "started_utc": stamp, "host": platform.node(), "kernel": platform.release(),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "argv": sys.argv,
        "quick": args.quick, "reps": args.reps, "sizes": dataclasses.asdict(sizes),
        "workloads": {w.name: w.describe() for w in wls}, "workloads_skipped": skipped,
        "configs": {c.name: c.title for c in all_cfgs}, "unavailable": unavailable,
        "quiet": quiet_kw, "elapsed_s": time.monotonic() - started,
        "data_dir": str(datadir), "store_dir": str(workdir),
    }
    text = _render(meta, rows, startup, ceilings, checks, checks15)
    print(text)
    (out / "table.txt").write_text(text + "\n")
    report.save_json(out / "results.json", {"schema": "provtrace.bench/1", "meta": meta, "samples": samples,
                                            "rows": rows, "startup": startup, "ceilings": ceilings,
                                            "probe_load": probe_load, "floods": floods,
                                            "targets": checks, "targets_issue15": checks15})
    try:
        report.plot(rows, out / "plot.png", f"provtrace bench {stamp} on {meta['host']} ({meta['kernel']}), "
                                            f"{args.reps} reps{' quick' if args.quick else ''}")
    except ImportError as e:
        log.warning("no plot: %s (pip install matplotlib)", e)
    print(f"\nresults: {out}/results.json  table: {out}/table.txt  plot: {out}/plot.png")
    if args.keep_workdir:
        print(f"kept: data {datadir}, stores {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(datadir, ignore_errors=True)
    return 0


def _default_data_parent() -> Path | None:
    """/dev/shm when it is a writable tmpfs with 4 GiB free, else None ($TMPDIR)."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= 4 << 30:
        return shm
    return None


def _guarded(what: str, fn, *args):
    """Run one measurement phase; a failure there is logged and reported, not fatal to the table."""
    try:
        return fn(*args)
    except (OSError, ValueError, subprocess.SubprocessError, configs.Unavailable) as e:
        log.error("%s measurement failed: %s: %s", what, type(e).__name__, e)
        if what == "ceiling":
            return [{"mode": "openclose", "config": "provtrace-ebpf", "error": f"{type(e).__name__}: {e}",
                     "bound": f"harness error: {e}"}]
        if what == "flood":
            return [{"config": "provtrace-daemon", "offered_rate": None, "lost": None,
                     "error": f"harness error: {type(e).__name__}: {e}"}]
        if what == "probe load":
            return {"n": 0, "compile_load_s": None, "error": f"harness error: {type(e).__name__}: {e}"}
        return {"provtrace-ebpf": {"n": 0, "median_s": None, "error": f"harness error: {e}"}}


def _measure_startup(by_name: dict, unavailable: dict, args, workdir: Path, quiet_kw: dict) -> dict:
    n_standalone, n_daemon = (3, 10) if args.quick else (5, 30)
    out = {}
    for name, n in (("untraced", n_daemon), ("provtrace-ebpf", n_standalone), ("provtrace-daemon", n_daemon)):
        if name in by_name:
            log.info("start-up: %s x %d", name, n)
            out.update(throughput.startup([by_name[name]], n, workdir / "startup", quiet_kw))
        elif name in unavailable:
            out[name] = {"n": 0, "median_s": None, "error": unavailable[name]}
    return out


def _measure_ceiling(by_name: dict, unavailable: dict, args, workdir: Path, quiet_kw: dict) -> list[dict]:
    cfg = by_name.get("provtrace-ebpf") or by_name.get("provtrace-daemon")
    if cfg is None:
        why = unavailable.get("provtrace-ebpf") or "provtrace-ebpf not selected (--configs)"
        return [{"mode": "openclose", "config": "provtrace-ebpf", "error": why, "bound": why}]
    try:
        gen = throughput.compile_generator(workdir)
    except throughput.GeneratorError as e:
        return [{"mode": "openclose", "config": cfg.name, "error": str(e), "bound": str(e)}]
    if args.quick:
        plans = (("openclose", [300_000, 1_000_000], 2.0), ("read", [1_000_000], 2.0))
    else:
        plans = (("openclose", [50_000, 100_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000], 5.0),
                 ("read", [100_000, 300_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000], 5.0))
    out = []
    for mode, rates, seconds in plans:
        log.info("ceiling: %s via %s, rates %s", mode, cfg.name, rates)
        out.append(throughput.ceiling(cfg, gen, mode, rates, seconds, workdir / "ceiling", quiet_kw))
    return out


def _measure_probe_load(args) -> dict:
    n = 3 if args.quick else 5
    log.info("start-up: bcc compile+load of the probes alone x %d", n)
    return throughput.probe_load(sys.executable, n, Path(__file__).resolve().parent.parent)


def _measure_flood(by_name: dict, unavailable: dict, args, workdir: Path, quiet_kw: dict) -> list[dict]:
    names = ("provtrace-daemon", "provtrace-ebpf")
    cfgs = [by_name[n] for n in names if n in by_name]
    missing = [{"config": n, "offered_rate": None, "lost": None, "error": unavailable[n]}
               for n in names if n in unavailable]
    if not cfgs:
        return missing
    try:
        gen = throughput.compile_generator(workdir)
    except throughput.GeneratorError as e:
        return [{"config": c.name, "offered_rate": None, "lost": None, "error": str(e)} for c in cfgs]
    procs, seconds = os.cpu_count() or 1, 2.0 if args.quick else 5.0
    log.info("flood: %d generators for %g s, unpaced untraced, then paced to %d/s via %s", procs, seconds,
             throughput.FLOOD_RATE, ", ".join(c.name for c in cfgs))
    return missing + throughput.flood(cfgs, gen, procs, seconds, workdir / "flood", quiet_kw)


def _render(meta: dict, rows: list[dict], startup: dict, ceilings: list[dict], checks: list[dict],
            checks15: list[dict]) -> str:
    parts = [
        f"provtrace bench {meta['started_utc']}  host {meta['host']}  kernel {meta['kernel']}  "
        f"{meta['cpus']} CPUs  reps {meta['reps']}{'  (quick)' if meta['quick'] else ''}",
        f"workload data in {Path(meta['data_dir']).parent}, tracer stores in {Path(meta['store_dir']).parent}",
        "ratios are paired medians over reps (min-max); cpu = user+sys of the launched tree plus any "
        "tracer daemon; RSS = peak of the tracer process (daemon or wrapper)",
        "",
        "workloads:",
        *(f"  {k:<9} {v}" for k, v in meta["workloads"].items()),
        *(f"  {k:<9} SKIPPED: {v}" for k, v in meta["workloads_skipped"].items()),
        "",
        report.format_table(rows),
    ]
    if meta["unavailable"]:
        parts += ["", "not available:", report.format_unavailable(meta["unavailable"])]
    if startup:
        parts += ["", "start-up, `CMD -- true` (wall):", report.format_startup(startup)]
    if ceilings:
        parts += ["", "throughput ceiling (eBPF backend, generator pinned to one CPU):", report.format_ceilings(ceilings)]
    parts += ["", "targets (issue 5):", report.format_targets(checks) or "  (no provtrace eBPF configuration selected)",
              "", "targets (issue 15: through the daemon, wall time, against ebpf-hook-floor in this run):",
              report.format_targets(checks15) or "  (provtrace-daemon not selected)",
              "", f"elapsed {meta['elapsed_s']:.0f} s"]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
