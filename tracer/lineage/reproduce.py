"""Did a re-run reproduce its original? ``compare`` over two provtrace.run/1 documents.

The facts come from ``diff.diff_runs``: inputs and outputs compared by content
(sha256), packages, libraries (build-id) and interpreters. A command run is
compared as a whole, plus its exit code; a notebook run cell by cell (each
cell's own files and context, its code and its status), plus what happened
outside any cell (kernel start-up).

Every difference gets a likely cause. A difference that is a cause by itself
(an input whose content changed, a package or library or interpreter that
changed, a cell whose code changed) is its own cause. An effect (an output, an
exit code, a cell's status, a different set of files read) is explained by the
causes before it: in a command run, anything else that differs; in a notebook,
anything that differs in the same cell or an earlier one (a kernel carries
state from cell to cell). An effect nothing explains is "nondeterministic":
the same inputs, packages and libraries gave other bytes (a timestamp, a
random seed, an unordered walk).

Environment variables and the host are not compared for the verdict (the
re-run restores the environment on purpose; a host may legitimately be
patched), but a difference there is offered as a cause: a secret that was
redacted when recorded and not supplied again, a new kernel version.

``--tolerate GLOB`` declares outputs whose content may differ (logs,
timestamps): they are listed as tolerated, never as differences.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence

from ..context.redact import REDACTED
from .diff import diff_runs

SCHEMA = "provtrace.reproduce/1"

# Causes, the more likely first when several explain one effect.
CAUSES = ("input_changed", "package_changed", "library_changed", "interpreter_changed", "code_changed",
          "environment_changed", "host_changed", "nondeterministic")
CAUSE_WORDS = {
    "input_changed": "input changed",
    "package_changed": "package changed",
    "library_changed": "library changed",
    "interpreter_changed": "interpreter changed",
    "code_changed": "notebook code changed",
    "environment_changed": "environment changed",
    "host_changed": "host changed",
    "nondeterministic": "nondeterministic output (same inputs, packages and libraries)",
}
_BECAUSE_SHOWN = 5
# levels: causes (0), files read that differ (1), what the run produced (2)
_CAUSE, _READ, _EFFECT = 0, 1, 2
_LABELS = {"exit_code": "exit code", "environment": "environment variable"}
_WEAK = "secret_not_restored"  # a cause that is only ever offered as possible


def compare(original: dict, rerun: dict, *, tolerate: Sequence[str] = (), env_restored: bool = True) -> dict:
    """The provtrace.reproduce/1 verdict on rerun against original.

    env_restored: whether the re-run was given the original's environment
    (a command run): only then is an environment difference a cause."""
    run_a, run_b = original.get("run") or {}, rerun.get("run") or {}
    cwd = run_a.get("cwd") or ""
    found = _Found(tolerate, cwd)
    notebook = run_a.get("kind") == "notebook"
    if notebook:
        cells = _compare_cells(original, rerun, found)
        # Outside any cell: the kernel's start-up and shut-down. Its files (a
        # connection file) are the kernel's, not the notebook's, and tracing joins
        # a kernel once it has started, so what it loads then is caught or not by
        # timing: only a package or library whose version changed counts.
        outside = _outside_cells(original), _outside_cells(rerun)
        found.scope(diff_runs(*outside), cell=None, order=-1, env=False, where="kernel: ", files=False,
                    sets=False)
        found.drop_repeated()
    else:
        cells = []
        found.scope(diff_runs(original, rerun), cell=None, order=0, env=env_restored)
        if run_a.get("exit_code") != run_b.get("exit_code"):
            found.add(_EFFECT, "exit_code", "exit code", "value", run_a.get("exit_code"),
                      run_b.get("exit_code"), None, 0,
                      f"exit code {run_a.get('exit_code')} → {run_b.get('exit_code')}")
    found.explain()
    differences = found.public()
    for summary in cells:
        summary["differences"] = sum(1 for d in differences if d["cell"] == summary["id"])
        if summary["status"] == "compared":
            summary["status"] = "differs" if summary["differences"] else "reproduced"
    return {
        "schema": SCHEMA,
        "original": _header(run_a),
        "rerun": _header(run_b),
        "reproduced": not differences,
        "differences": differences,
        "tolerated": found.tolerated,
        "compared": {**found.counted, **_counts(rerun)},
        "cells": cells,
        "notes": found.notes + _capture_notes(run_a, "original") + _capture_notes(run_b, "re-run"),
    }


class _Found:
    """Differences as they are found, then explained in order."""

    def __init__(self, tolerate: Sequence[str], cwd: str) -> None:
        self.globs, self.cwd = list(tolerate), cwd
        self.differences: list[dict] = []
        self.tolerated: list[dict] = []
        self.notes: list[str] = []
        self.counted = {"inputs": 0, "outputs": 0}  # files compared, over every scope
        self.where = ""  # the scope being read, as messages start ("cell #2 ab12: ")

    def add(self, level: int, what: str, key: str, change: str, original, rerun, cell: str | None,
            order: int, message: str, cause: str | None = None) -> None:
        self.differences.append({"what": what, "key": key, "change": change, "original": original,
                                 "rerun": rerun, "cell": cell, "cause": cause, "because": [], "possible": [],
                                 "message": message, "_level": level, "_order": order,
                                 "_label": _LABELS.get(what, what) + ("" if what == "exit_code" else f" {key}"),
                                 "_where": self.where})

    def scope(self, d: dict, *, cell: str | None, order: int, env: bool, where: str = "",
              files: bool = True, sets: bool = True) -> None:
        """The differences of one diff_runs result (a run, or one cell); where
        ("cell #2 ab12: ") starts each message."""
        self.where = where
        if files:
            for section in ("inputs", "outputs"):
                part = d[section]
                self.counted[section] += (part["unchanged"] + len(part["changed"]) + len(part["unknown"])
                                          + len(part["only_a"]) + len(part["only_b"]))
            self._files(d["inputs"], "input", cell, order, where)
            self._files(d["outputs"], "output", cell, order, where)
        for section, what, cause in (("packages", "package", "package_changed"),
                                     ("libraries", "library", "library_changed"),
                                     ("interpreters", "interpreter", "interpreter_changed")):
            self._keyed(d[section], what, cause, cell, order, where, sets)
        if env:  # hidden causes: not differences, but they may explain one
            for item in d["env"]["changed"] + d["env"]["only_a"] + d["env"]["only_b"]:
                unrestored = "b" not in item and REDACTED in str(item.get("a"))
                self.add(_CAUSE, "environment", item["key"], "unrestored" if unrestored else "value",
                         item.get("a"), item.get("b"), cell, order, f"environment variable {item['key']}",
                         cause=_WEAK if unrestored else "environment_changed")
        for item in d["host"]["changed"] + d["gpus"]["changed"] + d["gpus"]["only_a"] + d["gpus"]["only_b"]:
            self.add(_CAUSE, "host", str(item["key"]), "value", item.get("a"), item.get("b"), cell, order,
                     f"host {item['key']}", cause="host_changed")
            if cell is None:
                self.notes.append(f"host {item['key']} changed: {item.get('a')} → {item.get('b')}")

    def _files(self, section: dict, what: str, cell: str | None, order: int, where: str) -> None:
        verb = "read" if what == "input" else "written"
        for item in section["changed"]:
            path, a, b = item["path"], item["a"], item["b"]
            if what == "output" and self._tolerated(path, cell):
                continue
            if item["basis"] == "sha256":
                msg = f"{where}{what} {path}: content changed (sha256 {_short(a['sha256'])} → {_short(b['sha256'])})"
                self.add(_CAUSE if what == "input" else _EFFECT, what, path, "content", _facts(a), _facts(b),
                         cell, order, msg, cause="input_changed" if what == "input" else None)
            elif a.get("size_bytes") != b.get("size_bytes"):  # not hashed (too large): sizes tell
                msg = f"{where}{what} {path}: size changed ({a.get('size_bytes')} → {b.get('size_bytes')} bytes)"
                self.add(_CAUSE if what == "input" else _EFFECT, what, path, "size", _facts(a), _facts(b),
                         cell, order, msg, cause="input_changed" if what == "input" else None)
            else:
                self.notes.append(f"{where}{what} {path}: same size, content not compared (no sha256 recorded)")
        for path, change, msg in ([(p, "missing", f"{verb} by the original, not by the re-run")
                                   for p in section["only_a"]] +
                                  [(p, "added", f"{verb} by the re-run only") for p in section["only_b"]]):
            if what == "output" and self._tolerated(path, cell):
                continue
            self.add(_READ if what == "input" else _EFFECT, what, path, change, None, None, cell, order,
                     f"{where}{what} {path}: {msg}")
        for path in section["unknown"]:
            self.notes.append(f"{where}{what} {path}: not compared (no sha256, size or mtime recorded)")

    def _keyed(self, section: dict, what: str, cause: str, cell: str | None, order: int, where: str,
               sets: bool) -> None:
        for item in section["changed"]:
            a, b = item["a"], item["b"]
            if what == "library":
                msg = (f"{where}library {item['key']}: build-id {_short(a.get('build_id'))} → "
                       f"{_short(b.get('build_id'))} ({b.get('path') or a.get('path')})")
            else:
                msg = f"{where}{what} {item['key']}: {a} → {b}"
            self.add(_CAUSE, what, item["key"], "version" if what != "library" else "build_id", a, b,
                     cell, order, msg, cause=cause)
        if not sets:
            return
        # one used by one run only is mostly a consequence (other code ran); explained in explain()
        for item in section["only_a"]:
            self.add(_READ, what, item["key"], "missing", item["a"], None, cell, order,
                     f"{where}{what} {item['key']} {_version(item['a'])}: used by the original only")
        for item in section["only_b"]:
            self.add(_READ, what, item["key"], "added", None, item["b"], cell, order,
                     f"{where}{what} {item['key']} {_version(item['b'])}: used by the re-run only")

    def _tolerated(self, path: str, cell: str | None) -> bool:
        rel = os.path.relpath(path, self.cwd) if self.cwd and path.startswith(self.cwd.rstrip("/") + "/") else None
        for glob in self.globs:
            if fnmatch.fnmatchcase(path, glob) or (rel is not None and fnmatch.fnmatchcase(rel, glob)):
                self.tolerated.append({"path": path, "cell": cell, "glob": glob})
                return True
        return False

    def drop_repeated(self) -> None:
        """A notebook's run-wide context repeats what its cells' contexts said: keep the cell's."""
        in_cells = {(d["what"], d["key"], d["change"]) for d in self.differences if d["cell"] is not None}
        self.differences = [d for d in self.differences
                            if d["cell"] is not None or (d["what"], d["key"], d["change"]) not in in_cells]

    def explain(self) -> None:
        """Each effect's likely cause: the best cause among what differs before it.
        A secret that could not be restored explains nothing for sure (most
        programs never read SSH_AUTH_SOCK): it is only named as possible."""
        ordered = sorted(self.differences, key=lambda d: (d["_order"], d["_level"]))
        for d in ordered:
            if d["cause"] is not None:
                continue
            before = [u for u in ordered if u is not d and u["cause"] is not None and (
                u["_order"] < d["_order"] or (u["_order"] == d["_order"] and u["_level"] < d["_level"]))]
            # the same cell's (or run's) own changes first; an earlier cell's only when it
            # has none (a kernel carries state from cell to cell)
            same = [u for u in before if u["_order"] == d["_order"] and _as_cause(u) != _WEAK]
            pool = same or before
            found = sorted({_as_cause(u) for u in pool} - {_WEAK}, key=CAUSES.index)
            # a file, package or library used by one run only, with nothing before it that
            # differs, is itself the change: a new file a glob picked up, a new plugin
            d["cause"] = found[0] if found else _KIND_CAUSE.get(d["what"], "nondeterministic")
            d["because"] = [(u["_label"] if u["cell"] == d["cell"] else f"{u['_where']}{u['_label']}")
                            for u in sorted(pool, key=lambda u: (-u["_order"], u["_level"]))
                            if _as_cause(u) == d["cause"]][:_BECAUSE_SHOWN]
            if d["cause"] == "nondeterministic":
                d["possible"] = [f"{u['_label']} (not restored)" for u in before
                                 if u["cause"] == _WEAK][:_BECAUSE_SHOWN]


    def public(self) -> list[dict]:
        """The differences users see (hidden causes, environment and host, are not among them)."""
        out = []
        for d in sorted(self.differences, key=lambda d: (d["_order"], d["_level"])):
            if d["what"] in ("environment", "host"):
                continue
            out.append({k: v for k, v in d.items() if not k.startswith("_")})
        return out


