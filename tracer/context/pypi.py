"""Python distributions that own touched files, from installed metadata.

A touched file under a ``site-packages`` or ``dist-packages`` directory is
looked up in that directory's index, built lazily on first use and cached:

- ``*.dist-info/RECORD`` lists every installed file (relative to the site
  directory) with the wheel's ``sha256=`` hash (urlsafe base64, unpadded);
- ``*.egg-info/installed-files.txt`` (relative to the egg-info directory) where
  present; otherwise ``top_level.txt`` names the top-level modules, which is
  all Debian's ``python3-*`` egg-info directories carry.

A byte-compiled ``__pycache__/mod.cpython-311.pyc`` that RECORD does not list
is attributed to its ``mod.py``. The package's ``hash`` is the sha256 of its
RECORD (it pins every file of the installed distribution); the recorded
hashes of the touched files themselves are listed under ``files``.
An index is dropped by ``refresh()`` once its site directory's mtime moves
(pip adds and removes dist-info directories on every install or upgrade).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from email.parser import HeaderParser

log = logging.getLogger(__name__)

SITE_DIR_NAMES = ("site-packages", "dist-packages")
_PYC = re.compile(r"^(?P<mod>[^.]+)\.[^.]+(\.opt-\d)?\.pyc$")


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str | None
    meta_dir: str
    record_sha256: str | None


@dataclass
class SiteIndex:
    """Everything one site directory's metadata says, keyed by absolute path."""

    files: dict[str, tuple[Distribution, str | None]] = field(default_factory=dict)
    top_level: dict[str, Distribution] = field(default_factory=dict)


def site_dir_of(path: str) -> str | None:
    """The nearest enclosing site-packages/dist-packages directory, if any."""
    for name in SITE_DIR_NAMES:
        marker = f"/{name}/"
        if marker in path:
            return path[: path.rindex(marker) + len(marker) - 1]
    return None


def _metadata(meta_dir: str) -> tuple[str | None, str | None]:
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(meta_dir, name), encoding="utf-8", errors="replace") as f:
                headers = HeaderParser().parse(f, headersonly=True)
        except OSError:
            continue
        return headers.get("Name"), headers.get("Version")
    return None, None


def _file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _distribution(meta_dir: str) -> Distribution:
    name, version = _metadata(meta_dir)
    if name is None:  # e.g. foo-1.0.dist-info with unreadable METADATA
        name = os.path.basename(meta_dir).split("-", 1)[0]
    record = os.path.join(meta_dir, "RECORD")
    record_hash = _file_sha256(record) if os.path.exists(record) else None
    return Distribution(name=name, version=version, meta_dir=meta_dir, record_sha256=record_hash)


def _read_lines(path: str) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return None


def _index_dist_info(site: str, meta_dir: str, index: SiteIndex) -> None:
    dist = _distribution(meta_dir)
    try:
        with open(os.path.join(meta_dir, "RECORD"), encoding="utf-8", errors="surrogateescape",
                  newline="") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                rel = row[0]
                recorded = row[1] if len(row) > 1 and row[1] else None
                index.files[os.path.normpath(os.path.join(site, rel))] = (dist, recorded)
    except (OSError, csv.Error) as e:
        log.debug("RECORD unreadable meta_dir=%s error=%s", meta_dir, e)
    _index_top_level(meta_dir, dist, index)


def _index_top_level(meta_dir: str, dist: Distribution, index: SiteIndex) -> None:
    for module in _read_lines(os.path.join(meta_dir, "top_level.txt")) or []:
        index.top_level.setdefault(module, dist)


def _index_egg_info(meta_dir: str, index: SiteIndex) -> None:
    if not os.path.isdir(meta_dir):  # a single-file PKG-INFO named *.egg-info
        return
    dist = _distribution(meta_dir)
    for rel in _read_lines(os.path.join(meta_dir, "installed-files.txt")) or []:
        index.files.setdefault(os.path.normpath(os.path.join(meta_dir, rel)), (dist, None))
    _index_top_level(meta_dir, dist, index)


def build_site_index(site: str) -> SiteIndex:
    index = SiteIndex()
    for meta_dir in sorted(glob.glob(os.path.join(glob.escape(site), "*.dist-info"))):
        _index_dist_info(site, meta_dir, index)
    for meta_dir in sorted(glob.glob(os.path.join(glob.escape(site), "*.egg-info"))):
        _index_egg_info(meta_dir, index)
    log.debug("python site indexed site=%s files=%d top_level=%d",
              site, len(index.files), len(index.top_level))
    return index


def _source_of_pyc(path: str) -> str | None:
    parent = os.path.dirname(path)
    if os.path.basename(parent) != "__pycache__":
        return None
    m = _PYC.match(os.path.basename(path))
    if not m:
        return None
    return os.path.join(os.path.dirname(parent), m.group("mod") + ".py")


def _dir_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class PythonPackages:
    """Touched file -> (Distribution, recorded hash), with per-site lazy indexes."""

    def __init__(self) -> None:
        self._sites: dict[str, tuple[tuple | None, SiteIndex]] = {}

    def refresh(self) -> None:
        """Drop indexes of site dirs that changed (pip install/upgrade/uninstall)."""
        for site, (stamp, _index) in list(self._sites.items()):
            if _dir_stamp(site) != stamp:
                log.debug("python site changed; reindexing site=%s", site)
                del self._sites[site]

    def _site(self, site: str) -> SiteIndex:
        cached = self._sites.get(site)
        if cached is None:
            cached = self._sites[site] = (_dir_stamp(site), build_site_index(site))
        return cached[1]

    def lookup(self, path: str) -> tuple[Distribution, str | None] | None:
        path = os.path.normpath(path)
        site = site_dir_of(path)
        if site is None:
            return None
        index = self._site(site)
        hit = index.files.get(path)
        if hit is None:
            source = _source_of_pyc(path)
            hit = index.files.get(source) if source else None
        if hit is None:
            top = os.path.relpath(path, site).split(os.sep, 1)[0]
            module = top.split(".", 1)[0]  # foo.py, foo.cpython-311-x86_64-linux-gnu.so
            dist = index.top_level.get(top) or index.top_level.get(module)
            hit = (dist, None) if dist is not None else None
        return hit

    def packages_for(self, paths) -> list[dict]:
        found: dict[str, dict] = {}
        for path in paths:
            hit = self.lookup(path)
            if hit is None:
                continue
            dist, recorded = hit
            entry = found.get(dist.meta_dir)
            if entry is None:
                entry = found[dist.meta_dir] = {
                    "name": dist.name,
                    "version": dist.version,
                    "ecosystem": "pypi",
                    "hash": dist.record_sha256,
                    "location": dist.meta_dir,
                    "files": [],
                }
            entry["files"].append({"path": os.path.normpath(path), "recorded_hash": recorded})
        return list(found.values())
