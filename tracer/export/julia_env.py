"""Project.toml + Manifest.toml from the Julia packages a run loaded.

No Julia was run here (none is installable on this machine): the files are
written to Pkg's documented formats and checked by parsing them as TOML
against that structure, never by `Pkg.instantiate`.

- ``Project.toml``: ``[deps]`` maps each loaded package's name to its UUID.
- ``Manifest.toml``, format 2.0 (Julia >= 1.7): ``julia_version``,
  ``manifest_format = "2.0"``, then one ``[[deps.NAME]]`` table per package
  with ``uuid``, ``version``, ``git-tree-sha1`` and ``deps`` (the names of its
  own dependencies). Standard libraries carry only ``uuid`` (and ``deps``).

The loaded set is closed under ``deps`` from the manifest the run itself
resolved against (recorded per package by the context), when it is still on
disk: a package never loaded in the run but required by one that was is
still part of the environment.
"""

from __future__ import annotations

import logging
import os
import tomllib

log = logging.getLogger(__name__)

_NOTE = ("# Written by provtrace from the run's recorded Julia packages; no Julia was run "
         "to write or check it.")


def julia_version(context: dict) -> str | None:
    for i in context.get("interpreters") or []:
        if str(i.get("name", "")).lower() == "julia" and i.get("version"):
            return str(i["version"])
    return None


def _manifest_entries(path: str | None, cache: dict) -> dict[str, dict]:
    """NAME -> entry of a manifest (format 2.0 or older), {} if unreadable."""
    if not path:
        return {}
    if path not in cache:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            log.debug("manifest unreadable path=%s error=%s", path, e)
            doc = {}
        deps = doc.get("deps") if doc.get("manifest_format") else doc
        cache[path] = {name: (entries[0] if isinstance(entries, list) and entries else {})
                       for name, entries in (deps or {}).items() if isinstance(entries, list)}
    return cache[path]


def _dep_names(entry: dict) -> list[str]:
    deps = entry.get("deps") or []
    return sorted(deps) if isinstance(deps, (list, dict)) else []


def manifest_entries(context: dict) -> tuple[dict[str, dict], dict[str, str], list[str]]:
    """(manifest entries by name, project deps name -> uuid, notes)."""
    cache: dict = {}
    entries: dict[str, dict] = {}
    project: dict[str, str] = {}
    notes: list[str] = []
    queue: list[tuple[str, dict, str | None]] = []
    for p in context.get("packages") or []:
        if p.get("ecosystem") != "julia":
            continue
        tree = (p.get("hash") or "").removeprefix("git-tree-sha1:") or None
        entry = {"uuid": p.get("uuid"), "version": p.get("version"), "git-tree-sha1": tree}
        if not p.get("uuid"):
            notes.append(f"{p.get('name')}: no UUID recorded (no manifest matched it); left out")
            continue
        project[p["name"]] = p["uuid"]
        queue.append((p["name"], entry, p.get("manifest")))
    while queue:
        name, entry, manifest = queue.pop(0)
        if name in entries:
            continue
        recorded = _manifest_entries(manifest, cache).get(name, {})
        if recorded and entry.get("uuid") in (None, recorded.get("uuid")):
            entry = {**recorded, **{k: v for k, v in entry.items() if v}}
        elif manifest is None:
            notes.append(f"dependencies of {name}: no manifest recorded for it")
        entries[name] = _clean(entry)
        for dep in _dep_names(entry):
            found = _manifest_entries(manifest, cache).get(dep)
            if found is None:
                notes.append(f"{dep} (needed by {name}): not in {manifest}")
            else:
                queue.append((dep, dict(found), manifest))
    return dict(sorted(entries.items())), dict(sorted(project.items())), notes


def _clean(entry: dict) -> dict:
    """Pkg's keys, in Pkg's order; nulls dropped (stdlibs have no version or tree)."""
    out = {}
    deps = _dep_names(entry)
    if deps:
        out["deps"] = deps
    for key in ("git-tree-sha1", "uuid", "version"):
        if entry.get(key):
            out[key] = str(entry[key])
    return out


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(name: str) -> str:
    bare = name and all(c.isalnum() or c in "_-" for c in name) and name.isascii()
    return name if bare else _toml_str(name)


def render_project(project: dict[str, str]) -> str:
    lines = [_NOTE, "", "[deps]"]
    lines += [f"{_toml_key(name)} = {_toml_str(uuid)}" for name, uuid in project.items()]
    return "\n".join(lines) + "\n"


def render_manifest(entries: dict[str, dict], version: str | None) -> str:
    lines = ["# This file is machine-generated - editing it directly is not advised", _NOTE, ""]
    if version:
        lines.append(f"julia_version = {_toml_str(version)}")
    lines.append('manifest_format = "2.0"')
    for name, entry in entries.items():
        lines += ["", f"[[deps.{_toml_key(name)}]]"]
        for key, value in entry.items():
            if isinstance(value, list):
                lines.append(f"{key} = [{', '.join(_toml_str(v) for v in value)}]")
            else:
                lines.append(f"{key} = {_toml_str(value)}")
    return "\n".join(lines) + "\n"


def render_julia(context: dict, source: str) -> tuple[dict[str, str], list[str]]:
    """{"Project.toml": text, "Manifest.toml": text} and warnings."""
    entries, project, notes = manifest_entries(context)
    warnings = ["no Julia was run here: Project.toml and Manifest.toml follow Pkg's documented "
                "format but were not checked by Pkg"]
    version = julia_version(context)
    if version is None:
        warnings.append("no Julia interpreter recorded for this run; Manifest.toml has no julia_version")
    if not project:
        warnings.append("the run loaded no Julia packages; the manifest lists none")
    warnings += [f"Manifest.toml: {n}" for n in notes]
    header = f"# provtrace env {source} --format julia\n"
    return {"Project.toml": header + render_project(project),
            "Manifest.toml": header + render_manifest(entries, version)}, warnings
