"""`provtrace env`: environment manifests from what a run (or one cell) really used.

Each format is built from the ``context`` object of provtrace.run/1 (a cell's
own context for ``RUN:CELL``), in its ecosystem's own format:

- ``requirements.txt`` -- requirements.py (pinned, --hash lines from PyPI);
- ``renv.lock``        -- renv_lock.py;
- ``julia``            -- julia_env.py (Project.toml + Manifest.toml);
- ``apt``              -- ``package=version`` lines, one a line, as
                          ``apt-get install`` takes them (no comments: the
                          list is meant for ``$(cat list)``);
- ``dockerfile``       -- a Dockerfile from a named base image that installs
                          the apt list, then a venv with the pinned
                          requirements, then the CRAN packages Debian did not
                          provide; it COPYs requirements.txt and renv.lock,
                          which ``-o`` writes beside it (the build context).

A format for which the run used nothing still gives a valid, empty manifest
(exit 0) and a warning that says so: an empty environment is an answer, not
an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import TracerError, UsageError
from .julia_env import render_julia
from .renv_lock import render_renv_lock
from .requirements import render_requirements

FORMATS = ("requirements.txt", "renv.lock", "julia", "apt", "dockerfile")
_R_LIBS_FROM_DEBIAN = ("/usr/lib/R/",)


class ManifestWriteError(TracerError):
    """-o could not be written."""


@dataclass
class Manifest:
    """What `provtrace env` writes: one file, or several (julia, dockerfile)."""

    files: dict[str, str]  # file name -> text; the first is the main one
    warnings: list[str] = field(default_factory=list)


# -- which context -------------------------------------------------------------

def split_ref(ref: str) -> tuple[str, str | None]:
    """``RUN`` or ``RUN:CELL`` (run ids never hold a colon)."""
    run, sep, cell = ref.partition(":")
    if sep and not cell:
        raise UsageError(f"{ref!r}: give a cell after the colon (RUN:CELL, a cell id or its index)")
    return run, (cell if sep else None)


def cell_context(doc: dict, cell: str) -> dict:
    """A cell's own packages, libraries and interpreters; host facts from its run."""
    cells = doc.get("cells") or []
    match = [c for c in cells if c.get("id") == cell]
    if not match and cell.isdigit():
        match = [c for c in cells if str(c.get("index")) == cell]
    if not match:
        match = [c for c in cells if str(c.get("id") or "").startswith(cell)]
    if len(match) != 1:
        what = "no cell" if not match else f"{len(match)} cells match"
        raise UsageError(f"{what} {cell!r} in run {doc['run']['id']} "
                         f"({len(cells)} cells; `provtrace show {doc['run']['id']}` lists them)")
    own = match[0].get("context") or {}
    run_ctx = doc.get("context") or {}
    return {**{k: v for k, v in run_ctx.items() if k not in ("packages", "libraries", "interpreters")},
            "packages": own.get("packages", []), "libraries": own.get("libraries", []),
            "interpreters": own.get("interpreters") or run_ctx.get("interpreters", [])}


# -- apt -----------------------------------------------------------------------

def apt_pins(context: dict) -> tuple[list[str], list[str]]:
    """``pkg:arch=version`` for every deb package the run used (libraries it mapped,
    files it read), and warnings for any whose version is unknown."""
    pins: dict[str, str] = {}
    warnings = []
    for p in context.get("packages") or []:
        if p.get("ecosystem") != "deb":
            continue
        name = p.get("qualified_name") or p.get("name")
        if not name:
            continue
        if p.get("version"):
            pins[name] = f"{name}={p['version']}"
        else:
            pins.setdefault(name, name)
            warnings.append(f"apt: no version recorded for {name}; listed unpinned")
    return sorted(pins.values()), warnings


def render_apt(context: dict) -> Manifest:
    pins, warnings = apt_pins(context)
    if not pins:
        warnings.append("the run used no Debian packages; the apt list is empty")
    return Manifest({"apt.txt": "".join(p + "\n" for p in pins)}, warnings)


# -- Dockerfile ----------------------------------------------------------------

def default_base(context: dict) -> str:
    rel = context.get("os_release") or {}
    if rel.get("ID") and rel.get("VERSION_ID"):
        return f"{rel['ID']}:{rel['VERSION_ID']}"
    raise UsageError("the run's os_release names no distribution and version; give --base IMAGE")


def _continued(words: list[str], indent: str = "      ") -> str:
    return "".join(f" \\\n{indent}{w}" for w in words)


def _pinned_names(pins: list[str]) -> set[str]:
    return {p.split("=", 1)[0].split(":", 1)[0] for p in pins}


