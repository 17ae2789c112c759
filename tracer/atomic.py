"""Writing a file whole, safely, wherever the user pointed us.

provtrace often runs as root and writes where a user said (`export -o`,
`--json-out`, `notebook run --output`), sometimes in a folder other users
may write to, such as /tmp. A fixed temporary name there (DEST.tmpPID) is a
name another user can plant a symlink at ahead of time, and root would write
through it. So the temporary file gets a random name, created with
O_CREAT|O_EXCL (tempfile.mkstemp: it never opens an existing file or follows
a symlink), and is renamed over the destination. rename() replaces whatever
is at the destination, a symlink included, and never writes through it.

The result's mode is what open() would give a new file (0666 less the
umask), not mkstemp's 0600: an export is meant to be read. An existing
destination is replaced by a new file; its old mode and owner are not kept.

What is not a regular file is not replaced: `-o /dev/null` or a FIFO is
written into, as a shell redirection would (renaming over /dev/null as root
would leave a regular file there for the whole machine). A symlink is
followed only where nobody else could have planted it: in a folder that no
other user may write to (/dev/stdout, a link of one's own); in /tmp and the
like it is replaced, as above.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

_NAME_KEEP = 32  # chars of the destination's name kept in the temp's name (NAME_MAX is 255)


def atomic_write(dest: str, data: bytes, *, mode: int = 0o666) -> None:
    """Write data to dest: readers see the old file or the new one, never half of it.

    Raises OSError (the temporary file is removed first).
    """
    dest = _target(os.path.abspath(dest))
    try:
        st = os.stat(dest, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        _write_into(dest, st, data)
        return
    folder, name = os.path.split(dest)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name[:_NAME_KEEP]}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode & ~_umask())
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)  # the data is on disk before the name points at it
        os.close(fd)
        fd = -1
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # renamed before the failure, or never there
        raise


def _target(dest: str, hops: int = 8) -> str:
    """dest, with symlinks followed while the folder holding each is one only
    root and this user may write to (nobody else can have planted the link)."""
    for _ in range(hops):
        try:
            if not stat.S_ISLNK(os.lstat(dest).st_mode) or _shared(os.path.dirname(dest)):
                return dest
        except OSError:
            return dest
        dest = os.path.join(os.path.dirname(dest), os.readlink(dest))
        dest = os.path.normpath(dest)
    return dest


def _shared(folder: str) -> bool:
    """Whether a user other than root and us may create names in folder."""
    try:
        st = os.stat(folder)
    except OSError:
        return True
    if st.st_mode & 0o002:
        return True
    return bool(st.st_mode & 0o020) or st.st_uid not in (0, os.geteuid())


def _write_into(dest: str, st: os.stat_result, data: bytes) -> None:
    """Write into a device or FIFO; refuse a directory or a socket."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", dest)
    if stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.ENXIO, "is a socket, not a file", dest)
    fd = os.open(dest, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _umask() -> int:
    """This process's umask, read without setting it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022  # Linux before 4.7 lacks the field: assume the common default
