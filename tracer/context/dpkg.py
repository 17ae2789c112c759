"""Which Debian package owns a file, and at what version.

The owner index is built once, lazily, from ``/var/lib/dpkg/info/*.list``
(one path per line, the file's name is ``PKG[:ARCH].list``). That is one
read of ~1,400 small files (about 50 ms here), far cheaper than one
``dpkg -S`` per library.

/usr-merge: Debian 12 ships ``/lib -> usr/lib`` (and bin, sbin, lib64...), but
packages still list the pre-merge path (``/lib/x86_64-linux-gnu/libc.so.6``)
while ``/proc/PID/maps`` shows ``/usr/lib/...``. A lookup therefore tries the
path as given, its merged/unmerged twin, and then the same for its realpath.

Versions come from ``dpkg-query -W`` in one batched call per lookup set.
``refresh()`` drops both caches when ``/var/lib/dpkg/status`` or the info
directory changed (an install or upgrade); the context collector calls it
once per run, so a long-lived daemon sees upgrades.
dpkg diversions are not followed.
"""

from __future__ import annotations

import array
import bisect
import glob
import logging
import os
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

DPKG_INFO_DIR = "/var/lib/dpkg/info"
DPKG_STATUS = "/var/lib/dpkg/status"
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


class OwnerIndex:
    """path -> package, for every path dpkg lists (132,213 here), in 8 bytes a
    path (1.1 MB here) where a dict of the path strings took ~140 (18.7 MB,
    resident for as long as a daemon lives): one sorted array of 64-bit words,
    each a path's hash with its low bits replaced by its package's number.
    A path whose 44 hash bits equal a listed path's would be given that path's
    owner: about 1 in 10**8 for each path looked up that dpkg does not list
    (132,213 in 2**44), none for a listed one. The index lives in one process,
    so Python's own str hash serves."""

    _BITS = 20  # the package number's; more than any Debian has packages

    def __init__(self, owner: dict[str, int], packages: list[str]) -> None:
        """owner: path -> package number (a str caches its hash: nothing is hashed twice)."""
        if len(packages) >= 1 << self._BITS:
            raise ValueError(f"{len(packages)} dpkg packages: more than the index holds")
        bits = self._BITS
        self._words = array.array("q", sorted(hash(p) >> bits << bits | n for p, n in owner.items()))
        self._packages = packages

    def __len__(self) -> int:
        return len(self._words)

    def get(self, path: str) -> str | None:
        key = hash(path) >> self._BITS << self._BITS
        i = bisect.bisect_left(self._words, key)
        if i < len(self._words) and self._words[i] >> self._BITS << self._BITS == key:
            return self._packages[self._words[i] & ((1 << self._BITS) - 1)]
        return None


class DpkgIndex:
    """path -> owning package, from dpkg's file lists; built on first use."""

    def __init__(self, info_dir: str = DPKG_INFO_DIR, status_path: str = DPKG_STATUS) -> None:
        self.info_dir = info_dir
        self.status_path = status_path
        self._owner: OwnerIndex | None = None
        self._versions: dict[str, str | None] = {}
        self._stamp: tuple | None = None
        self._owners: dict[str, str | None] = {}
        self._real_dirs: dict[str, str] = {}
        self.builds = 0

    def _current_stamp(self) -> tuple:
        stamp = []
        for path in (self.status_path, self.info_dir):
            try:
                st = os.stat(path)
                stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def refresh(self) -> None:
        """Drop the caches if dpkg's database changed since they were built."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            if self._stamp is not None:
                log.debug("dpkg database changed; dropping caches info_dir=%s", self.info_dir)
            self._owner = None
            self._versions = {}
            self._stamp = stamp
        self._owners = {}  # per-path answers also depend on symlinks: one run only
        self._real_dirs = {}

    def _build(self) -> OwnerIndex:
        owner: dict[str, int] = {}
        packages: list[str] = []
        lists = glob.glob(os.path.join(self.info_dir, "*.list"))
        for list_path in lists:
            number = len(packages)
            packages.append(os.path.basename(list_path)[: -len(".list")])
            try:
                with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
                    for line in f:
                        path = line.rstrip("\n")
                        if path and path != "/.":
                            # First owner wins; shared directories have many.
                            owner.setdefault(path, number)
            except OSError as e:
                log.debug("dpkg list unreadable path=%s error=%s", list_path, e)
        log.debug("dpkg index built lists=%d paths=%d", len(lists), len(owner))
        return OwnerIndex(owner, packages)

    def _index(self) -> OwnerIndex:
        if self._stamp is None:
            self.refresh()
        if self._owner is None:
            self._owner = self._build()
            self.builds += 1
        return self._owner

    def owner(self, path: str) -> str | None:
        """The owning package as ``name`` or ``name:arch``, or None."""
        index = self._index()
        if not index:
            return None
        if path in self._owners:
            return self._owners[path]
        found = self._lookup(index, merge_twins(os.path.normpath(path)))
        if found is None:
            real = self._realpath(path)
            if real != path:
                found = self._lookup(index, merge_twins(real))
        self._owners[path] = found
        return found

    def _realpath(self, path: str) -> str:
        """realpath with directories memoized: one lstat per file, not one per component."""
        try:
            if os.path.islink(path):
                return os.path.realpath(path)
            directory, name = os.path.split(path)
            real_dir = self._real_dirs.get(directory)
            if real_dir is None:
                real_dir = self._real_dirs[directory] = os.path.realpath(directory)
            return os.path.join(real_dir, name)
        except (OSError, ValueError):
            return path

    @staticmethod
    def _lookup(index: OwnerIndex, candidates: list[str]) -> str | None:
        for candidate in candidates:
            package = index.get(candidate)
            if package is not None:
                return package
        return None

    def versions(self, packages: Iterable[str]) -> dict[str, str | None]:
        """Installed versions of packages (``name`` or ``name:arch``), batched."""
        packages = list(packages)
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
