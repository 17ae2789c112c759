"""Rows, lines and trees of text from a provtrace.run/1 document and a lineage.

Everything here returns plain str, already safe to show: names that are
not UTF-8 keep their bytes as \\xNN (the schema's policy), and control
characters in names are escaped so a file called "a\\nb" cannot break a
table row or send escape codes to the terminal. Headless: no textual.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from ..tracer.model.paths import display
from . import model as M

# C0 and C1 controls and DEL, shown as escapes instead of being sent to the terminal.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})

RUN_COLUMNS = ("ID", "KIND", "LABEL", "USER", "STARTED", "EXIT", "LOST")
CELL_COLUMNS = ("#", "EXEC", "STATUS", "CELL", "READS", "WRITES", "PROCS")
FILE_COLUMNS = ("PATH", "ACCESS", "KIND", "READ", "WRITTEN", "PID", "CELL")
LIBRARY_COLUMNS = ("PATH", "SONAME", "PACKAGE", "BUILD ID")
PACKAGE_COLUMNS = ("NAME", "VERSION", "ECOSYSTEM")
SHOWN_FILE_KINDS = ("data", "temp")
NO_GPU = "no NVIDIA GPU/driver"
STALE_BADGE = "⚠ STALE"  # on a run or cell whose input changed (pushed by the daemon)


@dataclass(frozen=True)
class TreeItem:
    label: str
    children: tuple["TreeItem", ...] = ()
    key: str | None = None  # what the item stands for (a lineage node id)


def printable(value: object) -> str:
    """Text safe for one terminal cell: \\xNN for undecodable bytes and controls."""
    if value is None:
        return ""
    return display(str(value)).translate(_CONTROLS)


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _opt(v: object) -> str:
    return "" if v is None else printable(v)


# -- runs ---------------------------------------------------------------------
def run_row(r: M.RunSummary, stale: bool = False) -> tuple[str, ...]:
    kind = printable(r.kind) + (f" {STALE_BADGE}" if stale else "")
    return (printable(r.id), kind, _opt(r.label), _opt(r.user), _opt(r.started),
            _opt(r.exit_code), _opt(r.lost_events))


def empty_runs_text(description: str) -> str:
    return (f"No runs in {printable(description)}.\n"
            "Trace something with:  provtrace run -- CMD   (or provtrace notebook run NB.ipynb)")


def run_title(doc: dict) -> str:
    run = doc["run"]
    return f"run {printable(run.get('id'))} ({printable(run.get('kind'))})"


def run_lines(doc: dict) -> list[str]:
    run = doc["run"]
    gaps = ", ".join(printable(k) for k, v in (run.get("gaps") or {}).items() if v) or "none"
    return [
        f"id        {_opt(run.get('id'))}   kind {_opt(run.get('kind'))}   "
        f"backend {_opt(run.get('backend'))}   label {_opt(run.get('label')) or '-'}",
        f"argv      {' '.join(printable(a) for a in run.get('argv') or [])}",
        f"cwd       {_opt(run.get('cwd'))}",
        f"user      {_opt(run.get('user'))} (uid {_opt(run.get('uid'))})   host {_opt(run.get('host'))}",
        f"started   {_opt(run.get('started'))}   ended {_opt(run.get('ended'))}   "
        f"exit {_opt(run.get('exit_code'))}",
        f"complete  {_opt(run.get('complete'))}   lost events {_opt(run.get('lost_events'))}   "
        f"gaps {gaps}",
        f"recorded  {len(doc.get('processes') or [])} processes, {len(doc.get('files') or [])} file "
        f"records, {len(doc.get('renames') or [])} renames, {len(doc.get('network') or [])} sockets, "
        f"{len(doc.get('cells') or [])} cells",
    ]


# -- cells --------------------------------------------------------------------
def cell_rows(doc: dict, stale: frozenset[str] = frozenset()) -> list[tuple[str, tuple[str, ...]]]:
    """(key, row) per cell, in execution order as recorded; the cells whose ids
    are in stale carry the badge after their status. Reads and writes are one
    path a line (names cannot hold a newline here: printable escapes it), so
    each path is shown whole rather than cut off in a comma list."""
    out = []
    for i, c in enumerate(doc.get("cells") or []):
        reads, writes = c.get("reads") or [], c.get("writes") or []
        status = _opt(c.get("status")) + (f" {STALE_BADGE}" if c.get("id") in stale else "")
        out.append((f"cell-{i}", (_opt(c.get("index")), _opt(c.get("execution_count")),
                                  status, _opt(c.get("id")),
                                  "\n".join(printable(p) for p in reads),
                                  "\n".join(printable(p) for p in writes),
                                  str(len(c.get("processes") or [])))))
    return out


# -- files --------------------------------------------------------------------
def file_rows(doc: dict, all_kinds: bool = False) -> list[tuple[str, tuple[str, ...]]]:
    """(key, row) per file record; key "file-N" indexes doc["files"]. Data first."""
    files = list(enumerate(doc.get("files") or []))
    files.sort(key=lambda e: (e[1].get("kind") not in SHOWN_FILE_KINDS, e[1].get("path") or ""))
    return [(f"file-{i}", (printable(f.get("path")), ",".join(f.get("access") or []) or "-",
                           _opt(f.get("kind")), size(f.get("bytes_read")), size(f.get("bytes_written")),
                           _opt(f.get("pid")), _opt(f.get("cell"))))
            for i, f in files if all_kinds or f.get("kind") in SHOWN_FILE_KINDS]


def file_path(doc: dict, key: str) -> str:
    """The exact name of a file row, for lineage: raw bytes from path_b64 when not UTF-8."""
    f = doc["files"][int(key.removeprefix("file-"))]
    if f.get("path_b64"):
        return os.fsdecode(base64.b64decode(f["path_b64"]))
    return f["path"]


# -- processes ----------------------------------------------------------------
def process_tree(doc: dict) -> list[TreeItem]:
    """The run's processes as a forest by ppid.

    Pids are reused, so a child's parent is the latest process with its ppid
    that started before the child (ISO times in one format compare as strings).
    """
    procs = doc.get("processes") or []
    by_pid: dict[int, list[int]] = {}
    for i, p in enumerate(procs):
        by_pid.setdefault(p.get("pid"), []).append(i)
    kids: dict[int | None, list[int]] = {}
    for i, p in enumerate(procs):
        kids.setdefault(_parent(procs, by_pid, i, p), []).append(i)

    # Built children first (latest start first), without recursion: a chain of
    # thousands of nested processes must not hit the recursion limit.
    items: dict[int, TreeItem] = {}
    for i in sorted(range(len(procs)), key=lambda i: (procs[i].get("started") or "", i), reverse=True):
        items[i] = TreeItem(_proc_label(procs[i]), tuple(items[k] for k in kids.get(i, [])))
    return [items[i] for i in kids.get(None, [])]


def _parent(procs: list[dict], by_pid: dict[int, list[int]], i: int, p: dict) -> int | None:
    # Ordering candidates by (started, index) and taking only earlier ones
    # keeps the parent relation acyclic even when start times tie or are missing.
    me = (p.get("started") or "", i)
    earlier = [(procs[j].get("started") or "", j) for j in by_pid.get(p.get("ppid"), [])]
    earlier = [k for k in earlier if k < me]
    return max(earlier)[1] if earlier else None


def _proc_label(p: dict) -> str:
    argv = " ".join(printable(a) for a in p.get("argv") or []) or printable(p.get("exe"))
    status = f"signal {p['signal']}" if p.get("signal") else f"exit {_opt(p.get('exit_code')) or '?'}"
    cell = f"  cell {printable(p['cell'])}" if p.get("cell") else ""
    return f"{p.get('pid')}  {argv}  ({status}){cell}"


# -- context ------------------------------------------------------------------
def library_rows(doc: dict) -> list[tuple[str, tuple[str, ...]]]:
    libs = (doc.get("context") or {}).get("libraries") or []
    return [(f"lib-{i}", (printable(x.get("path")), _opt(x.get("soname")), _opt(x.get("package")),
                          _opt(x.get("build_id"))[:16]))
            for i, x in enumerate(libs)]


def package_rows(doc: dict) -> list[tuple[str, tuple[str, ...]]]:
    pkgs = (doc.get("context") or {}).get("packages") or []
    return [(f"pkg-{i}", (printable(x.get("name")), _opt(x.get("version")), _opt(x.get("ecosystem"))))
            for i, x in enumerate(pkgs)]


def host_lines(doc: dict) -> list[str]:
    """Host, interpreters and GPU state, as lines."""
    ctx = doc.get("context") or {}
    if not ctx:
        return ["no execution context recorded for this run"]
    cpu = ctx.get("cpu") or {}
    mem = ctx.get("memory_bytes")
    osr = (ctx.get("os_release") or {}).get("PRETTY_NAME")
    lines = [f"host      {_opt(ctx.get('host'))}   os {_opt(osr)}   arch {_opt(ctx.get('arch'))}",
             f"kernel    {_opt(ctx.get('kernel'))}",
             f"cpu       {_opt(cpu.get('model'))} x{_opt(cpu.get('count'))}   "
             f"memory {size(mem) if isinstance(mem, int) else '?'}"]
    for k, v in ctx.items():
        if k not in _KNOWN_CONTEXT and isinstance(v, (str, int, float, dict)) and v:
            lines.append(f"{printable(k):9} {printable(v)}")
    lines.append("")
    lines.append("interpreters:")
    interps = ctx.get("interpreters") or []
    lines += [f"  {printable(x.get('name'))} {_opt(x.get('version'))}  {printable(x.get('path'))}"
              + (f"  ({printable(x['error'])})" if x.get("error") else "") for x in interps] or ["  none recorded"]
    lines.append("")
    lines.append("GPUs:")
    lines += gpu_lines(ctx.get("gpus"))
    return lines


_KNOWN_CONTEXT = {"host", "kernel", "kernel_version", "arch", "os_release", "cpu", "memory_bytes",
                  "container", "cgroup", "rlimits", "limits_pid", "interpreters", "libraries",
                  "packages", "gpus", "gpu_samples", "env"}


def gpu_lines(gpus: list[dict] | None) -> list[str]:
    if not gpus:
        return [f"  {NO_GPU}" if gpus == [] else "  no GPU state recorded"]
    out = []
    for g in gpus:
        if g.get("error"):
            out.append(f"  #{_opt(g.get('index'))}: {printable(g['error'])}")
            continue
        out.append(f"  #{_opt(g.get('index'))} {printable(g.get('name'))}  driver "
                   f"{_opt(g.get('driver_version'))}  CUDA {_opt(g.get('cuda_version'))}  memory "
                   f"{size(g.get('memory_used_bytes'))} / {size(g.get('memory_total_bytes'))}  "
                   f"util {_opt(g.get('utilization_gpu_percent'))}%  "
                   f"{len(g.get('processes') or [])} traced processes on it")
    return out


# -- lineage ------------------------------------------------------------------
_VERBS = {"wrote": ("written by", "writes"), "read": ("reads", "read by"),
          "renamed": ("renamed from", "renamed to"), "pipe": ("piped from", "pipes to"),
          "updated": ("updated from", "updated into"),
          "kernel_state": ("kernel state from", "kernel state to")}


def lineage_tree(lin: M.Lineage) -> TreeItem:
    """The root file, then each step away from it; a node met again is not expanded twice."""
    up = lin.direction == M.UPSTREAM
    children: dict[str, list[tuple[str, str]]] = {}
    for e in lin.edges:
        a, b = (e.target, e.source) if up else (e.source, e.target)
        children.setdefault(a, []).append((b, e.relation))
    shown: set[str] = {lin.root}

    def label(nid: str) -> str:
        n = lin.nodes.get(nid)
        return printable(n.label if n else nid)

    def visit(nid: str, depth: int) -> tuple[TreeItem, ...]:
        out = []
        for child, rel in children.get(nid, []):
            verb = _VERBS.get(rel, (rel or "linked to", rel or "linked to"))[0 if up else 1]
            if child in shown:
                out.append(TreeItem(f"{verb} {label(child)} (see above)", key=child))
                continue
            shown.add(child)
            out.append(TreeItem(f"{verb} {label(child)}", visit(child, depth + 1), key=child))
        return tuple(out)

    kids = visit(lin.root, 1)
    if not lin.found:
        why = ("no traced process wrote this path or renamed a file onto it" if up
               else "no traced process read this path or renamed it")
        kids = (TreeItem(f"nothing {lin.direction}: {why}"),)
    path = M.path_of(lin.root)  # the title names the path; the version shows below it
    title = printable(display(path)) if path is not None else label(lin.root)
    return TreeItem(f"{lin.direction} lineage of {title}", kids, key=lin.root)


# -- resources ------------------------------------------------------------------
BAR_CELLS = 12
BAR_ROWS = 30  # processes shown when a run has no cells
RESOURCE_SERIES = (("wall_s", "wall time"), ("cpu", "CPU time"), ("peak_rss_bytes", "peak RSS"),
                   ("read_bytes", "bytes read"), ("written_bytes", "bytes written"))


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def cpu_s(res: dict | None) -> float | None:
    """User + system CPU, or None when not measured."""
    if not res or res.get("cpu_user_s") is None:
        return None
    return (res.get("cpu_user_s") or 0) + (res.get("cpu_system_s") or 0)


def metric(res: dict | None, key: str) -> float | None:
    return cpu_s(res) if key == "cpu" else (res or {}).get(key)


def resource_lines(doc: dict) -> list[str]:
    """The run's totals, and where its figures come from."""
    r = doc["run"].get("resources") or {}
    gpus = r.get("gpu") or []
    gpu = "; ".join(f"GPU {g.get('index')}: peak {size(g.get('memory_peak_bytes')) or '-'} held, "
                    f"{_opt(g.get('utilization_peak_percent')) or '-'}% busy" for g in gpus) or NO_GPU
    return [
        f"wall {seconds(r.get('wall_s'))}   CPU user {seconds(r.get('cpu_user_s'))}   "
        f"system {seconds(r.get('cpu_system_s'))}   peak RSS {size(r.get('peak_rss_bytes')) or '-'}",
        f"read {size(r.get('read_bytes')) or '-'}   written {size(r.get('written_bytes')) or '-'}   "
        f"measured {_opt(r.get('processes_measured'))} of {_opt(r.get('processes'))} processes",
        f"GPU       {printable(gpu)}",
    ]


