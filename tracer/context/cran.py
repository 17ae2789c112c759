"""R packages that own touched files, from installed ``DESCRIPTION`` files.

An installed R package is a directory ``<lib>/<pkg>/`` holding a
``DESCRIPTION`` (Debian-control-like fields: ``Package``, ``Version``,
``Built: R 4.2.2; ; <date>; unix``) and a ``Meta/`` directory written by
``R CMD INSTALL``. A touched file is attributed to the nearest enclosing
directory that has both, so a source checkout with a DESCRIPTION is not
mistaken for an installed package. Libraries on Debian: /usr/lib/R/library
(base, recommended), /usr/lib/R/site-library (``r-cran-*``),
/usr/local/lib/R/site-library and user libraries (R_LIBS_USER).

The package's ``hash`` is the sha256 of its DESCRIPTION, which R rewrites at
install time with the build stamp. ``refresh()`` (once per run) drops cached
packages whose DESCRIPTION changed and every cached "not a package" answer.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RPackage:
    name: str
    version: str | None
    built: str | None
    path: str
    description_sha256: str


def parse_description(text: str) -> dict[str, str]:
    """DCF fields; continuation lines (leading whitespace) join the previous field."""
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and last is not None:
            fields[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            fields[last] = value.strip()
    return fields


def read_package(pkg_dir: str) -> RPackage | None:
    """The installed package at ``pkg_dir``, or None if it is not one."""
    description = os.path.join(pkg_dir, "DESCRIPTION")
    try:
        with open(description, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = parse_description(raw.decode("utf-8", errors="replace"))
    if "Package" not in fields:
        return None
    if not (os.path.isdir(os.path.join(pkg_dir, "Meta")) or "Built" in fields):
        return None  # a source tree, not an installed package
    return RPackage(
        name=fields["Package"],
        version=fields.get("Version"),
        built=fields.get("Built"),
        path=pkg_dir,
        description_sha256="sha256:" + hashlib.sha256(raw).hexdigest(),
    )


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class RPackages:
    """Touched file -> installed R package, with a per-directory cache."""

    def __init__(self) -> None:
        self._dirs: dict[str, RPackage | None] = {}
        self._stamps: dict[str, tuple | None] = {}
        self._walks: dict[str, RPackage | None] = {}  # start directory -> answer

    def refresh(self) -> None:
        """Forget directories that were not packages, and packages whose DESCRIPTION changed."""
        self._walks = {}
        for directory, package in list(self._dirs.items()):
            description = os.path.join(directory, "DESCRIPTION")
            if package is None or _stamp(description) != self._stamps.get(directory):
                del self._dirs[directory]
                self._stamps.pop(directory, None)

    def _at(self, directory: str) -> RPackage | None:
        if directory not in self._dirs:
            self._stamps[directory] = _stamp(os.path.join(directory, "DESCRIPTION"))
            self._dirs[directory] = read_package(directory)
        return self._dirs[directory]

    def lookup(self, path: str) -> RPackage | None:
        start = os.path.dirname(os.path.normpath(path))
        if start in self._walks:
            return self._walks[start]
        found = None
        directory = start
        while directory and directory != "/":
            found = self._at(directory)
            if found is not None:
                break
            directory = os.path.dirname(directory)
        self._walks[start] = found
        return found

    def packages_for(self, paths) -> list[dict]:
        found: dict[str, dict] = {}
        for path in paths:
            package = self.lookup(path)
            if package is None or package.path in found:
                continue
            found[package.path] = {
                "name": package.name,
                "version": package.version,
                "ecosystem": "cran",
                "hash": package.description_sha256,
                "built": package.built,
                "location": package.path,
            }
        return list(found.values())
