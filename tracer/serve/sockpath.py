"""Trusted socket paths: a daemon socket that no unprivileged user can swap.

The rule, applied by the daemon before it binds and by every client before
it sends a byte (a fake server on the path would receive a user's command,
environment and cells):

- every directory from / down to the socket's parent is owned by a trusted
  uid (root, or the daemon's uid) and writable by nobody else: not by
  others, and not by its group unless that group is root's (gid 0);
- a world- or group-writable directory is accepted on the way only when it
  is sticky (like /tmp): there, only an entry's owner may rename or remove
  it, so the next component, itself owned by a trusted uid, cannot be
  swapped. The socket's direct parent may never be such a directory (a user
  could squat the name before the daemon binds it): the daemon wants its own
  directory, e.g. /run/provtrace (root, 0755);
- a symlink on the way is followed only when nobody else can replace it: it
  lies in a directory that passed the rule and is not sticky, or it is owned
  by a trusted uid; its target is then checked by the same rule. The socket
  itself must not be a symlink;
- every directory walked through must pass, even one that `..` leaves again.

The walk opens each directory with O_PATH|O_NOFOLLOW relative to the one
before and checks the opened directory (fstat), so no rename between check
and use can substitute another directory. Clients then connect through
/proc/self/fd/N/NAME, N being the checked parent, so the path they connect
to is the directory they checked (see client.py).
"""

from __future__ import annotations

import os
import stat

from ..errors import TracerError

DAEMON_UID_ENV = "PROVTRACE_DAEMON_UID"
_MAX_LINKS = 40  # as the kernel's own limit on symlinks in one lookup
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UntrustedSocket(TracerError):
    """The socket path could be swapped by someone other than root or the daemon;
    the message names the offending directory."""


def trusted_uids() -> frozenset[int]:
    """Root, plus $PROVTRACE_DAEMON_UID when the daemon runs under its own uid."""
    raw = os.environ.get(DAEMON_UID_ENV, "").strip()
    if not raw:
        return frozenset({0})
    if not raw.isdigit():
        raise UntrustedSocket(f"{DAEMON_UID_ENV}={raw!r} is not a numeric uid")
    return frozenset({0, int(raw)})


def open_socket_dir(path: str, trusted: frozenset[int], *,
                    shared_parent_ok: bool = False) -> tuple[int, str, str]:
    """Checks every directory down to path's parent; returns (O_PATH fd of the
    parent, the parent as walked with symlinks resolved, the socket's name).

    The caller owns the fd. Raises UntrustedSocket naming the first directory
    (or symlink) that breaks the rule, FileNotFoundError when one is missing.
    shared_parent_ok checks the parent as an ancestor (sticky allowed): for a
    directory that is about to get a trusted subdirectory."""
    path = os.path.join(os.getcwd(), path)  # an absolute path stays as it is
    head, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise UntrustedSocket(f"{path} does not name a socket")
    fds: list[int] = []
    shown: list[str] = []
    try:
        _enter_root(fds, shown, trusted)
        pending = [c for c in reversed(head.split("/")) if c]  # a stack: next component last
        links = 0
        while pending:
            comp = pending.pop()
            if comp == ".":
                continue
            if comp == "..":
                if len(fds) > 1:
                    os.close(fds.pop())
                    shown.pop()
                continue
            where = _join(shown, comp)
            st = os.stat(comp, dir_fd=fds[-1], follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise UntrustedSocket(f"{path}: too many symlinks")
                _check_link(where, st, os.fstat(fds[-1]), trusted)
                target = os.readlink(comp, dir_fd=fds[-1])
                if target.startswith("/"):
                    while len(fds) > 1:
                        os.close(fds.pop())
                        shown.pop()
                pending.extend(c for c in reversed(target.split("/")) if c)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise UntrustedSocket(f"{where} is not a directory")
            fds.append(os.open(comp, _DIR_FLAGS, dir_fd=fds[-1]))
            shown.append(comp)
            _check_dir(where, os.fstat(fds[-1]), trusted)
        parent = "/".join(shown) or "/"
        st = os.fstat(fds[-1])
        if _shared(st) and not shared_parent_ok:
            raise UntrustedSocket(f"{parent} is writable by other users (sticky or not): a socket's directory "
                                  "must be writable only by root or the daemon (e.g. /run/provtrace, 0755)")
        return fds.pop(), parent, name
    finally:
        for fd in fds:
            os.close(fd)


def check_socket_file(dir_fd: int, parent: str, name: str, trusted: frozenset[int]) -> None:
    """The socket itself: a socket (not a symlink) owned by a trusted uid.
    FileNotFoundError when nothing is there."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    where = os.path.join(parent, name)
    if not stat.S_ISSOCK(st.st_mode):
        raise UntrustedSocket(f"{where} is not a socket" + (" (a symlink)" if stat.S_ISLNK(st.st_mode) else ""))
    if st.st_uid not in trusted:
        raise UntrustedSocket(f"{where} is owned by uid {st.st_uid}, not by root or the daemon's uid: "
                              "not a provtrace daemon")


def check_socket_path(path: str, trusted: frozenset[int]) -> str:
    """The daemon's check before it binds: returns the parent as walked."""
    fd, parent, _ = open_socket_dir(path, trusted)
    os.close(fd)
    return parent


# -- the rule ------------------------------------------------------------------
def _shared(st: os.stat_result) -> bool:
    """Someone besides the owner (and root's group) may create or remove entries."""
    return bool(st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0))


def _check_dir(where: str, st: os.stat_result, trusted: frozenset[int]) -> None:
    if st.st_uid not in trusted:
        raise UntrustedSocket(f"{where} is owned by uid {st.st_uid}: every directory above a daemon socket "
                              "must be owned by root (or the daemon's uid)")
    if _shared(st) and not st.st_mode & stat.S_ISVTX:
        who = "others" if st.st_mode & stat.S_IWOTH else f"group {st.st_gid}"
        raise UntrustedSocket(f"{where} is writable by {who} without the sticky bit: anyone there could "
                              "replace the daemon socket")


def _check_link(where: str, st: os.stat_result, dir_st: os.stat_result, trusted: frozenset[int]) -> None:
    if _shared(dir_st) and st.st_uid not in trusted:
        raise UntrustedSocket(f"{where} is a symlink owned by uid {st.st_uid} in a shared directory: "
                              "its owner could point it anywhere")


def _enter_root(fds: list[int], shown: list[str], trusted: frozenset[int]) -> None:
    fds.append(os.open("/", _DIR_FLAGS))
    shown.append("")
    _check_dir("/", os.fstat(fds[-1]), trusted)


def _join(shown: list[str], comp: str) -> str:
    return "/".join([*shown, comp])  # shown[0] is "" for /
