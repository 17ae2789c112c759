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
"""

from __future__ import annotations

import os
import tempfile

_NAME_KEEP = 32  # chars of the destination's name kept in the temp's name (NAME_MAX is 255)


def atomic_write(dest: str, data: bytes, *, mode: int = 0o666) -> None:
    """Write data to dest: readers see the old file or the new one, never half of it.

    Raises OSError (the temporary file is removed first).
    """
    folder, name = os.path.split(os.path.abspath(dest))
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
