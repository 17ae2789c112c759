"""Who a host is, and what one of its paths is across the fleet.

A host id is `[fleet] host_id` from the config file, else /etc/machine-id.
A process is (host, boot, pid, start time): the boot comes from the run's
writer stamp (store/recover.py), the start time from its process record.

A path is keyed for the central store (fkey):
  * on a network or FUSE filesystem found in /proc/self/mountinfo, by that
    filesystem's identity and the path inside it, so every host that mounts
    it, wherever, names a file the same: nfs://server:/export/dir/file;
  * under a prefix declared in `[fleet] shared` (a mount the table cannot
    tell is shared), by the prefix: shared:/prefix/dir/file;
  * otherwise host-scoped: host:<host id>:/the/path.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass

from .. import config as C
from .db import FleetError

log = logging.getLogger(__name__)

MACHINE_ID = "/etc/machine-id"

# fstype -> the scheme of its keys. NFS v3 and v4 name one export the same way.
NETWORK_FS = {"nfs": "nfs", "nfs4": "nfs", "cifs": "smb", "smb3": "smb", "ceph": "ceph",
              "lustre": "lustre", "glusterfs": "gluster", "9p": "9p", "beegfs": "beegfs", "gpfs": "gpfs"}
FUSE_FS = {"fuse.s3fs": "s3", "fuse.gcsfuse": "gs", "fuse.sshfs": "sshfs", "fuse.rclone": "rclone",
           "fuse.ceph-fuse": "ceph", "fuse.glusterfs": "gluster", "fuse.juicefs": "juicefs"}


def host_id(configured: str | None = None, machine_id_path: str = MACHINE_ID) -> str:
    """--host-id, else [fleet] host_id, else /etc/machine-id; FleetError when none is known."""
    if configured:
        return _valid(configured, "--host-id")
    fleet = C.table("fleet")
    if "host_id" in fleet:
        value, path = fleet["host_id"]
        if not isinstance(value, str):
            raise C.ConfigError(f"config {path}: [fleet] host_id must be a string")
        return _valid(value, f"config {path}: [fleet] host_id")
    try:
        with open(machine_id_path) as f:
            value = f.read().strip()
    except OSError as e:
        raise FleetError(f"no host id: {machine_id_path} cannot be read ({e.strerror}); "
                         "set [fleet] host_id in the config file or pass --host-id") from None
    return _valid(value, machine_id_path)


def _valid(value: str, where: str) -> str:
    if not value or len(value) > 128 or any(c.isspace() or c == ":" for c in value):
        raise FleetError(f"{where}: host id {value!r} must be 1-128 characters, no spaces or ':'")
    return value


def shared_prefixes() -> list[str]:
    """The [fleet] shared prefixes, normalised, longest first."""
    fleet = C.table("fleet")
    if "shared" not in fleet:
        return []
    value, path = fleet["shared"]
    if not isinstance(value, list) or not all(isinstance(p, str) and p.startswith("/") for p in value):
        raise C.ConfigError(f"config {path}: [fleet] shared must be a list of absolute paths")
    return sorted({posixpath.normpath(p) for p in value}, key=len, reverse=True)


@dataclass(frozen=True)
class Mount:
    point: str    # where it is mounted here
    root: str     # the directory of the filesystem mounted there
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 5 or len(r) < 2:
            continue
        mounts.append(Mount(point=_unescape(f[4]), root=_unescape(f[3]), fstype=r[0], source=_unescape(r[1])))
    return mounts


def read_mounts(path: str = "/proc/self/mountinfo") -> list[Mount]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError as e:
        log.warning("event=mountinfo-unreadable path=%s error=%r", path, e.strerror)
        return []


def _fs_identity(m: Mount) -> str | None:
    """scheme://identity of a shared filesystem, or None for a local one."""
    scheme = NETWORK_FS.get(m.fstype) or FUSE_FS.get(m.fstype)
    if scheme is None:
        return None
    source = m.source
    if m.fstype in FUSE_FS and source in ("", m.fstype.split(".", 1)[1], "fuse"):
        # s3fs shows "s3fs", not its bucket: only the mount point names it (the
        # same on every host, or declare the prefix in [fleet] shared).
        source = "mount" + m.point
    if scheme == "smb":
        source = source.lstrip("/")  # //server/share
    return f"{scheme}://{source.rstrip('/')}"


class Keyer:
    """Turns this host's paths into fleet keys (fkey, shared)."""

    def __init__(self, host: str, mounts: list[Mount] | None = None, shared: list[str] | None = None) -> None:
        self.host = host
        # longest mount point first: the mount a path is on is the first that contains it
        self.mounts = sorted(read_mounts() if mounts is None else mounts, key=lambda m: len(m.point), reverse=True)
        self.shared = shared_prefixes() if shared is None else shared
        self._cache: dict[bytes, tuple[str, bool]] = {}

    def key(self, raw: bytes) -> tuple[str, bool]:
        got = self._cache.get(raw)
        if got is None:
            got = self._cache[raw] = self._key(raw)
        return got

    def _key(self, raw: bytes) -> tuple[str, bool]:
        path = raw.decode("utf-8", "backslashreplace")
        for m in self.mounts:
            if _under(path, m.point):
                ident = _fs_identity(m)
                if ident is not None:
                    inner = posixpath.normpath(posixpath.join(m.root, posixpath.relpath(path, m.point)))
                    return f"{ident}{inner if inner != '/' else '/'}", True
                break
        for prefix in self.shared:
            if _under(path, prefix):
                return f"shared:{path}", True
        return f"host:{self.host}:{path}", False


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")
