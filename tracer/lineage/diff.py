"""What changed between two runs: ``diff_runs`` over two provtrace.run/1 documents.

Sections, each ``{"changed": [...], "only_a": [...], "only_b": [...]}``:

- ``inputs``: data files some process read. Content is compared on ``sha256``
  when both runs recorded it, else on ``size_bytes`` and ``mtime`` where
  present; a file with nothing to compare is listed under ``unknown``.
- ``outputs``: files written, created or truncated, under their final names
  (renames the run made are followed, so ``o.tmp`` renamed to ``o`` is ``o``,
  with the content the rename put in place); same rule. A temporary the run
  removed again is not an output.
- a changed input or output that is a tabular file with a schema in both
  runs carries ``drift`` (lineage/drift.py): columns removed, added or
  retyped, in words, and whether that is breaking.
- ``inputs`` never list the run's own intermediates: a file the run created,
  renamed into place or wrote before reading it.
- ``env``: environment variables (as stored: redacted values stay redacted).
- ``argv``: the command line.
- ``cells``: a notebook's code per cell (keyed by the cell's position in the
  notebook, else its order), compared on ``code_sha256``.
- ``libraries``: keyed by soname (path when there is none); build-id changes.
- ``packages``: keyed by (ecosystem, name); version changes, added, removed.
- ``interpreters``: keyed by name; version (and path) changes.
- ``gpus``: keyed by UUID (index when absent); name, driver, CUDA, memory.
- ``host``: hostname, kernel, OS, arch, CPU model and count, memory.

Documents are read defensively: any missing key or null list is empty, so a
partial or older document diffs without crashing. ``render_diff`` prints the
result as text in two columns, ``A | B``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .drift import changed as drift_changed
from .drift import drift, summary

_WRITE_ACCESS = {"write", "create", "truncate"}
_CONTENT_FIELDS = ("size_bytes", "mtime")
_MISSING = "-"
_UNKNOWN_SHOWN = 10


def _list(doc: dict | None, *keys: str) -> list:
    value = doc or {}
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _get(doc: dict | None, *keys: str):
    value = doc or {}
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _files(doc: dict, wanted: Callable[[set[str], dict], bool]) -> dict[str, dict]:
    """Path -> merged file facts, over every (process, path) entry that ``wanted`` keeps."""
    merged: dict[str, dict] = {}
    for entry in _list(doc, "files"):
        path = entry.get("path")
        access = set(entry.get("access") or [])
        if not path or not wanted(access, entry):
            continue
        _merge_facts(merged.setdefault(path, {}), entry)
    return merged


def _merge_facts(facts: dict, entry: dict) -> None:
    for field in ("sha256", *_CONTENT_FIELDS, "schema"):
        if entry.get(field) is not None:
            facts[field] = entry[field]


def _renames(doc: dict) -> list[dict]:
    return sorted((r for r in _list(doc, "renames") if r.get("from") and r.get("to")),
                  key=lambda r: r.get("time") or "")


def _final_name(path: str, renames: list[dict], after: str | None) -> tuple[str, dict | None]:
    """Where path's content went by the run's end (renames in time order, from a
    time on), and the last rename that moved it (None: not moved)."""
    t, last = after or "", None
    for r in renames:
        if r["from"] == path and (r.get("time") or "") >= t:
            path, t, last = r["to"], r.get("time") or t, r
    return path, last


def _inputs(doc: dict) -> dict[str, dict]:
    """Data files read, less the run's own intermediates: a file it created or
    renamed into place, or wrote before this read."""
    made: dict[str, str] = {}  # path -> earliest time the run made or wrote it ("": from the start)
    for entry in _list(doc, "files"):
        access = set(entry.get("access") or [])
        # a process that reads and rewrites a file in place (no create) still read an input
        writer = access & _WRITE_ACCESS and "read" not in access and entry.get("first")
        if entry.get("path") and ("create" in access or writer):
            when = "" if "create" in access else entry["first"]
            made[entry["path"]] = min(made.get(entry["path"], when), when)
    for r in _renames(doc):
        made[r["to"]] = min(made.get(r["to"], r.get("time") or ""), r.get("time") or "")

    def wanted(access: set[str], entry: dict) -> bool:
        if not _is_input(access, entry):
            return False
        when = made.get(entry["path"])
        return when is None or (bool(when) and bool(entry.get("first")) and entry["first"] < when)
    return _files(doc, wanted)


def _outputs(doc: dict) -> dict[str, dict]:
    """Files written, keyed by the name their content ended up under."""
    renames = _renames(doc)
    deleted = {e["path"] for e in _list(doc, "files") if "delete" in (e.get("access") or [])}
    merged: dict[str, dict] = {}
    for entry in _list(doc, "files"):
        path, access = entry.get("path"), set(entry.get("access") or [])
        if not path or not _is_output(access, entry):
            continue
        final, moved_by = _final_name(path, renames, entry.get("first"))
        if moved_by is None and path in deleted and entry.get("kind") == "temp":
            continue  # a temporary the run removed again
        facts = merged.setdefault(final, {})
        _merge_facts(facts, moved_by if moved_by is not None else entry)
    return merged


def _env(doc: dict) -> dict[str, str]:
    env = _get(doc, "context", "env")
    return {str(k): v for k, v in env.items()} if isinstance(env, dict) else {}


def _cells(doc: dict) -> dict[str, str | None]:
    out = {}
    for i, cell in enumerate(_list(doc, "cells")):
        key = f"cell {cell['index'] if isinstance(cell.get('index'), int) else i}"
        out[key] = cell.get("code_sha256")
    return out


def _argv(doc: dict) -> dict[str, str]:
    argv = _get(doc, "run", "argv")
    return {"argv": " ".join(str(a) for a in argv)} if isinstance(argv, list) else {}


def _is_input(access: set[str], entry: dict) -> bool:
    return "read" in access and entry.get("kind") in (None, "data")


def _is_output(access: set[str], entry: dict) -> bool:
    return bool(access & _WRITE_ACCESS) and entry.get("kind") in (None, "data", "temp")


def _content_change(a: dict, b: dict) -> tuple[str, str | None]:
    """('changed' | 'same' | 'unknown', basis)."""
    if a.get("sha256") is not None and b.get("sha256") is not None:
        return ("same" if a["sha256"] == b["sha256"] else "changed"), "sha256"
    fields = [f for f in _CONTENT_FIELDS if f in a and f in b]
    if not fields:
        return "unknown", None
    same = all(a[f] == b[f] for f in fields)
    return ("same" if same else "changed"), "/".join(fields)


def _file_section(a: dict[str, dict], b: dict[str, dict]) -> dict:
    section: dict = {"changed": [], "unknown": [], "unchanged": 0,
                     "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a))}
    for path in sorted(set(a) & set(b)):
        status, basis = _content_change(a[path], b[path])
        if status == "changed":
            fa, fb = dict(a[path]), dict(b[path])
            item = {"path": path, "basis": basis, "a": fa, "b": fb}
            d = drift(fa.pop("schema", None), fb.pop("schema", None))
            if d is not None:
                item["drift"] = d
            section["changed"].append(item)
        elif status == "unknown":
            section["unknown"].append(path)
        else:
            section["unchanged"] += 1
    return section


def _keyed_section(a: dict, b: dict, same: Callable[[object, object], bool] | None = None) -> dict:
    same = same or (lambda x, y: x == y)
    changed = [{"key": k, "a": a[k], "b": b[k]} for k in sorted(set(a) & set(b), key=str)
               if not same(a[k], b[k])]
    return {"changed": changed,
            "only_a": [{"key": k, "a": a[k]} for k in sorted(set(a) - set(b), key=str)],
            "only_b": [{"key": k, "b": b[k]} for k in sorted(set(b) - set(a), key=str)]}


def _libraries(doc: dict) -> dict[str, dict]:
    out = {}
    for lib in _list(doc, "context", "libraries"):
        key = lib.get("soname") or lib.get("path")
        if key:
            out[key] = {"build_id": lib.get("build_id"), "path": lib.get("path"),
                        "package": lib.get("package")}
    return out


def _packages(doc: dict) -> dict[str, str]:
    versions: dict[str, set] = {}
    for pkg in _list(doc, "context", "packages"):
        if pkg.get("name"):
            key = f"{pkg.get('ecosystem') or '?'}:{pkg['name']}"
            versions.setdefault(key, set()).add(str(pkg.get("version")))
    return {k: ", ".join(sorted(v)) for k, v in versions.items()}


def _interpreters(doc: dict) -> dict[str, str]:
    versions: dict[str, set] = {}
    for item in _list(doc, "context", "interpreters"):
        if item.get("name"):
            label = " ".join(str(x) for x in (item.get("implementation"), item.get("version")) if x)
            versions.setdefault(item["name"], set()).add(label or "?")
    return {k: ", ".join(sorted(v)) for k, v in versions.items()}


def _gpus(doc: dict) -> dict[str, dict]:
    out = {}
    for gpu in _list(doc, "context", "gpus"):
        key = gpu.get("uuid") or f"gpu{gpu.get('index', len(out))}"
        out[key] = {f: gpu.get(f) for f in ("name", "driver_version", "cuda_version",
                                             "memory_total_bytes")}
    return out


def _host(doc: dict) -> dict[str, object]:
    ctx = _get(doc, "context") or {}
    cpu = ctx.get("cpu") if isinstance(ctx.get("cpu"), dict) else {"model": ctx.get("cpu")}
    return {
        "hostname": ctx.get("host") or _get(doc, "run", "host"),
        "kernel": ctx.get("kernel"),
        "os": _get(ctx, "os_release", "PRETTY_NAME"),
        "arch": ctx.get("arch"),
        "cpu_model": cpu.get("model"),
        "cpu_count": cpu.get("count"),
        "memory_bytes": ctx.get("memory_bytes"),
    }


def diff_runs(a: dict, b: dict) -> dict:
    """Structured differences between run documents ``a`` and ``b``."""
    host_a, host_b = _host(a), _host(b)
    diff = {
        "a": {"id": _get(a, "run", "id"), "started": _get(a, "run", "started")},
        "b": {"id": _get(b, "run", "id"), "started": _get(b, "run", "started")},
        "inputs": _file_section(_inputs(a), _inputs(b)),
        "outputs": _file_section(_outputs(a), _outputs(b)),
        "libraries": _keyed_section(_libraries(a), _libraries(b),
                                    lambda x, y: x["build_id"] == y["build_id"]),
        "packages": _keyed_section(_packages(a), _packages(b)),
        "interpreters": _keyed_section(_interpreters(a), _interpreters(b)),
        "gpus": _keyed_section(_gpus(a), _gpus(b)),
        "host": {"changed": [{"key": k, "a": host_a[k], "b": host_b[k]} for k in host_a
                             if host_a[k] != host_b[k]], "only_a": [], "only_b": []},
        "env": _keyed_section(_env(a), _env(b)),
        "argv": _keyed_section(_argv(a), _argv(b)),
        "cells": _keyed_section(_cells(a), _cells(b)),
    }
    diff["identical"] = not any(
        diff[s]["changed"] or diff[s]["only_a"] or diff[s]["only_b"]
        for s in ("inputs", "outputs", "libraries", "packages", "interpreters", "gpus", "host",
                  "env", "argv", "cells"))
    return diff


# ---- text rendering -------------------------------------------------------

def _short(value) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, dict):
        return " ".join(f"{k}={_short(v)}" for k, v in value.items() if v is not None) or _MISSING
    text = str(value)
    return text[:19] + "…" if len(text) > 20 and all(c in "0123456789abcdef" for c in text) else text


def _rows(section: dict, describe: Callable[[object], str] = _short) -> list[tuple[str, str, str]]:
    rows = []
    for item in section.get("changed", []):
        label = item.get("key", item.get("path"))
        a, b = item.get("a"), item.get("b")
        if isinstance(a, dict) and isinstance(b, dict) and describe is _short:
            differing = [k for k in {**a, **b} if a.get(k) != b.get(k)] or list(a)
            a, b = {k: a.get(k) for k in differing}, {k: b.get(k) for k in differing}
        rows.append((str(label), describe(a), describe(b)))
    for item in section.get("only_a", []):
        label, value = (item, "present") if isinstance(item, str) else (item["key"], describe(item["a"]))
        rows.append((str(label), value, _MISSING))
    for item in section.get("only_b", []):
        label, value = (item, "present") if isinstance(item, str) else (item["key"], describe(item["b"]))
        rows.append((str(label), _MISSING, value))
    return rows


def _drift_lines(section: dict) -> list[str]:
    """One line per changed file whose columns changed: its drift in words."""
    return [f"  {item['path']}: {summary(item['drift'])}" for item in section.get("changed", [])
            if drift_changed(item.get("drift"))]


def _library_value(value) -> str:
    return _short((value or {}).get("build_id")) if isinstance(value, dict) else _short(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(title: str, rows: Iterable[tuple[str, str, str]]) -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    w_item = max(len(r[0]) for r in rows)
    w_a = min(max(max(len(r[1]) for r in rows), 1), 48)
    lines = [f"{title}", f"  {'':<{w_item}}  {'A':<{w_a}} | B"]
    lines += [f"  {item:<{w_item}}  {_clip(a, w_a):<{w_a}} | {b}" for item, a, b in rows]
    return lines + [""]


def render_diff(d: dict) -> str:
    """Readable text: one two-column table (A | B) per section that changed."""
    a_id, b_id = _get(d, "a", "id") or "A", _get(d, "b", "id") or "B"
    out = [f"A: {a_id}", f"B: {b_id}", ""]
    sections = [
        ("Inputs", _get(d, "inputs") or {}, _short),
        ("Outputs", _get(d, "outputs") or {}, _short),
        ("Libraries (build-id)", _get(d, "libraries") or {}, _library_value),
        ("Packages", _get(d, "packages") or {}, _short),
        ("Interpreters", _get(d, "interpreters") or {}, _short),
        ("GPUs", _get(d, "gpus") or {}, _short),
        ("Host", _get(d, "host") or {}, _short),
        ("Environment variables", _get(d, "env") or {}, _short),
        ("Command line", _get(d, "argv") or {}, _short),
        ("Notebook cells (code sha256)", _get(d, "cells") or {}, _short),
    ]
    for title, section, describe in sections:
        out += _table(title, _rows(section, describe))
        drifted = _drift_lines(section)
        if drifted:
            out += [f"{title}: schema drift"] + drifted + [""]
        unknown = section.get("unknown") or []
        if unknown:
            out.append(f"{title} in both runs, not comparable (no sha256, size or mtime "
                       f"recorded): {len(unknown)}")
            out += [f"  {p}" for p in unknown[:_UNKNOWN_SHOWN]]
            if len(unknown) > _UNKNOWN_SHOWN:
                out.append(f"  ... and {len(unknown) - _UNKNOWN_SHOWN} more (see --json)")
            out.append("")
    if d.get("identical"):
        uncomparable = any((_get(d, s, "unknown") or []) for s in ("inputs", "outputs"))
        out.append("No differences among what could be compared." if uncomparable
                   else "No differences.")
    return "\n".join(out).rstrip() + "\n"