_KIND_CAUSE = {"input": "input_changed", "package": "package_changed", "library": "library_changed",
               "interpreter": "interpreter_changed"}


def _as_cause(d: dict) -> str:
    """What an earlier difference counts as, when it explains a later one: a
    different set of files, packages or libraries used is a change of that
    kind; an earlier cell's output counts as its own cause."""
    return _KIND_CAUSE.get(d["what"], d["cause"])


def _compare_cells(original: dict, rerun: dict, found: _Found) -> list[dict]:
    """One summary per cell of either run, in the original's order; differences go to found."""
    new = {c.get("id"): c for c in rerun.get("cells") or []}
    summaries = []
    for order, cell in enumerate(original.get("cells") or []):
        cid = cell.get("id")
        label = _cell_label(cell)
        found.where = f"{label}: "
        other = new.pop(cid, None)
        summary = {"id": cid, "index": cell.get("index"), "status": "compared", "differences": 0}
        summaries.append(summary)
        if other is None:
            summary["status"] = "missing"
            found.add(_EFFECT, "cell", cid, "missing", cell.get("status"), None, cid, order,
                      f"{label}: ran in the original, not in the re-run")
            continue
        if cell.get("code_sha256") != other.get("code_sha256"):
            found.add(_CAUSE, "cell", cid, "code", cell.get("code_sha256"), other.get("code_sha256"), cid,
                      order, f"{label}: its code changed since the original ran", cause="code_changed")
        if cell.get("status") != other.get("status"):
            found.add(_EFFECT, "cell", cid, "status", cell.get("status"), other.get("status"), cid, order,
                      f"{label}: status {cell.get('status')} → {other.get('status')}")
        found.scope(diff_runs(_cell_doc(original, cell), _cell_doc(rerun, other)), cell=cid, order=order,
                    env=False, where=f"{label}: ")
    for order, cell in enumerate(new.values(), start=len(summaries)):
        summaries.append({"id": cell.get("id"), "index": cell.get("index"), "status": "added", "differences": 0})
        found.where = f"{_cell_label(cell)}: "
        found.add(_EFFECT, "cell", cell.get("id"), "added", None, cell.get("status"), cell.get("id"), order,
                  f"{_cell_label(cell)}: ran in the re-run only")
    return summaries