def render_dockerfile(context: dict, source: str, *, base: str | None, hashes: bool) -> Manifest:
    base = base or default_base(context)
    files: dict[str, str] = {}
    warnings: list[str] = []
    apt, w = apt_pins(context)
    warnings += w
    req_text, w = render_requirements(context, source, hashes=hashes)
    warnings += [x for x in w if "lists none" not in x]
    has_pypi = any(line and not line.startswith(("#", " ")) for line in req_text.splitlines())
    lock_text, w, lock = render_renv_lock(context, source)
    from_cran = {n: e for n, e in lock["Packages"].items() if not _debian_r_package(context, n)}
    if from_cran:
        warnings += [x for x in w if "lists none" not in x]
    extra = []
    if has_pypi and "python3-venv" not in _pinned_names(apt):
        extra.append("python3-venv")
    if from_cran and "r-base-core" not in _pinned_names(apt):
        extra.append("r-base-core")
    lines = [f"# provtrace env {source} --format dockerfile",
             f"# Rebuilds the environment that {source} used, on {base}. Debian's archive keeps only",
             "# current versions: an older pin needs a snapshot.debian.org source.",
             f"FROM {base}"]
    if apt or extra:
        lines.append("RUN apt-get update \\\n && apt-get install -y --no-install-recommends"
                     + _continued(apt + extra) + " \\\n && rm -rf /var/lib/apt/lists/*")
    if has_pypi:
        files["requirements.txt"] = req_text
        flag = " --require-hashes" if "--hash=" in req_text else ""
        lines += ["COPY requirements.txt /opt/provtrace/requirements.txt",
                  "RUN python3 -m venv /opt/venv \\\n && /opt/venv/bin/pip install --no-cache-dir"
                  f"{flag} -r /opt/provtrace/requirements.txt",
                  "ENV PATH=/opt/venv/bin:$PATH"]
    if from_cran:
        files["renv.lock"] = _renv_subset(lock, from_cran)
        lines += ["COPY renv.lock /opt/provtrace/renv.lock",
                  "RUN Rscript -e 'install.packages(\"renv\", repos = \"https://cloud.r-project.org\")' \\\n"
                  " && Rscript -e 'renv::restore(lockfile = \"/opt/provtrace/renv.lock\", prompt = FALSE)'"]
    if any(p.get("ecosystem") == "julia" for p in context.get("packages") or []):
        lines.append("# Julia packages were used: Debian ships no Julia; see provtrace env --format julia")
        warnings.append("Dockerfile: Julia packages are not installed (no Julia in the base image)")
    return Manifest({"Dockerfile": "\n".join(lines) + "\n", **files}, warnings)


def _debian_r_package(context: dict, name: str) -> bool:
    """An R package under /usr/lib/R comes from an r-cran-* deb, so the apt list has it."""
    for p in context.get("packages") or []:
        if p.get("ecosystem") == "cran" and p.get("name") == name:
            return str(p.get("location") or "").startswith(_R_LIBS_FROM_DEBIAN)
    return False  # a dependency found by the closure: renv installs it


def _renv_subset(lock: dict, packages: dict) -> str:
    import json  # noqa: PLC0415

    return json.dumps({"R": lock["R"], "Packages": packages}, indent=2) + "\n"


# -- dispatch ------------------------------------------------------------------

def build(context: dict, fmt: str, source: str, *, hashes: bool = True, base: str | None = None) -> Manifest:
    if fmt == "requirements.txt":
        text, warnings = render_requirements(context, source, hashes=hashes)
        return Manifest({"requirements.txt": text}, warnings)
    if fmt == "renv.lock":
        text, warnings, _doc = render_renv_lock(context, source)
        return Manifest({"renv.lock": text}, warnings)
    if fmt == "julia":
        files, warnings = render_julia(context, source)
        return Manifest(files, warnings)
    if fmt == "apt":
        return render_apt(context)
    if fmt == "dockerfile":
        return render_dockerfile(context, source, base=base, hashes=hashes)
    raise UsageError(f"unknown manifest format {fmt!r}; one of {', '.join(FORMATS)}")


def write(manifest: Manifest, output: str | None) -> list[str]:
    """Stdout (several files each under a ``# ==> NAME <==`` line), or -o: the main
    file at OUTPUT and the others beside it; for julia OUTPUT is a directory.
    Every file is written atomically. Returns the paths written."""
    from ..atomic import atomic_write  # noqa: PLC0415

    names = list(manifest.files)
    if output is None or output == "-":
        import sys  # noqa: PLC0415

        for name in names:
            if len(names) > 1:
                sys.stdout.write(f"# ==> {name} <==\n")
            sys.stdout.write(manifest.files[name])
        return []
    try:
        if "Project.toml" in manifest.files:  # julia: a directory holds the pair
            os.makedirs(output, exist_ok=True)
            targets = {name: os.path.join(output, name) for name in names}
        else:
            if os.path.isdir(output):
                raise ManifestWriteError(f"cannot write {names[0]} to {output}: it is a directory; "
                                         "give a file name")
            folder = os.path.dirname(os.path.abspath(output))
            targets = {names[0]: output, **{n: os.path.join(folder, n) for n in names[1:]}}
        for name, path in targets.items():
            atomic_write(path, manifest.files[name].encode("utf-8"))
    except OSError as e:
        raise ManifestWriteError(f"cannot write {output}: {e.strerror or e}; "
                                 "check the folder exists and is writable") from e
    return list(targets.values())
