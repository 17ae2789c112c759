"""`provtrace report RUN -o FILE.html`: one self-contained HTML file.

Everything the page shows is in the file: CSS inline, charts as inline SVG
built here, the lineage picture as a base64 `data:` image (an SVG inside an
<img> runs no script, whatever a file name holds). Every text goes through
Jinja2's autoescaping; nothing is marked safe except the image's base64.

Sections: summary (with loss shown first when anything was lost), resources
(run totals, per-cell and per-process figures, charts across cells and
across runs of the same job), the lineage picture of the outputs, cells,
files, environment, stale status.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..errors import TracerError
from ..lineage.graph import lineage
from .lineage_picture import to_image
from ..lineage.stale import staleness, why_text
from ..store import queries as Q
from ..store import sqlite as S
from ..store.history import same_job

log = logging.getLogger(__name__)

OUTPUTS_DRAWN = 8  # outputs whose upstream lineage is drawn
PICTURE_DEPTH = 3
ROWS = 200  # table rows before "and N more"


@dataclass
class Report:
    html: str
    warnings: list[str] = field(default_factory=list)


def build(store: S.Store, rid: int, *, config=None, uid: int | None = None) -> Report:
    """The report of one run or session; warnings name what could not be included."""
    doc = Q.load_run(store, rid, config)
    warnings: list[str] = []
    picture, picture_note = _picture(store, doc, config, uid, warnings)
    try:
        stale = _stale_of(staleness(store, rid, uid=uid, config=config))
    except TracerError as e:
        stale = None
        warnings.append(f"stale status not computed: {e}")
    history = same_job(store, doc, uid, config)
    env = _environment()
    html = env.get_template("report.html.j2").render(
        doc=doc, run=doc["run"], loss=_loss(doc["run"]), job=job_name(doc["run"]),
        picture=picture, picture_note=picture_note, stale=stale, history=history,
        cell_charts=_cell_charts(doc["cells"]), history_charts=_history_charts(history),
        processes=_top_processes(doc["processes"]), outputs=outputs(doc), inputs=_inputs(doc),
        context=doc.get("context") or {}, rows=ROWS)
    return Report(html, warnings)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(bytes=fmt_bytes, seconds=fmt_seconds, short=lambda s: (s or "")[:12])
    return env


# ---- summary ----------------------------------------------------------------------

def job_name(run: dict) -> str:
    """What the run ran: the notebook's path, or the command line."""
    argv = run.get("argv") or []
    if run.get("kind") == "notebook" and argv:
        return argv[-1]
    if run.get("kind") == "session" and run.get("label"):
        return run["label"]  # the notebook its kernel was registered with
    return " ".join(argv) or "(unknown)"


def _loss(run: dict) -> dict | None:
    """What was lost, for the banner at the top; None for a complete run."""
    lost = run.get("lost_events") or 0
    if run.get("complete") and not lost:
        return None
    reasons = {k: v for k, v in (run.get("lost_by_reason") or {}).items() if v}
    return {"lost": lost, "reasons": reasons, "scope": run.get("lost_scope"),
            "end_reason": run.get("end_reason"), "not_finished": run.get("ended") is None,
            "gaps": run.get("gaps") or {}}


# ---- lineage picture --------------------------------------------------------------

def outputs(doc: dict) -> list[str]:
    """Data files the run wrote, under the names renames gave them."""
    renamed = {r["from"]: r["to"] for r in doc.get("renames") or []}
    out = set()
    for f in doc["files"]:
        if f["kind"] in ("data", "temp") and set(f["access"]) & {"write", "create", "truncate"}:
            path = renamed.get(f["path"], f["path"])
            if f["kind"] == "data" or path != f["path"]:
                out.add(path)
    return sorted(out)


def _inputs(doc: dict) -> list[str]:
    mine = set(outputs(doc))
    return sorted({f["path"] for f in doc["files"]
                   if f["kind"] == "data" and "read" in f["access"] and f["path"] not in mine})


