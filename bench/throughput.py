"""Fixed start-up cost of `provtrace run -- true`, the zero-loss syscall-rate ceiling, and the flood.

The ceiling search runs bench/gen/sysgen.c (compiled here with gcc) pinned to
one CPU with taskset, at increasing fixed rates under provtrace's eBPF backend,
and keeps the highest rate that was both reached and reported lost_events == 0.

The flood (issue 15) runs one sysgen per CPU at once: unpaced and untraced
first (what this machine can offer at all), then paced to a total just above
1,000,000 syscalls/s under each provtrace configuration, and reports the rate
the generators themselves counted beside provtrace's lost_events.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

from bench import configs, measure

GEN_SOURCE = Path(__file__).resolve().parent / "gen" / "sysgen.c"
RATE_REACHED = 0.95  # a trial counts only if the generator reached this share of its target


class GeneratorError(Exception):
    """The syscall generator could not be built; the message says why."""


def compile_generator(out_dir: Path) -> Path:
    """Build sysgen with gcc -O2 into out_dir; raise GeneratorError with gcc's first error."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise GeneratorError("no gcc/cc on PATH (apt-get install gcc)")
    out = out_dir / "sysgen"
    r = subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(GEN_SOURCE)], capture_output=True, text=True)
    if r.returncode != 0:
        raise GeneratorError(f"gcc {GEN_SOURCE.name}: {measure.last_line(r.stderr)}")
    return out


class _Command:
    """Adapter so a configuration can wrap an ad-hoc command like a workload."""

    notebook = None

    def __init__(self, argv: list[str], cwd: Path, records: bool = True):
        self._argv = argv
        self.dir = cwd
        self.records = records  # False: a tracer writes no record file (start-up timing)

    def command(self) -> list[str]:
        return self._argv


def _run_wrapped(cfg: configs.Config, argv: list[str], rundir: Path, timeout_s: float,
                 quiet: dict, records: bool = True) -> tuple[measure.RunResult, configs.Records, str]:
    rundir.mkdir(parents=True, exist_ok=True)
    cmd = _Command(argv, rundir, records)
    measure.wait_for_quiet(**quiet)
    cfg.before_run(rundir)
    res = measure.run_timed(cfg.argv(cmd, rundir), rundir, timeout_s, rundir / "stdout", rundir / "stderr")
    rec = cfg.after_run(rundir)
    stdout = (rundir / "stdout").read_text(errors="replace")
    shutil.rmtree(rundir, ignore_errors=True)
    return res, rec, stdout


def startup(cfgs: list[configs.Config], n: int, workdir: Path, quiet: dict) -> dict:
    """Wall time of `CMD -- true` n times per configuration (untraced `true` as the reference)."""
    out = {}
    for cfg in cfgs:
        walls, errors = [], []
        for i in range(n):
            # exactly `provtrace run [--socket S] -- true`: no --json-out export in the timing
            res, _, _ = _run_wrapped(cfg, ["true"], workdir / f"startup-{cfg.name}-{i}", 300, quiet,
                                     records=False)
            if res.exit_code == 0:
                walls.append(res.wall_s)
            else:
                errors.append(measure.last_line(res.stderr_tail) or f"exit {res.exit_code}")
        out[cfg.name] = {
            "n": len(walls), "wall_s": walls,
            "median_s": statistics.median(walls) if walls else None,
            "min_s": min(walls) if walls else None, "max_s": max(walls) if walls else None,
            "error": errors[0] if errors and not walls else None,
        }
    return out


def ceiling(cfg: configs.Config, gen: Path, mode: str, rates: list[int], seconds: float,
            workdir: Path, quiet: dict) -> dict:
    """Raise the rate until loss, a missed rate, or the list ends; report the last clean rate."""
    cpu = str((os.cpu_count() or 1) - 1)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "sysgen.bin"
    if not data.exists():
        with open(data, "wb") as f:
            f.truncate(64 << 20)
    _, _, base_out = _run_wrapped(configs.Config(cfg.ctx), ["taskset", "-c", cpu, str(gen), mode, "0", "1", str(data)],
                                  workdir / f"ceiling-untraced-{mode}", 60, quiet)
    untraced_max = _gen_json(base_out).get("achieved_rate")
    trials, best, bound = [], None, "end of rate list"
    for rate in rates:
        argv = ["taskset", "-c", cpu, str(gen), mode, str(rate), str(seconds), str(data)]
        res, rec, stdout = _run_wrapped(cfg, argv, workdir / f"ceiling-{mode}-{rate}", seconds + 300, quiet)
        g = _gen_json(stdout)
        trial = {"target_rate": rate, "achieved_rate": g.get("achieved_rate"), "lost": rec.lost,
                 "emitted": rec.emitted, "exit_code": res.exit_code, "wall_s": res.wall_s}
        trials.append(trial)
        if res.exit_code != 0 or rec.lost is None or not g:
            bound = "error: " + (measure.last_line(res.stderr_tail) or rec.detail.get("error", "no result"))
            break
        if rec.lost > 0:
            bound = f"loss at {rate}/s ({rec.lost} lost)"
            break
        if g["achieved_rate"] < RATE_REACHED * rate:
            best = max(best or 0, int(g["achieved_rate"]))
            bound = f"CPU-bound: reached {g['achieved_rate']:.0f}/s of {rate}/s with no loss"
            break
        best = rate
    return {"config": cfg.name, "mode": mode, "cpu": int(cpu), "seconds": seconds,
            "untraced_max_rate": untraced_max, "trials": trials, "ceiling_rate": best, "bound": bound}