def _bar(value: float | None, top: float) -> str:
    if value is None:
        return "·" * BAR_CELLS
    n = round(BAR_CELLS * value / top) if top else 0
    return "█" * n + "░" * (BAR_CELLS - n)


def resource_bars(doc: dict) -> list[str]:
    """One line per cell (or, for a run without cells, per process by CPU):
    CPU and peak RSS as bars scaled to the largest."""
    cells = doc.get("cells") or []
    if cells:
        items = [(f"[{_opt(c.get('index'))}] {printable(c.get('id'))}", c.get("resources")) for c in cells]
        head = "per cell"
    else:
        procs = sorted(doc.get("processes") or [], key=lambda p: -(cpu_s(p.get("resources")) or 0))
        items = [(f"{p.get('pid')} {printable(os.path.basename(p.get('exe') or '?'))}",
                  p.get("resources")) for p in procs[:BAR_ROWS]]
        head = "per process (most CPU first)"
    top_cpu = max((cpu_s(r) or 0 for _, r in items), default=0)
    top_rss = max(((r or {}).get("peak_rss_bytes") or 0 for _, r in items), default=0)
    lines = [f"{head}", f"{'':14} {'CPU':{BAR_CELLS + 9}}  peak RSS"]
    for label, r in items:
        cpu, rss = cpu_s(r), (r or {}).get("peak_rss_bytes")
        lines.append(f"{label[:14]:14} {_bar(cpu, top_cpu)} {seconds(cpu):>8}  "
                     f"{_bar(rss, top_rss)} {size(rss) or '-':>9}")
    return lines


def history_series(history: list[dict]) -> dict[str, list[float]]:
    """Per metric, its values over the job's runs, oldest first (unmeasured as 0)."""
    return {key: [float(metric(h.get("resources"), key) or 0) for h in history]
            for key, _title in RESOURCE_SERIES}


def history_caption(history: list[dict], key: str, title: str) -> str:
    values = [metric(h.get("resources"), key) for h in history]
    fmt = size if key.endswith("bytes") else seconds
    known = [v for v in values if v is not None]
    last = values[-1] if values else None
    # the sparkline spans min..max, so a small spread looks large: say what it spans
    span = f"min {fmt(min(known))}  max {fmt(max(known))}" if known else "not measured"
    return f"{title:14} {len(history)} runs   {span}   latest {fmt(last) or '-'}"
