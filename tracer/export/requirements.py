"""requirements.txt from the PyPI distributions a run really used.

The context lists the distributions that own a file the run touched, each
with its installed ``*.dist-info`` directory (``location``). That set is
closed under dependencies: each dist's METADATA ``Requires-Dist`` lines are
evaluated (``packaging.markers``) for the run's own interpreter, and every
dependency is pinned at the version installed beside it, since a dependency
that was never imported (a plugin, a lazy import) still belongs to a
working install. What cannot be resolved is named in a comment, never
dropped silently.

An installed dist-info keeps no hash of the wheel it came from (RECORD hashes
the unpacked files), so ``--hash`` lines carry the release's file digests
from PyPI's JSON API. Without them (``--no-hashes``, or PyPI unreachable) the
pins are plain, and the header and a warning say so.

Skipped, with a comment: the project's own editable installs (no release to
pin) and Debian's ``dist-packages`` entries (they come from the apt list).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.parser import HeaderParser

from packaging.markers import InvalidMarker, default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

log = logging.getLogger(__name__)

PYPI_JSON = "https://pypi.org/pypi"
_TIMEOUT_S = 15


@dataclass(frozen=True)
class Dist:
    name: str
    version: str
    meta_dir: str


@dataclass
class PinSet:
    """The closed set of pins, and what was left out and why."""

    pins: dict[str, Dist] = field(default_factory=dict)  # canonical name -> dist
    skipped: list[str] = field(default_factory=list)  # "name version: why"
    unresolved: list[str] = field(default_factory=list)  # "requirement (needed by X): why"


# -- reading installed metadata -------------------------------------------------

def _headers(meta_dir: str):
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(meta_dir, name), encoding="utf-8", errors="replace") as f:
                return HeaderParser().parse(f, headersonly=True)
        except OSError:
            continue
    return None


def _editable(meta_dir: str) -> bool:
    """PEP 610: pip writes direct_url.json with dir_info.editable for `pip install -e`."""
    try:
        with open(os.path.join(meta_dir, "direct_url.json"), encoding="utf-8") as f:
            return bool(json.load(f).get("dir_info", {}).get("editable"))
    except (OSError, ValueError, AttributeError):
        return False


def _site_dists(site: str) -> dict[str, Dist]:
    """Installed dist-info directories of one site directory, by canonical name."""
    out: dict[str, Dist] = {}
    try:
        names = sorted(os.listdir(site))
    except OSError:
        return out
    for entry in names:
        if not entry.endswith(".dist-info"):
            continue
        meta_dir = os.path.join(site, entry)
        headers = _headers(meta_dir)
        if headers is None or not headers.get("Name") or not headers.get("Version"):
            continue
        out.setdefault(canonicalize_name(headers["Name"]), Dist(headers["Name"], headers["Version"], meta_dir))
    return out


# -- markers for the run's interpreter ------------------------------------------

def marker_environment(context: dict) -> dict[str, str]:
    """PEP 508 marker values for the run's Python, not the one running provtrace."""
    env = dict(default_environment())
    py = next((i for i in context.get("interpreters") or []
               if i.get("name") == "python" and i.get("version")), None)
    if py:
        full = str(py["version"])
        env["python_full_version"] = full
        env["python_version"] = ".".join(full.split(".")[:2])
        impl = str(py.get("implementation") or "CPython")
        env["platform_python_implementation"] = impl
        env["implementation_name"] = impl.lower()
        env["implementation_version"] = full
    if context.get("arch"):
        env["platform_machine"] = context["arch"]
    if context.get("kernel_version"):
        env["platform_release"] = context["kernel_version"]
    env.update({"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"})
    return env


# -- the closure ---------------------------------------------------------------

def _requires(meta_dir: str) -> list[str]:
    headers = _headers(meta_dir)
    return list(headers.get_all("Requires-Dist") or []) if headers is not None else []


def _wanted(line: str, extras: frozenset[str], env: dict[str, str]) -> Requirement | None:
    req = Requirement(line)
    if req.marker is None:
        return req
    for extra in extras or {""}:
        if req.marker.evaluate({**env, "extra": extra}):
            return req
    return None


def _initial(context: dict, pins: PinSet) -> list[tuple[Dist, frozenset[str]]]:
    """The used distributions that belong in the file; the rest become comments."""
    queue = []
    for p in context.get("packages") or []:
        if p.get("ecosystem") != "pypi":
            continue
        name, version, loc = p.get("name"), p.get("version"), p.get("location") or ""
        if "/dist-packages/" in loc + "/":
            pins.skipped.append(f"{name} {version}: Debian's dist-packages (see --format apt)")
        elif not version:
            pins.unresolved.append(f"{name}: no version recorded")
        elif loc.endswith(".dist-info") and _editable(loc):
            pins.skipped.append(f"{name} {version}: an editable install of local source ({loc})")
        elif loc.endswith(".egg-info"):
            pins.skipped.append(f"{name} {version}: an egg-info install, not from a wheel ({loc})")
        else:
            queue.append((Dist(name, version, loc), frozenset()))
    return queue


