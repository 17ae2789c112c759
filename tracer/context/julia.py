"""Julia packages that own touched files, from depot layout and manifests.

No Julia was run here (it is not installable on this machine); this code is
written to Julia's documented on-disk formats and tested on fixture trees
under tests/fixtures/context/julia that copy them:

- A registered package version lives in ``<depot>/packages/NAME/SLUG/``, where
  SLUG is ``Base.version_slug(uuid, tree_sha1)``: CRC-32C of the UUID's 16
  bytes (as Julia's UInt128, little-endian) continued over the 20 bytes of the
  git tree SHA-1, written as 5 (formerly 4) base-62 digits, least significant
  first. Checked against a real path: Example 0.5.3
  (uuid 7876af07-..., tree 46e44e86...) lives in ``packages/Example/aqsx3``.
- ``Manifest.toml`` pins each dependency's ``version``, ``uuid`` and
  ``git-tree-sha1``. Format 2.0 (Julia >= 1.7) nests entries under
  ``[[deps.NAME]]`` beside ``manifest_format = "2.0"``; the older format has
  them at top level as ``[[NAME]]``. Both are read.

Which manifest is active: manifests the run itself read (Julia reads it while
loading), then ``$JULIA_PROJECT``'s, then the depot's default environments
(``<depot>/environments/vX.Y``), newest first. A manifest entry is trusted
only when its computed slug equals the touched SLUG, so a stale or unrelated
manifest never lends its version to a different tree. Otherwise the version
comes from the package's own ``Project.toml`` and ``hash`` stays null.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tomllib
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

_SLUG_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_SLUG = re.compile(r"^[A-Za-z0-9]{4,5}$")
_MANIFEST_NAME = re.compile(r"^(Julia)?Manifest(-v\d+\.\d+)?\.toml$")
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE: list[int] = []


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C, continuable like Julia's ``_crc32c(data, crc)``."""
    if not _TABLE:
        _TABLE.extend(_crc32c_table())
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def version_slug(uuid: str, tree_sha1: str, length: int = 5) -> str:
    """Julia's ``Base.version_slug``: the directory name under packages/NAME/."""
    crc = crc32c(uuidlib.UUID(uuid).int.to_bytes(16, "little"))
    crc = crc32c(bytes.fromhex(tree_sha1), crc)
    digits = []
    for _ in range(length):
        crc, digit = divmod(crc, len(_SLUG_CHARS))
        digits.append(_SLUG_CHARS[digit])
    return "".join(digits)


@dataclass(frozen=True)
class PackageDir:
    depot: str
    name: str
    slug: str
    path: str


def package_dir_of(path: str) -> PackageDir | None:
    """``<depot>/packages/NAME/SLUG/...`` -> its parts, or None."""
    parts = os.path.normpath(path).split("/")
    for i in range(len(parts) - 3, 0, -1):
        if parts[i] == "packages" and _SLUG.match(parts[i + 2]):
            depot = "/".join(parts[:i]) or "/"
            return PackageDir(depot, parts[i + 1], parts[i + 2], "/".join(parts[: i + 3]))
    return None


def manifest_entries(data: Mapping) -> dict[str, list[dict]]:
    """NAME -> entries, for both manifest formats."""
    if "manifest_format" in data or isinstance(data.get("deps"), dict):
        table = data.get("deps", {})
    else:
        table = data
    entries: dict[str, list[dict]] = {}
    for name, value in table.items():
        if isinstance(value, list):
            entries[name] = [v for v in value if isinstance(v, dict)]
        elif isinstance(value, dict):
            entries[name] = [value]
    return entries


def _read_toml(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        log.debug("julia toml unreadable path=%s error=%s", path, e)
        return None


def _project_manifests(project: str) -> list[str]:
    directory = project if os.path.isdir(project) else os.path.dirname(project)
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*Manifest*.toml")), reverse=True)


def _default_manifests(depot: str) -> list[str]:
    envs = glob.glob(os.path.join(glob.escape(depot), "environments", "v*", "*Manifest*.toml"))

    def version_key(p: str) -> tuple[int, ...]:
        ver = os.path.basename(os.path.dirname(p))[1:]
        return tuple(int(x) for x in ver.split(".") if x.isdigit())

    return sorted(envs, key=version_key, reverse=True)


class JuliaPackages:
    """Touched files -> Julia packages, with manifests parsed once each."""

    def __init__(self) -> None:
        self._tomls: dict[str, tuple[tuple | None, dict | None]] = {}

    def _toml(self, path: str) -> dict | None:
        """Parsed TOML, re-read when the file's identity or mtime changes."""
        try:
            st = os.stat(path)
            stamp: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        cached = self._tomls.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._tomls[path] = (stamp, _read_toml(path) if stamp else None)
        return cached[1]

    def candidate_manifests(self, touched: Iterable[str], depot: str,
                            env: Mapping[str, str] | None) -> list[str]:
        found = [p for p in touched if _MANIFEST_NAME.match(os.path.basename(p))]
        project = (env or {}).get("JULIA_PROJECT")
        if project and project != "@.":
            found += _project_manifests(project)
        found += _default_manifests(depot)
        return list(dict.fromkeys(found))

    def _from_manifest(self, pkg: PackageDir, manifests: list[str]) -> dict | None:
        for manifest in manifests:
            data = self._toml(manifest)
            if data is None:
                continue
            for entry in manifest_entries(data).get(pkg.name, []):
                uuid, tree = entry.get("uuid"), entry.get("git-tree-sha1")
                if not (uuid and tree):
                    continue
                try:
                    slugs = {version_slug(uuid, tree, 5), version_slug(uuid, tree, 4)}
                except ValueError:
                    continue
                if pkg.slug in slugs:
                    return {"version": entry.get("version"), "uuid": uuid,
                            "hash": f"git-tree-sha1:{tree}", "manifest": manifest}
        return None

    def _from_project(self, pkg: PackageDir) -> dict:
        for name in ("Project.toml", "JuliaProject.toml"):
            data = self._toml(os.path.join(pkg.path, name))
            if data is not None:
                return {"version": data.get("version"), "uuid": data.get("uuid"),
                        "hash": None, "manifest": None}
        return {"version": None, "uuid": None, "hash": None, "manifest": None}

    def packages_for(self, paths: Iterable[str], env: Mapping[str, str] | None = None) -> list[dict]:
        paths = list(paths)
        found: dict[str, dict] = {}
        manifests_by_depot: dict[str, list[str]] = {}
        for path in paths:
            pkg = package_dir_of(path)
            if pkg is None or pkg.path in found:
                continue
            if pkg.depot not in manifests_by_depot:
                manifests_by_depot[pkg.depot] = self.candidate_manifests(paths, pkg.depot, env)
            manifests = manifests_by_depot[pkg.depot]
            details = self._from_manifest(pkg, manifests) or self._from_project(pkg)
            found[pkg.path] = {
                "name": pkg.name,
                "version": details["version"],
                "ecosystem": "julia",
                "hash": details["hash"],
                "uuid": details["uuid"],
                "slug": pkg.slug,
                "manifest": details["manifest"],
                "location": pkg.path,
            }
        return list(found.values())
