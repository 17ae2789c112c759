"""Touching a user's files with that user's file-system credentials, not root's.

The daemon runs as root but reads files on users' behalf: kernel connection
files, a run's outputs for their fingerprints. Read as root, a user could
point those reads at root's or another user's files (a symlink, a command
line naming someone else's file) and learn what they hold. `acting_as`
swaps the calling thread's file-system uid, gid and supplementary groups
for the owner's while the block runs, and restores them after:

- setfsuid/setfsgid change only the file-system ids, so signals and the
  rest of the process are untouched; and going from fsuid 0 to another uid
  drops CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH from the effective set, so the
  kernel checks permissions as it would for the owner;
- all three are issued as raw syscalls: on Linux credentials belong to a
  thread, and glibc's setgroups() would broadcast the change to every thread
  of the daemon. Only the calling thread changes; other threads (gRPC
  workers, the follower) keep root's view meanwhile.

Where the credentials cannot be assumed (not root and not already that user,
or an unknown architecture), PrivilegeError is raised: callers record a gap
and read nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import pwd
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import TracerError

log = logging.getLogger(__name__)

# (setgroups, setfsuid, setfsgid) syscall numbers, per machine
_SYSCALLS = {
    "x86_64": (116, 122, 123),
    "aarch64": (159, 151, 152),
}
NOGROUP_GID = 65534  # the kernel's overflow gid: the gid of a uid with no passwd entry


class PrivilegeError(TracerError):
    """The daemon cannot take on a user's credentials; nothing is read for them."""


@dataclass(frozen=True)
class Creds:
    """File-system credentials: uid, primary gid, supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @classmethod
    def of_user(cls, uid: int) -> Creds:
        """The uid's credentials from the user database (a login's view)."""
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(uid, NOGROUP_GID)  # no entry: no group privilege at all
        try:
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except OSError:
            groups = (entry.pw_gid,)
        return cls(uid, entry.pw_gid, groups)

    @classmethod
    def of_process(cls, pid: int) -> Creds:
        """A running process's real uid, real gid and groups (from /proc)."""
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            uid = int(fields["Uid"].split()[0])
            gid = int(fields["Gid"].split()[0])
            groups = tuple(int(g) for g in fields.get("Groups", "").split())
        except (OSError, KeyError, ValueError, IndexError) as exc:
            raise PrivilegeError(f"cannot read the credentials of pid {pid}: {exc}") from exc
        return cls(uid, gid, groups)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args) -> int:
    return _libc().syscall(ctypes.c_long(number), *args)


def _numbers() -> tuple[int, int, int]:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise PrivilegeError(f"per-thread credentials are not supported on {platform.machine()}")
    return numbers


def _set_groups(number: int, groups: tuple[int, ...]) -> None:
    array = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    if _syscall(number, ctypes.c_long(len(groups)), array) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"setgroups failed: {os.strerror(err)}")


def _set_fsid(number: int, value: int) -> int:
    """setfsuid/setfsgid(value); returns the previous id (the syscall reports no error)."""
    return _syscall(number, ctypes.c_long(value))


def _current_fsid(number: int) -> int:
    return _set_fsid(number, -1)  # an invalid id changes nothing and returns the current one


def current_fs_ids() -> tuple[int, int]:
    """(fsuid, fsgid) of the calling thread."""
    _, set_uid, set_gid = _numbers()
    return _current_fsid(set_uid), _current_fsid(set_gid)


@contextlib.contextmanager
def acting_as(creds: Creds) -> Iterator[None]:
    """The calling thread uses creds for file-system access inside the block.

    Not root: allowed only for our own uid (nothing to change). Raises
    PrivilegeError when the ids did not take; the thread is then restored."""
    if os.geteuid() != 0:
        if creds.uid != os.geteuid():
            raise PrivilegeError(f"cannot act as uid {creds.uid} without root")
        yield
        return
    set_groups, set_uid, set_gid = _numbers()
    old_groups = tuple(os.getgroups())
    old_uid, old_gid = _current_fsid(set_uid), _current_fsid(set_gid)
    try:
        _set_groups(set_groups, creds.groups)
        _set_fsid(set_gid, creds.gid)
        _set_fsid(set_uid, creds.uid)  # last: it drops the capabilities the others need
        if (_current_fsid(set_uid), _current_fsid(set_gid)) != (creds.uid, creds.gid):
            raise PrivilegeError(f"could not take on uid {creds.uid} gid {creds.gid}")
        yield
    finally:
        _restore(set_groups, set_uid, set_gid, old_uid, old_gid, old_groups)


def _restore(set_groups: int, set_uid: int, set_gid: int, uid: int, gid: int,
             groups: tuple[int, ...]) -> None:
    _set_fsid(set_uid, uid)  # first: it gives back the capabilities setgroups needs
    _set_fsid(set_gid, gid)
    _set_groups(set_groups, groups)
    if (_current_fsid(set_uid), _current_fsid(set_gid)) != (uid, gid):
        # fails safe (this thread keeps less privilege), but nothing it does after is right
        log.error("event=fs-ids-not-restored want_uid=%d want_gid=%d", uid, gid)
