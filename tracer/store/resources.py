"""Resource figures of a run, its processes and its cells, for `show --json`.

Where they come from (docs/resources.md):
- each process's CPU time, peak RSS and I/O bytes: the kernel's accounting,
  read once as the process exits (eBPF: sched_process_exit; ptrace: /proc at
  the PTRACE_EVENT_EXIT stop), stored as the process record's `usage`;
- a notebook kernel's share of a cell: its /proc figures at the cell's start
  and end, stored with the cell's context as `kernel_usage`;
- GPU memory and utilisation: the NVML samples taken at run and cell start
  and end (context `gpu_samples`), where a driver answered; and per process,
  NVML's accounting (context `gpu_accounting`) where accounting mode is on.

Sums over processes are exact for counters (CPU, bytes). Peak RSS is the
largest single process, since processes that ran at different times do not
add up.
"""

from __future__ import annotations

from datetime import datetime

NS_PER_S = 1_000_000_000


def _seconds(ns: int) -> float:
    return round(ns / NS_PER_S, 6)


def usage_json(usage: list[int] | None, started: str | None, ended: str | None) -> dict | None:
    """A process record's stored `usage` as JSON figures; None when none was read."""
    if not usage:
        return None
    utime_ns, stime_ns, maxrss, rchar, wchar = usage
    return {"wall_s": wall_s(started, ended), "cpu_user_s": _seconds(utime_ns),
            "cpu_system_s": _seconds(stime_ns), "peak_rss_bytes": maxrss or None,  # 0: unknown
            "read_bytes": rchar, "written_bytes": wchar}


def wall_s(started: str | None, ended: str | None) -> float | None:
    if not started or not ended:
        return None
    t0 = datetime.fromisoformat(started.replace("Z", "+00:00"))
    t1 = datetime.fromisoformat(ended.replace("Z", "+00:00"))
    return round((t1 - t0).total_seconds(), 6)


def _sum(parts: list[dict], started: str | None, ended: str | None) -> dict:
    """Counters added up, peak RSS the largest; nulls where nothing was measured."""
    measured = [p for p in parts if p and p.get("cpu_user_s") is not None]  # not GPU-only ones
    out = {"wall_s": wall_s(started, ended), "cpu_user_s": None, "cpu_system_s": None,
           "peak_rss_bytes": None, "read_bytes": None, "written_bytes": None,
           "processes_measured": len(measured)}
    if measured:
        for key in ("cpu_user_s", "cpu_system_s"):
            out[key] = round(sum(p[key] for p in measured), 6)
        for key in ("read_bytes", "written_bytes"):
            out[key] = sum(p[key] for p in measured)
        out["peak_rss_bytes"] = max((p["peak_rss_bytes"] for p in measured
                                     if p["peak_rss_bytes"] is not None), default=None)
    return out


def cell_resources(cell: dict, processes: list[dict]) -> dict:
    """A cell's figures: its processes' (children it started), plus the
    kernel's own share of the window when it was read."""
    mine = [p.get("resources") for p in processes if p.get("cell") == cell.get("id")]
    kernel = usage_json((cell.get("context") or {}).get("kernel_usage"),
                        cell.get("started"), cell.get("ended"))
    out = _sum(mine + [kernel], cell.get("started"), cell.get("ended"))
    out["kernel"] = kernel  # the kernel process's share alone, or null
    out["gpu"] = gpu_peaks((cell.get("context") or {}).get("gpu_samples") or [],
                           [p for p in processes if p.get("cell") == cell.get("id")])
    return out


def run_resources(run: dict, processes: list[dict], cells: list[dict], context: dict) -> dict:
    """The run's figures: every process it traced. A kernel that exited under
    tracing has its whole life in its own process record (cells included);
    otherwise (a session whose kernel lives on) its cell shares stand in."""
    parts = [p.get("resources") for p in processes]
    if not any(p.get("resources") for p in processes if p.get("cell") is None):
        parts += [(c.get("resources") or {}).get("kernel") for c in cells]
    out = _sum(parts, run.get("started"), run.get("ended"))
    out["processes"] = len(processes)
    samples = list(context.get("gpu_samples") or [])
    for c in cells:
        samples += (c.get("context") or {}).get("gpu_samples") or []
    out["gpu"] = gpu_peaks(samples, processes)
    return out


def attach_gpu_accounting(processes: list[dict], context: dict) -> None:
    """processes[].resources.gpu: NVML's per-process accounting (peak memory and
    utilisation over the process's life), matched by pid and start time."""
    by_pid: dict[int, list[dict]] = {}
    for a in context.get("gpu_accounting") or []:
        by_pid.setdefault(a.get("pid"), []).append(a)
    for p in processes:
        mine = [a for a in by_pid.get(p["pid"], []) if _during(a.get("start_us"), p)]
        if mine:
            p["resources"] = {**(p.get("resources") or {}), "gpu": [
                {k: a.get(k) for k in ("index", "max_memory_bytes", "gpu_utilization_percent",
                                       "memory_utilization_percent")} for a in mine]}


def _during(start_us: int | None, p: dict) -> bool:
    """NVML's record began while this process lived (pids are reused)."""
    if start_us is None or not p.get("started"):
        return True
    t0 = datetime.fromisoformat(p["started"].replace("Z", "+00:00")).timestamp() * 1e6
    t1 = (datetime.fromisoformat(p["ended"].replace("Z", "+00:00")).timestamp() * 1e6
          if p.get("ended") else float("inf"))
    return t0 - 1e6 <= start_us <= t1  # a second of slack for clocks read apart


def _process_gpu(processes: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for p in processes:
        for g in (p.get("resources") or {}).get("gpu") or []:
            out.setdefault(g.get("index"), []).append(g)
    return out


def gpu_peaks(samples: list[dict], processes: list[dict] | None = None) -> list[dict]:
    """Per GPU: the most memory the traced processes held, and the device's
    highest utilisation, over the NVML samples; with NVML accounting, the
    largest per-process peak memory and utilisation of the given processes.
    [] with no GPU or no driver."""
    peaks: dict[int, dict] = {}
    for sample in samples:
        for g in sample.get("gpus") or []:
            if g.get("index") is None or g.get("error"):
                continue
            cur = peaks.setdefault(g["index"], {"index": g["index"], "name": g.get("name"),
                                                "memory_peak_bytes": None,
                                                "utilization_peak_percent": None, "samples": 0})
            cur["samples"] += 1
            held = [h.get("used_memory_bytes") for h in g.get("processes") or []]
            held = [b for b in held if isinstance(b, int)]
            if held:
                cur["memory_peak_bytes"] = max(cur["memory_peak_bytes"] or 0, sum(held))
            util = g.get("utilization_gpu_percent")
            if isinstance(util, int):
                cur["utilization_peak_percent"] = max(cur["utilization_peak_percent"] or 0, util)
    for index, figures in _process_gpu(processes or []).items():
        cur = peaks.setdefault(index, {"index": index, "name": None, "memory_peak_bytes": None,
                                       "utilization_peak_percent": None, "samples": 0})
        mem = [f["max_memory_bytes"] for f in figures if f.get("max_memory_bytes") is not None]
        util = [f["gpu_utilization_percent"] for f in figures
                if f.get("gpu_utilization_percent") is not None]
        cur["process_memory_peak_bytes"] = max(mem) if mem else None
        cur["process_utilization_peak_percent"] = max(util) if util else None
    return [peaks[i] for i in sorted(peaks)]
