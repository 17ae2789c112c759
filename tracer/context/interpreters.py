"""Interpreters and compilers a run used, from exec'd paths and mapped libraries.

- Python: ``pyvenv.cfg`` beside a venv's interpreter gives the version
  without running anything; otherwise the interpreter is run once with
  ``-I -S -c`` (isolated, no site) under a timeout, cached by file identity;
  ``libpython3.X.so`` mapped into a process gives at least major.minor.
- R: R_HOME is found from ``<R_HOME>/lib/libR.so``, ``<R_HOME>/bin/exec/R``
  or the ``R_HOME_DIR=`` line of the ``R`` shell script; the version is read
  from ``<R_HOME>/library/base/DESCRIPTION`` or ``Rversion.h``.
- Julia: ``libjulia.so.X.Y[.Z]`` (its real file name, else its soname), or
  the ``lib/`` tree beside an exec'd ``julia``. No Julia was run here.
- Compilers (gcc, cc, g++, c++, clang, gfortran, rustc, nvcc, also
  ``x86_64-linux-gnu-gcc-12`` style names): the first line of ``--version``,
  run once per file identity under a timeout.

Each entry is ``{name, version, path, source}``; ``source`` says where the
version came from, ``error`` appears when it could not be found.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

_RUN_TIMEOUT_S = 5
_PYTHON_EXE = re.compile(r"^(python|pypy)(\d+(\.\d+)?)?$")
_LIBPYTHON = re.compile(r"^libpython(?P<ver>\d+\.\d+)[a-z]*\.so")
_LIBJULIA = re.compile(r"^libjulia\.so\.(?P<ver>\d+(\.\d+)*)$")
_COMPILER = re.compile(
    r"^(?:[a-z0-9_]+-linux-gnu[a-z]*-)?(?P<name>gcc|g\+\+|cc|c\+\+|clang|clang\+\+|gfortran|rustc|nvcc)"
    r"(?:-\d+(\.\d+)*)?$"
)
_PY_PROBE = "import platform,sys;print(platform.python_implementation(),platform.python_version())"


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _first_line(argv: list[str]) -> tuple[str | None, str | None]:
    """(first line of stdout, error)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_RUN_TIMEOUT_S,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {_RUN_TIMEOUT_S}s"
    except OSError as e:
        return None, f"cannot run: {e.strerror or e}"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None, f"exit status {proc.returncode}"
    return lines[0].strip(), None


def pyvenv_version(exe: str) -> str | None:
    """``version``/``version_info`` from the pyvenv.cfg of the venv holding ``exe``."""
    cfg = _read(os.path.join(os.path.dirname(os.path.dirname(exe)), "pyvenv.cfg"))
    for line in (cfg or "").splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() in ("version", "version_info"):
            return value.strip()
    return None


def r_home_of(path: str) -> str | None:
    real = os.path.realpath(path)
    if os.path.basename(real) == "libR.so":
        return os.path.dirname(os.path.dirname(real))
    if real.endswith("/bin/exec/R"):
        return real[: -len("/bin/exec/R")]
    text = _read(real) if os.path.basename(real) == "R" else None
    for line in (text or "").splitlines()[:40]:
        if line.startswith("R_HOME_DIR="):
            return line.partition("=")[2].strip().strip("\"'")
    return None


def r_version(r_home: str) -> tuple[str | None, str | None]:
    """(version, source) from base's DESCRIPTION, else Rversion.h."""
    base = os.path.join(r_home, "library", "base", "DESCRIPTION")
    for line in (_read(base) or "").splitlines():
        if line.startswith("Version:"):
            return line.partition(":")[2].strip(), base
    for header in (os.path.join(r_home, "include", "Rversion.h"), "/usr/share/R/include/Rversion.h"):
        fields = dict(re.findall(r'#define R_(MAJOR|MINOR)\s+"([^"]+)"', _read(header) or ""))
        if "MAJOR" in fields and "MINOR" in fields:
            return f"{fields['MAJOR']}.{fields['MINOR']}", header
    return None, None


