"""Pictures of one file's lineage: `provtrace lineage PATH --format dot|svg|png|mermaid`.

The input is the JSON-ready result of lineage.graph.lineage(). What makes the
picture readable at 50+ nodes:
- data files only: the walk skips library, system and other non-data files
  and counts them on the activity that touched them (`hidden_files`); here
  each such count becomes one summary node ("python3: 214 library files")
  instead of a chain of hundreds (`lineage --all-files` draws them all);
- activities grouped by run (Graphviz clusters, Mermaid subgraphs), so the
  runs read as boxes and only versions sit between them;
- short labels: a long path keeps its last two components (the full path is
  the DOT tooltip), a command line its program's name and arguments' names;
- a cap on the number of nodes (`--max-nodes`): above it the picture is
  refused with a one-line error that says how to narrow it, since a
  500-node drawing is not one anybody reads.

SVG and PNG come from Graphviz's own `dot` program (Debian package `graphviz`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from ..errors import UsageError
from ..model.paths import display

MAX_NODES = 150
SUMMARY_NODE_FILES = 10  # fewer hidden files than this: a line in the activity's own box
_PATH_CHARS = 40
_ARGV_CHARS = 40


@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # file | process | cell | hidden
    label: str
    run: str | None = None
    tooltip: str = ""
    root: bool = False
    dashed: bool = False


@dataclass
class Picture:
    title: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, relation)

    def runs(self) -> list[str]:
        return sorted({n.run for n in self.nodes if n.run is not None})


class PictureTooLarge(UsageError):
    """The lineage has more nodes than a picture may hold."""


def picture(result: dict, max_nodes: int = MAX_NODES) -> Picture:
    """The drawable form of a lineage result: short labels, summary nodes, run groups.
    PictureTooLarge (one line, with what to do) above max_nodes."""
    up = result["direction"] == "upstream"
    pic = Picture(title=f"{result['direction']} lineage of {display(result['root'])}")
    for n in result["nodes"]:
        hidden = n.get("hidden_files") or {}
        if n["kind"] != "file" and 0 < sum(hidden.values()) < SUMMARY_NODE_FILES:
            # a short list: one more line in the box itself ("+ 4 library, 2 system")
            pic.nodes.append(_node(n, ", ".join(f"{count} {kind}" for kind, count in hidden.items())))
            continue
        pic.nodes.append(_node(n))
        summary = _summary(n, up)
        if summary is not None:
            pic.nodes.append(summary)
            pic.edges.append((summary.id, n["id"], "read") if up else (n["id"], summary.id, "wrote"))
    pic.edges.extend((e["from"], e["to"], e["rel"]) for e in result["edges"])
    if len(pic.nodes) > max_nodes:
        raise PictureTooLarge(
            f"the {result['direction']} lineage of {display(result['root'])} has {len(pic.nodes)} nodes, "
            f"more than a picture holds (--max-nodes {max_nodes}): narrow it with --depth N, "
            "--no-kernel-state or without --all-files/--all-versions, or raise --max-nodes "
            "(--format text and json have no cap)")
    return pic


def _node(n: dict, hidden: str = "") -> Node:
    cut = "\n… more (depth limit)" if n.get("truncated") else ""
    if hidden:
        cut = f"\n+ {hidden}{cut}"
    if n["kind"] == "file":
        kind = f" ({n['file_kind']})" if n.get("file_kind") else ""
        when = "changed outside tracing" if n.get("changed_outside_tracing") else _when(n.get("written"))
        gone = ", gone" if n.get("gone") else ""
        label = f"{_short_path(n['path'])}{kind}\nversion {n.get('version')}" + (f" · {when}" if when else "")
        return Node(n["id"], "file", label + gone + cut, tooltip=display(n["path"]), root=bool(n.get("root")),
                    dashed=bool(n.get("changed_outside_tracing")))
    if n["kind"] == "cell":
        return Node(n["id"], "cell", f"cell {_short(str(n.get('cell')), 12)}{cut}", run=n.get("run"))
    argv = n.get("argv") or ([n["exe"]] if n.get("exe") else [])
    return Node(n["id"], "process", f"pid {n.get('pid')}\n{_short_argv(argv)}{cut}", run=n.get("run"),
                tooltip=" ".join(display(str(a)) for a in argv)[:500])


def _summary(n: dict, up: bool) -> Node | None:
    """One node standing for the library/system files an activity read (or wrote)."""
    hidden = n.get("hidden_files") or {}
    if not hidden or n["kind"] not in ("process", "cell"):
        return None
    if n["kind"] == "cell":
        who = f"cell {_short(str(n.get('cell')), 12)}"
    else:
        argv = n.get("argv") or []
        who = os.path.basename(str(n.get("exe") or (argv[0] if argv else "") or f"pid {n.get('pid')}"))
    counts = ", ".join(f"{count} {_plural(count, kind)}" for kind, count in hidden.items())
    verb = "read" if up else "wrote"
    return Node(f"hidden:{n['id']}", "hidden", f"{display(who)}: {counts}", run=n.get("run"),
                tooltip=f"{verb}; lineage --all-files draws each", dashed=True)


def _plural(count: int, kind: str) -> str:
    return f"{kind} file" if count == 1 else f"{kind} files"


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _short_path(path: str) -> str:
    """The path, or its last two components when it is long (the full path is the tooltip)."""
    shown = display(path)
    if len(shown) <= _PATH_CHARS:
        return shown
    tail = "/".join(shown.rstrip("/").split("/")[-2:])
    return _short("…/" + tail, _PATH_CHARS)


def _short_argv(argv: list) -> str:
    """The program's name and its arguments, path arguments by their last component."""
    words = [os.path.basename(display(str(a))) or display(str(a)) if str(a).startswith(("/", "./", "../"))
             else display(str(a)) for a in argv]
    return _short(" ".join(words), _ARGV_CHARS)