def close_over_dependencies(context: dict) -> PinSet:
    """The used distributions and, transitively, what their metadata requires."""
    env = marker_environment(context)
    pins = PinSet()
    queue = _initial(context, pins)
    sites = list(dict.fromkeys(os.path.dirname(d.meta_dir) for d, _ in queue))
    indexes = {site: _site_dists(site) for site in sites}
    seen_extras: dict[str, frozenset[str]] = {}
    while queue:
        dist, extras = queue.pop(0)
        key = canonicalize_name(dist.name)
        known = seen_extras.get(key)
        if known is not None and extras <= known:
            continue
        seen_extras[key] = (known or frozenset()) | extras
        pins.pins.setdefault(key, dist)
        if not os.path.isdir(dist.meta_dir):
            pins.unresolved.append(f"dependencies of {dist.name} {dist.version}: "
                                   f"{dist.meta_dir} is gone")
            continue
        for line in _requires(dist.meta_dir):
            try:
                req = _wanted(line, extras, env)
            except (InvalidRequirement, InvalidMarker) as e:
                pins.unresolved.append(f"{line!r} (needed by {dist.name}): unparsable: {e}")
                continue
            if req is None:
                continue
            found = _find(req, os.path.dirname(dist.meta_dir), sites, indexes)
            if found is None:
                pins.unresolved.append(f"{req} (needed by {dist.name}): not installed beside it")
                continue
            if found.version not in req.specifier:
                pins.unresolved.append(f"{req} (needed by {dist.name}): installed {found.name} "
                                       f"{found.version} does not satisfy it")
            queue.append((found, frozenset(req.extras)))
    return pins


def _find(req: Requirement, site: str, sites: list[str], indexes: dict[str, dict[str, Dist]]) -> Dist | None:
    """The installed dist for req: its own site directory first, then the run's others."""
    key = canonicalize_name(req.name)
    for where in [site, *[s for s in sites if s != site]]:
        if where not in indexes:
            indexes[where] = _site_dists(where)
        hit = indexes[where].get(key)
        if hit is not None:
            return hit if "/dist-packages/" not in hit.meta_dir + "/" else None
    return None


# -- hashes from PyPI ----------------------------------------------------------

class PyPIUnreachable(Exception):
    """The index did not answer at all (as opposed to not knowing a release)."""


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise PyPIUnreachable(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PyPIUnreachable(f"{url}: {getattr(e, 'reason', e)}") from None


def release_digests(name: str, version: str, index: str = PYPI_JSON) -> list[str] | None:
    """sha256 of every file of the release (wheels and sdist); None if PyPI has no such release.
    The per-version endpoint first; the project endpoint's ``releases`` as a fallback."""
    doc = _get_json(f"{index}/{name}/{version}/json")
    files = doc.get("urls") if doc else None
    if not files:
        project = _get_json(f"{index}/{name}/json")
        files = (project or {}).get("releases", {}).get(version) or None
    if not files:
        return None
    return sorted({f["digests"]["sha256"] for f in files if f.get("digests", {}).get("sha256")})


def fetch_hashes(dists: list[Dist], index: str = PYPI_JSON) -> dict[str, list[str] | None]:
    """canonical name -> digests (None: not on PyPI). Raises PyPIUnreachable if the index is down."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda d: release_digests(d.name, d.version, index), dists)
        return {canonicalize_name(d.name): r for d, r in zip(dists, results)}


# -- rendering -----------------------------------------------------------------

def render_requirements(context: dict, source: str, *, hashes: bool = True,
                        index: str = PYPI_JSON) -> tuple[str, list[str]]:
    """The file's text and the warnings to print (each one line)."""
    pins = close_over_dependencies(context)
    warnings: list[str] = []
    dists = sorted(pins.pins.values(), key=lambda d: canonicalize_name(d.name))
    digests: dict[str, list[str] | None] = {}
    mode = "with hashes from PyPI (pip install --require-hashes -r requirements.txt)"
    if not hashes:
        mode = "without hashes (--no-hashes)"
        warnings.append("requirements.txt has plain pins, no hashes (--no-hashes)")
    elif dists:
        try:
            digests = fetch_hashes(dists, index)
        except PyPIUnreachable as e:
            hashes = False
            mode = f"WITHOUT hashes: PyPI could not be reached ({e})"
            warnings.append(f"PyPI could not be reached ({e}); requirements.txt has plain pins, no hashes")
    lines = [f"# provtrace env {source} --format requirements.txt",
             f"# The PyPI distributions this run used, closed under their dependencies; {mode}."]
    body = []
    for d in dists:
        pin = f"{canonicalize_name(d.name)}=={d.version}"
        if hashes:
            found = digests.get(canonicalize_name(d.name))
            if not found:
                pins.skipped.append(f"{d.name} {d.version}: no such release on PyPI, so no hash")
                warnings.append(f"{d.name} {d.version} is not on PyPI; left out of requirements.txt")
                continue
            body.append(pin + "".join(f" \\\n    --hash=sha256:{h}" for h in found))
        else:
            body.append(pin)
    if not dists:
        lines.append("# No PyPI distributions were used by this run.")
        warnings.append("the run used no PyPI distributions; requirements.txt lists none")
    lines += [f"# skipped: {s}" for s in pins.skipped]
    lines += [f"# unresolved: {u}" for u in pins.unresolved]
    if pins.unresolved:
        warnings.append(f"{len(pins.unresolved)} requirement(s) could not be resolved; "
                        "see the '# unresolved' comments")
    return "\n".join(lines + body) + "\n", warnings
