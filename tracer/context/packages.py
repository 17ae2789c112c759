"""Language and system packages a run actually used, from the files it touched.

Not everything installed: only distributions that own a file the run read,
mapped or executed. Each ecosystem has its own resolver module:

- ``pypi``  -- dist-info RECORD / egg-info (pypi.py);
- ``cran``  -- installed DESCRIPTION (cran.py);
- ``julia`` -- depot packages/NAME/SLUG + Manifest.toml (julia.py);
- ``deb``   -- dpkg's file lists, versions from dpkg-query (dpkg.py).

Every entry has ``name, version, ecosystem, hash`` (hash may be null) plus
ecosystem extras. A file may count for two ecosystems (a Debian
``python3-yaml`` file is both ``deb`` and ``pypi``); both are reported,
because both versions matter. Entries are deduplicated on
``(ecosystem, name, version, location)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from .cran import RPackages
from .dpkg import DpkgIndex, package_name
from .julia import JuliaPackages
from .pypi import PythonPackages

log = logging.getLogger(__name__)


class PackageResolver:
    """Holds each ecosystem's caches; reuse one across runs to keep them warm."""

    def __init__(self, dpkg: DpkgIndex | None = None) -> None:
        self.dpkg = dpkg if dpkg is not None else DpkgIndex()
        self.python = PythonPackages()
        self.r = RPackages()
        self.julia = JuliaPackages()

    def refresh(self) -> None:
        """Drop what installs and upgrades since the last run made stale."""
        self.dpkg.refresh()
        self.python.refresh()
        self.r.refresh()

    def deb_packages_for(self, paths: Iterable[str]) -> list[dict]:
        owners: dict[str, None] = {}
        for path in paths:
            owner = self.dpkg.owner(path)
            if owner is not None:
                owners.setdefault(owner)
        versions = self.dpkg.versions(list(owners))
        return [
            {"name": package_name(owner), "version": versions.get(owner), "ecosystem": "deb",
             "hash": None, "qualified_name": owner}
            for owner in owners
        ]

    def packages_for(self, paths: Iterable[str], env: Mapping[str, str] | None = None) -> list[dict]:
        paths = list(dict.fromkeys(p for p in paths if p and p.startswith("/")))
        entries: list[dict] = []
        entries += self.python.packages_for(paths)
        entries += self.r.packages_for(paths)
        entries += self.julia.packages_for(paths, env)
        entries += self.deb_packages_for(paths)
        return dedupe(entries)


def dedupe(entries: list[dict]) -> list[dict]:
    seen: set[tuple] = set()
    out = []
    for entry in entries:
        key = (entry.get("ecosystem"), entry.get("name"), entry.get("version"),
               entry.get("location"))
        if key in seen:
            continue
        seen.add(key)
        out.append(entry)
    return out


def packages_for(paths: Iterable[str], env: Mapping[str, str] | None = None,
                 resolver: PackageResolver | None = None) -> list[dict]:
    """Packages owning any of ``paths``; pass a resolver to reuse its caches."""
    resolver = resolver if resolver is not None else PackageResolver()
    return resolver.packages_for(paths, env)