def _cell_label(cell: dict) -> str:
    index = cell.get("index")
    return "cell " + (f"#{index} " if isinstance(index, int) else "") + str(cell.get("id"))


def _cell_doc(doc: dict, cell: dict) -> dict:
    """One cell as a document of its own: its files, renames and context."""
    cid = cell.get("id")
    return {"run": {"id": cid}, "context": cell.get("context") or {},
            "files": [f for f in doc.get("files") or [] if f.get("cell") == cid],
            "renames": [r for r in doc.get("renames") or [] if r.get("cell") == cid]}


def _outside_cells(doc: dict) -> dict:
    """A notebook run's events outside any cell (kernel start-up), with the run's context."""
    context = {k: v for k, v in (doc.get("context") or {}).items() if k != "env"}
    return {"run": doc.get("run") or {}, "context": context,
            "files": [f for f in doc.get("files") or [] if f.get("cell") is None],
            "renames": [r for r in doc.get("renames") or [] if r.get("cell") is None]}


def _header(run: dict) -> dict:
    return {k: run.get(k) for k in ("id", "kind", "backend", "argv", "cwd", "started", "exit_code", "complete")}


def _counts(doc: dict) -> dict:
    """How many packages and libraries the re-run used (for the "reproduced" line)."""
    ctx = doc.get("context") or {}
    return {"packages": len({(p.get("ecosystem"), p.get("name")) for p in ctx.get("packages") or []}),
            "libraries": len({lib.get("soname") or lib.get("path") for lib in ctx.get("libraries") or []})}


