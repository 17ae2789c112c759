"""Paths: lexical resolution, file kinds, and the JSON form of a name.

Policy for names that are not UTF-8: inside provtrace a path is a str made
by os.fsdecode (surrogateescape), which round-trips to the exact bytes. In
JSON such a path is written with the undecodable bytes as \\xNN escapes in
`path`, plus the raw bytes as base64 in `path_b64`. Nothing is dropped.
"""

from __future__ import annotations

import base64
import os
import posixpath

# Kinds, so lineage views are not drowned in /usr/lib and /proc noise. All of
# it is stored; the kind only decides what views show by default.
DATA, LIBRARY, SYSTEM, TEMP = "data", "library", "system", "temp"

_SYSTEM_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/", "/etc/", "/var/lib/dpkg/",
                    "/var/cache/", "/usr/share/locale/", "/usr/lib/locale/",
                    "/usr/share/zoneinfo/", "/usr/share/i18n/", "/var/run/")
_SYSTEM_EXACT = ("/proc", "/sys", "/dev", "/dev/null", "/dev/tty", "/etc")
_LIBRARY_PREFIXES = ("/usr/lib/", "/usr/lib64/", "/lib/", "/lib64/", "/usr/local/lib/",
                     "/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/", "/usr/local/bin/",
                     "/usr/share/R/", "/usr/share/julia/", "/usr/libexec/", "/opt/conda/pkgs/")
_LIBRARY_PARTS = ("/site-packages/", "/dist-packages/", "/.julia/packages/", "/.julia/compiled/",
                  "/R/library/", "/R/site-library/", "/__pycache__/", "/.venv/bin/",
                  "/.pyenv/versions/", "/lib/python3")
_TEMP_PREFIXES = ("/dev/shm/",)
# Kernel and notebook-server state: IPython's history database, Jupyter's
# runtime (connection files), R's and IJulia's logs. Not a result's input.
_SYSTEM_PARTS = ("/.ipython/profile_", "/.local/share/jupyter/", "/.jupyter/", "/jupyter/runtime/",
                 "/.julia/logs/")


def resolve(base: str | None, path: str) -> str | None:
    """Absolute, lexically normalized path; None when a relative path has no base.

    Lexical on purpose: '..' is collapsed textually, as the contract says,
    and a deleted cwd still resolves.
    """
    if path.startswith("/"):
        return _norm(path)
    if base is None:
        return None
    if not path:
        return _norm(base)
    return _norm(base.rstrip("/") + "/" + path)


def _norm(path: str) -> str:
    # Most paths the kernel reports are already normal; normpath would split
    # and rejoin each of them. With no '//', no component starting with '.'
    # and no trailing '/', normpath returns its input unchanged.
    if "//" not in path and "/." not in path and not path.endswith("/") and path.startswith("/"):
        return path
    p = posixpath.normpath(path)
    # POSIX keeps a leading '//' as implementation-defined; Linux treats it as '/'.
    return "/" + p.lstrip("/") if p.startswith("//") else p


def classify(path: str, *, mapped_exec: bool = False) -> str:
    """data | library | system | temp, by path (temp by lifetime is decided at query time)."""
    if mapped_exec or path.endswith(".so") or ".so." in posixpath.basename(path):
        return LIBRARY
    if path.startswith(_TEMP_PREFIXES):  # before /dev/: /dev/shm is temp
        return TEMP
    if path in _SYSTEM_EXACT or path.startswith(_SYSTEM_PREFIXES):
        return SYSTEM
    if any(part in path for part in _SYSTEM_PARTS):
        return SYSTEM
    if path.startswith(_LIBRARY_PREFIXES) or any(part in path for part in _LIBRARY_PARTS):
        return LIBRARY
    if path.endswith((".pyc", ".pyo")):
        return LIBRARY
    return DATA


def to_json(path: str) -> dict[str, str]:
    """{'path': ...} plus 'path_b64' when the name is not valid UTF-8."""
    try:
        path.encode("utf-8")
        return {"path": path}
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return {"path": raw.decode("utf-8", "backslashreplace"),
                "path_b64": base64.b64encode(raw).decode("ascii")}


def display(path: str) -> str:
    """A printable form for text output (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    """Whether text decoded by os.fsdecode (argv, environment, paths) was valid
    UTF-8: undecodable bytes arrive as lone surrogates, which protobuf strings
    and UTF-8 JSON cannot carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def from_user(arg: str) -> str:
    """A path typed by a user, made absolute against the caller's cwd."""
    return resolve(os.getcwd(), arg) or arg
