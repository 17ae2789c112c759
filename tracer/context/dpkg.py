"""Which Debian package owns a file, and at what version.

The owner index is built once, lazily, from ``/var/lib/dpkg/info/*.list``
(one path per line, the file's name is ``PKG[:ARCH].list``). That is one
read of ~1,400 small files (about 50 ms here), far cheaper than one
``dpkg -S`` per library.

/usr-merge: Debian 12 ships ``/lib -> usr/lib`` (and bin, sbin, lib64...), but
packages still list the pre-merge path (``/lib/x86_64-linux-gnu/libc.so.6``)
while ``/proc/PID/maps`` shows ``/usr/lib/...``. A lookup therefore tries the
path as given, its merged/unmerged twin, and then the same for its realpath.

Versions come from ``dpkg-query -W`` in one batched call per lookup set,
cached for the life of the index. dpkg diversions are not followed.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

DPKG_INFO_DIR = "/var/lib/dpkg/info"
_MERGED_TOPS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_QUERY_TIMEOUT_S = 10


def merge_twins(path: str) -> list[str]:
    """The path plus its /usr-merge twin (``/lib/x`` <-> ``/usr/lib/x``)."""
    twins = [path]
    parts = path.split("/", 3)  # ['', top, rest...] or ['', 'usr', top, rest]
    if len(parts) >= 3 and parts[1] in _MERGED_TOPS:
        twins.append("/usr" + path)
    elif len(parts) >= 4 and parts[1] == "usr" and parts[2] in _MERGED_TOPS:
        twins.append(path[len("/usr"):])
    return twins


class DpkgIndex:
    """path -> owning package, from dpkg's file lists; built on first use."""

    def __init__(self, info_dir: str = DPKG_INFO_DIR) -> None:
        self.info_dir = info_dir
        self._owner: dict[str, str] | None = None
        self._versions: dict[str, str | None] = {}

    def _build(self) -> dict[str, str]:
        owner: dict[str, str] = {}
        lists = glob.glob(os.path.join(self.info_dir, "*.list"))
        for list_path in lists:
            package = os.path.basename(list_path)[: -len(".list")]
            try:
                with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
                    for line in f:
                        path = line.rstrip("\n")
                        if path and path != "/.":
                            # First owner wins; shared directories have many.
                            owner.setdefault(path, package)
            except OSError as e:
                log.debug("dpkg list unreadable path=%s error=%s", list_path, e)
        log.debug("dpkg index built lists=%d paths=%d", len(lists), len(owner))
        return owner

    def _index(self) -> dict[str, str]:
        if self._owner is None:
            self._owner = self._build()
        return self._owner

    def owner(self, path: str) -> str | None:
        """The owning package as ``name`` or ``name:arch``, or None."""
        index = self._index()
        if not index:
            return None
        candidates = merge_twins(os.path.normpath(path))
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            real = path
        if real != path:
            candidates += merge_twins(real)
        for candidate in candidates:
            package = index.get(candidate)
            if package is not None:
                return package
        return None

    def versions(self, packages: Iterable[str]) -> dict[str, str | None]:
        """Installed versions of packages (``name`` or ``name:arch``), batched."""
        wanted = sorted({p for p in packages if p not in self._versions})
        if wanted:
            self._versions.update(self._query(wanted))
        return {p: self._versions.get(p) for p in packages}

    def _query(self, packages: list[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = dict.fromkeys(packages)
        fmt = "${binary:Package}\t${Package}\t${Version}\n"
        try:
            proc = subprocess.run(
                ["dpkg-query", "-W", "-f", fmt, *packages],
                capture_output=True, text=True, timeout=_QUERY_TIMEOUT_S, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.debug("dpkg-query failed packages=%d error=%s", len(packages), e)
            return found
        for line in proc.stdout.splitlines():
            fields = line.split("\t")
            if len(fields) != 3:
                continue
            qualified, plain, version = fields
            for key in (qualified, plain):
                if key in found:
                    found[key] = version or None
        return found


def package_name(owner: str) -> str:
    """``libc6:amd64`` -> ``libc6``."""
    return owner.split(":", 1)[0]