def julia_version_from_lib(path: str, soname: str | None = None) -> str | None:
    for name in (os.path.basename(os.path.realpath(path)), os.path.basename(path), soname or ""):
        m = _LIBJULIA.match(name)
        if m:
            return m.group("ver")
    return None


class InterpreterProbe:
    """Finds interpreters and compilers; caches anything it ran by file identity."""

    def __init__(self) -> None:
        self._ran: dict[tuple, tuple[str | None, str | None]] = {}

    def _run_cached(self, path: str, argv: list[str]) -> tuple[str | None, str | None]:
        key = (_identity(path), tuple(argv[1:]))
        if key[0] is None:
            return None, "missing: file not found"
        if key not in self._ran:
            self._ran[key] = _first_line(argv)
        return self._ran[key]

    def python(self, exe: str) -> dict:
        entry = {"name": "python", "path": exe, "implementation": None, "version": None}
        version = pyvenv_version(exe)
        if version:
            impl = "PyPy" if "pypy" in os.path.basename(exe) else "CPython"
            return {**entry, "implementation": impl, "version": version, "source": "pyvenv.cfg"}
        line, error = self._run_cached(exe, [exe, "-I", "-S", "-c", _PY_PROBE])
        if line and len(line.split()) == 2:
            impl, version = line.split()
            return {**entry, "implementation": impl, "version": version, "source": "run"}
        return {**entry, "source": None, "error": error or f"unexpected output {line!r}"}

    def compiler(self, exe: str, name: str) -> dict:
        line, error = self._run_cached(exe, [exe, "--version"])
        entry = {"name": name, "path": exe, "version": line, "source": "--version"}
        return {**entry, "error": error} if error else entry

    def interpreters_for(self, exec_paths: Iterable[str], libraries: Iterable[dict] = ()) -> list[dict]:
        found: dict[tuple, dict] = {}
        r_homes: dict[str, str] = {}
        for exe in dict.fromkeys(exec_paths):
            base = os.path.basename(exe)
            if _PYTHON_EXE.match(base):
                found.setdefault(("python", exe), self.python(exe))
            elif (m := _COMPILER.match(base)) is not None:
                found.setdefault((m.group("name"), exe), self.compiler(exe, m.group("name")))
            elif base in ("R", "Rscript") and (home := r_home_of(exe)):
                r_homes.setdefault(home, exe)
            elif base == "julia":
                libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(exe)), "lib",
                                              "libjulia.so.*"))
                versions = sorted(filter(None, map(julia_version_from_lib, libs)), key=len)
                found.setdefault(("julia", exe), {"name": "julia", "path": exe,
                                                  "version": versions[-1] if versions else None,
                                                  "source": "lib/libjulia.so.*"})
        for lib in libraries:
            self._from_library(lib, found, r_homes)
        for home, path in r_homes.items():
            version, source = r_version(home)
            found.setdefault(("R", home), {"name": "R", "path": path, "version": version,
                                           "r_home": home, "source": source})
        return list(found.values())

    def _from_library(self, lib: dict, found: dict, r_homes: dict) -> None:
        path, soname = lib.get("path") or "", lib.get("soname")
        base = os.path.basename(path)
        if base == "libR.so" and (home := r_home_of(path)):
            r_homes.setdefault(home, path)
        elif (m := _LIBPYTHON.match(soname or base)) is not None:
            if not any(k[0] == "python" for k in found):
                found[("python", path)] = {"name": "python", "path": path, "implementation": "CPython",
                                           "version": m.group("ver"), "source": "libpython soname"}
        elif base.startswith("libjulia.so") and (ver := julia_version_from_lib(path, soname)):
            found.setdefault(("julia", path), {"name": "julia", "path": path, "version": ver,
                                               "source": "libjulia soname"})
