"""renv.lock from the CRAN packages a run loaded, with R's version.

renv's lockfile is JSON: ``R`` holds ``Version`` and ``Repositories``
(``[{"Name", "URL"}]``), and ``Packages`` maps each name to
``{Package, Version, Source, Repository}`` (plus ``Requirements``, the
package's own dependencies, which renv >= 1.0 writes). ``Hash`` is left out:
renv's hash is an md5 over a chosen set of DESCRIPTION fields that only renv
computes; a different digest there would make renv report every package as
modified.

The loaded set is closed under each installed DESCRIPTION's ``Depends``,
``Imports`` and ``LinkingTo``, resolved in the package's own library first,
then the run's other libraries. R's base packages (``Priority: base``) ship
with R itself and are never listed, as renv does.
"""

from __future__ import annotations

import json
import os
import re

from ..context.cran import parse_description

CRAN = {"Name": "CRAN", "URL": "https://cloud.r-project.org"}
BASE_PACKAGES = frozenset({"R", "base", "compiler", "datasets", "graphics", "grDevices", "grid",
                           "methods", "parallel", "splines", "stats", "stats4", "tcltk", "tools",
                           "utils"})
_DEP_NAME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9.]*)")


def r_version(context: dict) -> str | None:
    for i in context.get("interpreters") or []:
        if str(i.get("name", "")).lower() in ("r", "rscript") and i.get("version"):
            return str(i["version"])
    return None


def _description(pkg_dir: str) -> dict[str, str] | None:
    try:
        with open(os.path.join(pkg_dir, "DESCRIPTION"), encoding="utf-8", errors="replace") as f:
            return parse_description(f.read())
    except OSError:
        return None


def _dependencies(desc: dict[str, str]) -> list[str]:
    names = []
    for field in ("Depends", "Imports", "LinkingTo"):
        for part in (desc.get(field) or "").split(","):
            m = _DEP_NAME.match(part)
            if m and m.group(1) not in BASE_PACKAGES:
                names.append(m.group(1))
    return list(dict.fromkeys(names))


def _entry(name: str, version: str, requirements: list[str]) -> dict:
    entry = {"Package": name, "Version": version, "Source": "Repository", "Repository": "CRAN"}
    if requirements:
        entry["Requirements"] = sorted(requirements)
    return entry


def lock_packages(context: dict) -> tuple[dict[str, dict], list[str]]:
    """name -> renv entry for the used CRAN packages and their dependencies; notes on what is missing."""
    queue: list[tuple[str, str | None, str | None]] = []  # (name, version, package dir)
    for p in context.get("packages") or []:
        if p.get("ecosystem") == "cran" and p.get("name") not in BASE_PACKAGES:
            queue.append((p["name"], p.get("version"), p.get("location")))
    libraries = list(dict.fromkeys(os.path.dirname(loc) for _, _, loc in queue if loc))
    out: dict[str, dict] = {}
    notes: list[str] = []
    while queue:
        name, version, pkg_dir = queue.pop(0)
        if name in out:
            continue
        desc = _description(pkg_dir) if pkg_dir else None
        version = version or (desc or {}).get("Version")
        if not version:
            notes.append(f"{name}: no version recorded and no DESCRIPTION to read")
            continue
        deps = _dependencies(desc) if desc else []
        if desc is None:
            notes.append(f"dependencies of {name} {version}: its DESCRIPTION is gone")
        out[name] = _entry(name, version, deps)
        for dep in deps:
            found = _find(dep, os.path.dirname(pkg_dir), libraries)
            if found is None:
                notes.append(f"{dep} (needed by {name}): not installed in the run's libraries")
            else:
                queue.append((dep, None, found))
    return dict(sorted(out.items())), notes


def _find(name: str, library: str, libraries: list[str]) -> str | None:
    for lib in [library, *[x for x in libraries if x != library]]:
        if os.path.isfile(os.path.join(lib, name, "DESCRIPTION")):
            return os.path.join(lib, name)
    return None


def render_renv_lock(context: dict, source: str) -> tuple[str, list[str], dict]:
    """The lockfile text, warnings, and the document itself (the Dockerfile reuses it)."""
    packages, notes = lock_packages(context)
    warnings = []
    version = r_version(context)
    if version is None:
        warnings.append("no R interpreter recorded for this run; renv.lock has no R version")
    if not packages:
        warnings.append("the run loaded no CRAN packages; renv.lock lists none")
    warnings += [f"renv.lock: {n}" for n in notes]
    doc = {"R": {"Version": version, "Repositories": [CRAN]}, "Packages": packages}
    return json.dumps(doc, indent=2) + "\n", warnings, doc