def _capture_notes(run: dict, which: str) -> list[str]:
    notes = []
    if run.get("lost_events"):
        notes.append(f"the {which} run lost {run['lost_events']} events: a difference may be a capture gap")
    if run.get("ended") is None:
        notes.append(f"the {which} run never finished recording")
    return notes


def _facts(facts: dict) -> dict:
    return {k: facts.get(k) for k in ("sha256", "size_bytes")}


def _version(value) -> str:
    if isinstance(value, dict):  # a library
        return f"(build-id {_short(value.get('build_id'))})"
    return str(value or "")


def _short(value) -> str:
    text = str(value) if value is not None else "-"
    return text[:12] + "…" if len(text) > 13 else text


# ---- text -------------------------------------------------------------------

def render(result: dict) -> str:
    """The verdict as text: what was re-run, then "reproduced" or each difference and its cause."""
    a, b = result["original"], result["rerun"]
    out = [f"original {a['id']} ({a['kind']}): {' '.join(str(x) for x in a.get('argv') or [])}",
           f"re-run   {b['id']} ({b.get('backend')}), exit {b.get('exit_code')} "
           f"(original: {a.get('exit_code')})"]
    if result["reproduced"]:
        c = result["compared"]
        out.append(f"REPRODUCED: same inputs ({c['inputs']}), outputs ({c['outputs']}), packages "
                   f"({c['packages']}), libraries ({c['libraries']})"
                   + (f" and cells ({len(result['cells'])})" if result["cells"] else " and exit code"))
    else:
        n = len(result["differences"])
        out.append(f"DIFFERS: {n} difference{'s' if n != 1 else ''}")
        for d in result["differences"]:
            out.append(f"  {d['message']}")
            out.append(f"      likely cause: {CAUSE_WORDS.get(d['cause'], d['cause'])}"
                       + (f": {', '.join(d['because'])}" if d["because"] else ""))
            if d["possible"]:
                out.append(f"      also possible: {', '.join(d['possible'])}")
    if result["cells"]:
        out.append("cells:")
        for c in result["cells"]:
            index = f"#{c['index']}" if isinstance(c.get("index"), int) else "  "
            more = (f" ({c['differences']} difference{'s' if c['differences'] != 1 else ''})"
                    if c["differences"] else "")
            out.append(f"  {index:>4} {c['id']}  {c['status']}{more}")
    for t in result["tolerated"]:
        out.append(f"tolerated: {t['path']} (--tolerate {t['glob']!r})")
    out += [f"note: {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"
