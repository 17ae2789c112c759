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
import re

# Kinds, so lineage views are not drowned in /usr/lib and /proc noise. All of
# it is stored; the kind only decides what views show by default.
DATA, LIBRARY, SYSTEM, TEMP = "data", "library", "system", "temp"

_SYSTEM_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/", "/etc/", "/var/lib/dpkg/",
                    "/var/cache/", "/usr/share/locale/", "/usr/lib/locale/",
                    "/usr/share/zoneinfo/", "/usr/share/i18n/", "/var/run/",
                    "/usr/share/fonts/", "/usr/local/share/fonts/", "/usr/share/fontconfig/")
_SYSTEM_EXACT = ("/proc", "/sys", "/dev", "/dev/null", "/dev/tty", "/etc")
_LIBRARY_PREFIXES = ("/usr/lib/", "/usr/lib64/", "/lib/", "/lib64/", "/usr/local/lib/",
                     "/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/", "/usr/local/bin/",
                     "/usr/share/R/", "/usr/share/julia/", "/usr/libexec/", "/opt/conda/pkgs/")
_LIBRARY_PARTS = ("/site-packages/", "/dist-packages/", "/.julia/packages/", "/.julia/compiled/",
                  "/R/library/", "/R/site-library/", "/__pycache__/", "/.venv/bin/",
                  "/.pyenv/", "/lib/python3")
_TEMP_PREFIXES = ("/dev/shm/",)
# Kernel and notebook-server state: IPython's history database, Jupyter's
# runtime (connection files), R's and IJulia's logs. Not a result's input.
# Fonts and font caches (fontconfig's, matplotlib's) are read by any program
# that draws text.
_SYSTEM_PARTS = ("/.ipython/profile_", "/.local/share/jupyter/", "/.jupyter/", "/jupyter/runtime/",
                 "/.julia/logs/", "/.cache/fontconfig/", "/.fontconfig/", "/.fonts/",
                 "/.local/share/fonts/", "/.cache/matplotlib/", "/.config/matplotlib/")
_FONT_SUFFIXES = (".ttf", ".ttc", ".otf", ".pcf", ".pcf.gz", ".pfb", ".pfa", ".afm", ".woff", ".woff2")
# A Jupyter kernel's connection file, wherever the runtime directory is.
_KERNEL_JSON = re.compile(r"kernel-[0-9A-Za-z_-]+\.json")
# R's per-session temporary directory (tempdir()): 'Rtmp' and six characters.
_R_TEMPDIR = re.compile(r"/Rtmp[0-9A-Za-z]{6}(?:/|$)")
# Inside a virtualenv or conda environment, the parts that are the installation
# (a project that is itself a venv root keeps its own files as data).
_ENV_PARTS = frozenset(("bin", "lib", "lib64", "include", "share", "etc", "libexec", "man", "ssl",
                        "conda-meta", "pkgs", "compiler_compat", "x86_64-conda-linux-gnu",
                        "Scripts", "Lib", "pyvenv.cfg"))
_ENV_CACHE_MAX = 100_000

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
    """data | library | system | temp, by path (temp by lifetime is decided at query time).

    Looks at the filesystem for one thing: whether a directory above path is
    a Python environment (see env_root); the answer is cached per directory."""
    name = path.rpartition("/")[2]  # posixpath.basename, without its call
    if mapped_exec or path.endswith(".so") or ".so." in name:
        return LIBRARY
    if path.startswith(_TEMP_PREFIXES):  # before /dev/: /dev/shm is temp
        return TEMP
    if path in _SYSTEM_EXACT or path.startswith(_SYSTEM_PREFIXES):
        return SYSTEM
    if _SYSTEM_PARTS_RE.search(path) or name.endswith(_FONT_SUFFIXES) or _KERNEL_JSON.fullmatch(name):
        return SYSTEM
    if path.startswith(_LIBRARY_PREFIXES) or _LIBRARY_PARTS_RE.search(path):
        return LIBRARY
    if path.endswith((".pyc", ".pyo")):
        return LIBRARY
    if _R_TEMPDIR.search(path):
        return TEMP
    if _in_environment(path):
        return LIBRARY
    return DATA


def _in_environment(path: str) -> bool:
    """Whether path is part of a virtualenv's or conda environment's installation."""
    root = env_root(posixpath.dirname(path))
    if root is None:
        return False
    rest = path[len(root):].lstrip("/")
    return rest.split("/", 1)[0] in _ENV_PARTS


# The substring tests of classify() as one scan each (a generator over the
# tuples costs more than the rest of classify on a small-file workload).
_SYSTEM_PARTS_RE = re.compile("|".join(map(re.escape, _SYSTEM_PARTS)))
_LIBRARY_PARTS_RE = re.compile("|".join(map(re.escape, _LIBRARY_PARTS)))

_env_roots: dict[str, str | None] = {}


def env_root(directory: str) -> str | None:
    """The nearest directory at or above `directory` that is a Python environment:
    a virtualenv (it holds pyvenv.cfg, whatever its name) or a conda environment
    (it holds conda-meta/). One lookup per directory, cached."""
    if directory in _env_roots:
        return _env_roots[directory]
    if len(_env_roots) > _ENV_CACHE_MAX:  # a long-lived daemon sees many directories
        _env_roots.clear()
    if directory in ("", "/"):
        root = None
    elif os.path.isfile(directory + "/pyvenv.cfg") or os.path.isdir(directory + "/conda-meta"):
        root = directory
    else:
        root = env_root(posixpath.dirname(directory))
    _env_roots[directory] = root
    return root

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