def _when(iso: str | None) -> str:
    """2026-12-07T21:14:03.123456Z -> 2026-12-07 21:14 (the full time is in --format json)"""
    return iso.replace("T", " ")[:16] if iso else ""


# ---- Graphviz ---------------------------------------------------------------

_SHAPES = {"file": "note", "process": "box", "cell": "folder", "hidden": "tab"}


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_node(n: Node, indent: str) -> str:
    style = []
    if n.root:
        style.append("bold")
    if n.dashed:
        style.append("dashed")
    attrs = [f"shape={_SHAPES[n.kind]}", f"label={_q(n.label)}"]
    if style:
        attrs.append(f"style={_q(','.join(style))}")
    if n.kind == "hidden":
        attrs.append('fontcolor="gray30", color="gray50"')
    if n.tooltip:
        attrs.append(f"tooltip={_q(n.tooltip)}")
    return f"{indent}{_q(n.id)} [{', '.join(attrs)}];"


def to_dot(result: dict, max_nodes: int = MAX_NODES) -> str:
    """Graphviz DOT: versions as notes, processes as boxes, cells as folders, summaries as
    tabs; each run's activities in a cluster; the root in bold."""
    pic = picture(result, max_nodes)
    lines = ["digraph lineage {", "  rankdir=TB; nodesep=0.2; ranksep=0.35; fontsize=11;",
             f"  label={_q(pic.title)}; labelloc=t;",
             '  node [fontname="DejaVu Sans", fontsize=10, margin="0.08,0.04", height=0.3];',
             '  edge [fontname="DejaVu Sans", fontsize=8, color="gray35"];']
    for i, rid in enumerate(pic.runs()):
        lines += [f"  subgraph cluster_{i} {{", f"    label={_q('run ' + rid)}; style=rounded; color=gray60;"]
        lines += [_dot_node(n, "    ") for n in pic.nodes if n.run == rid]
        lines.append("  }")
    lines += [_dot_node(n, "  ") for n in pic.nodes if n.run is None]
    lines += [f"  {_q(a)} -> {_q(b)} [label={_q(rel)}];" for a, b, rel in pic.edges]
    return "\n".join(lines + ["}"]) + "\n"


def to_image(result: dict, fmt: str, max_nodes: int = MAX_NODES) -> bytes:
    """SVG or PNG through Graphviz's `dot` program; one clear error when it is missing."""
    text = to_dot(result, max_nodes)  # a picture too large fails before Graphviz is looked for
    dot = shutil.which("dot")
    if dot is None:
        raise UsageError(f"--format {fmt} needs Graphviz's dot program, which is not on PATH: install the "
                         "Debian package graphviz (apt install graphviz), or use --format dot or mermaid")
    r = subprocess.run([dot, f"-T{fmt}"], input=text.encode("utf-8"), capture_output=True, timeout=120)
    if r.returncode != 0:
        raise UsageError(f"dot -T{fmt} failed: {r.stderr.decode(errors='replace').strip()[:200]}")
    return r.stdout


# ---- Mermaid ------------------------------------------------------------------

_MERMAID_SHAPES = {"file": ("[/", "/]"), "process": ("[", "]"), "cell": ("[[", "]]"), "hidden": ("(", ")")}


def _mq(text: str) -> str:
    """A Mermaid quoted label: quotes as entities, lines as <br/>."""
    return '"' + text.replace('"', "#quot;").replace("\n", "<br/>") + '"'


def to_mermaid(result: dict, max_nodes: int = MAX_NODES) -> str:
    """A Mermaid flowchart (node ids n0, n1, ...; each run a subgraph), for GitHub and JupyterLab markdown."""
    pic = picture(result, max_nodes)
    ids = {n.id: f"n{i}" for i, n in enumerate(pic.nodes)}

    def node(n: Node, indent: str) -> str:
        open_, close = _MERMAID_SHAPES[n.kind]
        return f"{indent}{ids[n.id]}{open_}{_mq(n.label)}{close}"
    lines = ["flowchart TB"]
    for i, rid in enumerate(pic.runs()):
        lines.append(f"  subgraph run{i}[{_mq('run ' + rid)}]")
        lines += [node(n, "    ") for n in pic.nodes if n.run == rid]
        lines.append("  end")
    lines += [node(n, "  ") for n in pic.nodes if n.run is None]
    lines += [f"  {ids[a]} -->|{rel}| {ids[b]}" for a, b, rel in pic.edges if a in ids and b in ids]
    lines += [f"  style {ids[n.id]} stroke-width:3px" for n in pic.nodes if n.root]
    return "\n".join(lines) + "\n"