def _gen_json(stdout: str) -> dict:
    return _json_line(stdout, "achieved_rate")


# One unpaced generator per CPU, started together by one shell (so every one of
# them is a traced descendant of the command provtrace runs).
FLOOD_SCRIPT = 'i=0; while [ $i -lt "$1" ]; do "$0" "$2" "$5" "$3" "$4" & i=$((i+1)); done; wait'
# Paced 2 % above the target, so that a machine able to offer 1,000,000/s
# reaches it despite the generator's pacing granularity.
FLOOD_RATE = 1_020_000


def flood(cfgs: list[configs.Config], gen: Path, procs: int, seconds: float, workdir: Path,
          quiet: dict, mode: str = "openclose", rate: int = FLOOD_RATE) -> list[dict]:
    """Offer `rate` syscalls/s from `procs` generators under each configuration (0: unpaced).

    The untraced run is always unpaced: the most this machine can offer.
    openclose is the mode whose every syscall the probes act on: each openat
    looks up or makes a fold entry (an open record for the first of each
    100 ms, docs/capture.md), the read is counted and the close flushes it.
    The offered rate is the sum of the generators' own counts per second, so it
    does not depend on what provtrace saw.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "sysgen.bin"
    if not data.exists():
        with open(data, "wb") as f:
            f.truncate(64 << 20)
    def argv(total: int) -> list[str]:
        each = -(-total // procs)  # ceil: the generators together offer at least `total`
        return ["/bin/sh", "-c", FLOOD_SCRIPT, str(gen), str(procs), mode, str(seconds), str(data), str(each)]

    untraced = None
    if cfgs:
        _, _, out = _run_wrapped(configs.Config(cfgs[0].ctx), argv(0), workdir / "flood-untraced", seconds + 60,
                                 quiet)
        untraced = offered_rate(out, procs)
    results = []
    for cfg in cfgs:
        res, rec, out = _run_wrapped(cfg, argv(rate), workdir / f"flood-{cfg.name}", seconds + 600, quiet)
        offered = offered_rate(out, procs)
        error = None
        if res.exit_code != 0 or offered is None:
            error = (measure.last_line(res.stderr_tail) or rec.detail.get("error")
                     or f"{procs} generators printed no complete result")
        elif rec.lost is None:
            error = rec.detail.get("error", "no lost_events reported")
        results.append({"config": cfg.name, "mode": mode, "procs": procs, "seconds": seconds,
                        "paced_rate": rate, "offered_rate": offered, "untraced_rate": untraced, "lost": rec.lost,
                        "emitted": rec.emitted, "complete": rec.complete, "exit_code": res.exit_code,
                        "wall_s": res.wall_s, "error": error})
    return results


def offered_rate(stdout: str, procs: int) -> float | None:
    """Sum of the generators' achieved rates; None unless all `procs` reported, without errors."""
    gens = []
    for line in stdout.splitlines():
        if line.startswith("{") and "achieved_rate" in line:
            try:
                gens.append(json.loads(line))
            except ValueError:
                return None
    if len(gens) != procs or any(g.get("errors") for g in gens):
        return None
    return float(sum(g["achieved_rate"] for g in gens))


# Times what the standalone CLI pays before it traces anything: importing bcc
# and the capture, then compiling and loading the probes. It constructs the
# capture directly, so it follows tracer.capture.ebpf.EbpfCapture.
PROBE_LOAD_SNIPPET = """
import json, time
t0 = time.perf_counter()
from tracer.capture.ebpf import EbpfCapture
t1 = time.perf_counter()
cap = EbpfCapture()
t2 = time.perf_counter()
cap.close()
print(json.dumps({"import_s": t1 - t0, "compile_load_s": t2 - t1}))
"""


def probe_load(python: str, n: int, cwd: Path, timeout_s: float = 300) -> dict:
    """Median import and compile+load times of the eBPF capture over n fresh interpreters."""
    imports, loads, error = [], [], None
    for _ in range(n):
        try:
            r = subprocess.run([python, "-c", PROBE_LOAD_SNIPPET], capture_output=True, text=True,
                               cwd=cwd, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            error = f"{type(e).__name__}: {e}"
            break
        doc = _json_line(r.stdout, "compile_load_s")
        if r.returncode != 0 or not doc:
            error = measure.last_line(r.stderr) or f"exit {r.returncode}"
            break
        imports.append(doc["import_s"])
        loads.append(doc["compile_load_s"])
    return {"n": len(loads), "import_s": statistics.median(imports) if imports else None,
            "compile_load_s": statistics.median(loads) if loads else None, "compile_load_all_s": loads,
            "error": error if not loads else None}


def _json_line(stdout: str, key: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and key in line:
            try:
                return json.loads(line)
            except ValueError:
                return {}
    return {}
