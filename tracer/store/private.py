"""A store is private: its directory 0700, its files 0600, whatever the umask.

A store holds every traced command's argv, paths and file names; on a shared
host only its owner may read it (root's system store: root only), and the
daemon's per-uid checks are worth nothing if the file itself is readable.

SQLite creates a database's -wal, -shm and -journal with the mode of the
database file (os_unix.c, findCreateFileMode: it fchmods them to match,
ignoring the umask), so creating the database 0600 before SQLite first opens
it keeps every companion private from its first byte. Files and directories
left looser by an older provtrace are tightened when the store is opened for
writing, with one warning per path.

Tightening cannot take back a descriptor someone opened while a file was
loose; see docs/security.md.
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite's files beside the database


def prepare(path: str, *, own_dir: bool) -> None:
    """Make the store at path private before SQLite opens it for writing.

    The directory is created 0700 when missing; an existing one is tightened
    only when own_dir (the store's dedicated directory, such as
    /var/lib/provtrace: a user's project folder that holds a --db file is not
    ours to change). The database file is created 0600 when missing; it and
    any companion file left from an earlier open are tightened to 0600.
    Raises OSError when the directory or the file cannot be made.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        os.chmod(parent, DIR_MODE)  # the umask may have taken bits mode= asked for; set exactly
    elif own_dir:
        tighten(parent, DIR_MODE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, FILE_MODE)
    try:
        _tighten_fd(fd, path, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in COMPANIONS:
        tighten(path + suffix, FILE_MODE)


def tighten(path: str, mode: int) -> None:
    """Clear the permission bits of path that mode does not have (a missing
    path, or a symlink in place of a companion file, is left alone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("event=store-mode-unchecked path=%s error=%s", path, exc.strerror or exc)
        return
    try:
        _tighten_fd(fd, path, mode)
    finally:
        os.close(fd)


def _tighten_fd(fd: int, path: str, mode: int) -> None:
    old = stat.S_IMODE(os.fstat(fd).st_mode)
    new = old & mode
    if new == old:
        return
    try:
        os.fchmod(fd, new)
    except OSError as exc:  # not our file: say so, the store still opens
        log.warning("event=store-mode-loose path=%s mode=%o error=%s", path, old, exc.strerror or exc)
        return
    log.warning("event=store-mode-tightened path=%s old=%o new=%o", path, old, new)