def _picture(store: S.Store, doc: dict, config, uid: int | None,
             warnings: list[str]) -> tuple[str | None, str | None]:
    """(base64 SVG of the outputs' upstream lineage, or None; a note when not drawn)."""
    outs = outputs(doc)
    if not outs:
        return None, "The run wrote no data files: there is no lineage to draw."
    merged = {"root": f"outputs of run {doc['run']['id']}", "direction": "upstream",
              "nodes": [], "edges": []}
    seen_nodes, seen_edges = set(), set()
    for path in outs[:OUTPUTS_DRAWN]:
        res = lineage(store, path, "upstream", PICTURE_DEPTH, uid, config=config)
        for n in res["nodes"]:
            if n["id"] not in seen_nodes:
                seen_nodes.add(n["id"])
                merged["nodes"].append(n)
        for e in res["edges"]:
            key = (e["from"], e["to"], e.get("rel"))
            if key not in seen_edges:
                seen_edges.add(key)
                merged["edges"].append(e)
    note = (f"Drawn for the first {OUTPUTS_DRAWN} of {len(outs)} outputs."
            if len(outs) > OUTPUTS_DRAWN else None)
    try:
        svg = to_image(merged, "svg")
    except TracerError as e:  # no Graphviz: the report says so, the CLI warns once
        warnings.append(f"lineage picture left out: {e}")
        return None, (f"The lineage picture is missing: {e}. Install Graphviz and run "
                      "provtrace report again.")
    return base64.b64encode(svg).decode("ascii"), note


# ---- stale ------------------------------------------------------------------------

def _stale_of(result: dict) -> dict:
    rows = [{"who": s["cell"] and f"cell {s['cell']}" or "run",
             "reasons": [f"{r['path']}: {why_text(r)}" for r in s["reasons"]]}
            for s in result["stale"]]
    return {"stale": rows, "fresh": len(result["fresh"])}


# ---- resources --------------------------------------------------------------------

def _top_processes(processes: list[dict]) -> list[dict]:
    """Processes by CPU used, most first (those with no figures last)."""
    def cpu(p: dict) -> float:
        r = p.get("resources") or {}
        return (r.get("cpu_user_s") or 0) + (r.get("cpu_system_s") or 0)
    return sorted(processes, key=lambda p: (p.get("resources") is None, -cpu(p), p["pid"]))


METRICS = (  # (key in resources, title, formatter name)
    ("wall_s", "Wall time", "seconds"),
    ("cpu", "CPU time (user + system)", "seconds"),
    ("peak_rss_bytes", "Peak RSS (largest process)", "bytes"),
    ("read_bytes", "Bytes read", "bytes"),
    ("written_bytes", "Bytes written", "bytes"),
)


def _value(res: dict | None, key: str) -> float | None:
    if not res:
        return None
    if key == "cpu":
        if res.get("cpu_user_s") is None:
            return None
        return (res.get("cpu_user_s") or 0) + (res.get("cpu_system_s") or 0)
    return res.get(key)


def _cell_charts(cells: list[dict]) -> list[dict]:
    cells = cells[:ROWS]  # the cells table has them all
    labels = [f"[{c.get('index')}] {c.get('id')}" for c in cells]
    return [bar_chart(title, labels, [_value(c.get("resources"), key) for c in cells], fmt)
            for key, title, fmt in METRICS] if cells else []


def _history_charts(history: list[dict]) -> list[dict]:
    if len(history) < 2:
        return []
    labels = [h["id"] + (" (this run)" if h["this"] else "") for h in history]
    return [bar_chart(title, labels, [_value(h["resources"], key) for h in history], fmt,
                      highlight=[h["this"] for h in history])
            for key, title, fmt in METRICS]


BAR_H, GAP, LABEL_W, BAR_W, VALUE_W = 18, 6, 300, 360, 110


def bar_chart(title: str, labels: list[str], values: list[float | None], fmt: str,
              highlight: list[bool] | None = None) -> dict:
    """A horizontal bar chart as numbers for the SVG template: one row per label,
    bars scaled to the largest value; a missing value is a row saying so."""
    top = max((v for v in values if v), default=0) or 1
    show = fmt_seconds if fmt == "seconds" else fmt_bytes
    rows = []
    for i, (label, v) in enumerate(zip(labels, values)):
        rows.append({"y": i * (BAR_H + GAP), "label": label[:48] + ("…" if len(label) > 48 else ""),
                     "full": label, "width": 0 if v is None else max(1, round(BAR_W * v / top)),
                     "text": "not measured" if v is None else show(v),
                     "hi": bool(highlight and highlight[i])})
    return {"title": title, "rows": rows, "height": len(rows) * (BAR_H + GAP) + GAP,
            "width": LABEL_W + BAR_W + VALUE_W, "label_w": LABEL_W, "bar_h": BAR_H,
            "value_x": LABEL_W + BAR_W + 6}


def fmt_bytes(n: float | None) -> str:
    if not isinstance(n, (int, float)):  # None, or a key the figures lack
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "–"  # not reached: GiB returns


def fmt_seconds(s: float | None) -> str:
    if not isinstance(s, (int, float)):
        return "–"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s" if s < 120 else f"{s / 60:.1f} min"
