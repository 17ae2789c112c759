"""Discovery of running Jupyter kernels, whatever launched them.

Two sources, merged:
- process command lines: ipykernel (`-m ipykernel_launcher -f FILE`, also
  VS Code's `--f=FILE`), IRkernel (`R --slave -e IRkernel::main() --args
  FILE`), IJulia (`julia ... -e "import IJulia; IJulia.run_kernel()" FILE`
  and the older `julia .../IJulia/src/kernel.jl FILE`), and any other kernel
  taking `-f FILE`;
- connection files `kernel-*.json` in Jupyter runtime directories, mapped to
  a pid language-agnostically: the process that LISTENs on the file's ports.

Anything unusable (unreadable or partial file, no listener, a process that
vanished) becomes a Gap in the result, never an exception.
"""

from __future__ import annotations

import logging
import os
import time
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import psutil

from .connection import ConnectionFileError, ConnectionInfo, parse_connection_file

log = logging.getLogger(__name__)

# .../IJulia/src/kernel.jl, or .../packages/IJulia/<slug>/src/kernel.jl
_OLD_IJULIA = re.compile(r"/IJulia/(?:[^/]+/)?src/kernel\.jl$")


@dataclass(frozen=True)
class KernelCommand:
    """What a kernel's argv says: its language and connection file (as written)."""

    language: str
    connection_file: str
    launcher: str  # "ipykernel", "irkernel", "ijulia", "generic"


@dataclass(frozen=True)
class Gap:
    what: str  # "connection-file", "process", "ports"
    where: str
    reason: str


@dataclass(frozen=True)
class DiscoveredKernel:
    pid: int
    create_time: float  # psutil create_time: with pid, the identity
    uid: int
    language: str
    connection_file: str
    connection: ConnectionInfo | None
    found_by: tuple[str, ...]  # subset of ("cmdline", "ports")


@dataclass
class Discovery:
    kernels: list[DiscoveredKernel] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    def by_pid(self, pid: int) -> DiscoveredKernel | None:
        return next((k for k in self.kernels if k.pid == pid), None)


def match_kernel_argv(argv: Sequence[str]) -> KernelCommand | None:
    """Recognises a kernel launch command line; None when it is not one."""
    if not argv:
        return None
    prog = os.path.basename(argv[0])
    joined = " ".join(argv)
    if prog.startswith("julia") or "IJulia" in joined:
        return _match_ijulia(argv)
    if prog == "R" or "IRkernel::main()" in argv:
        if any("IRkernel::main()" in a for a in argv) and "--args" in argv:
            rest = argv[argv.index("--args") + 1 :]
            if rest:
                return KernelCommand("R", rest[-1], "irkernel")
        return None
    path = _dash_f(argv)
    if path is None:
        return None
    if "ipykernel_launcher" in joined or "ipykernel" in joined:
        return KernelCommand("python", path, "ipykernel")
    language = "python" if prog.startswith("python") else prog
    return KernelCommand(language, path, "generic")


def _match_ijulia(argv: Sequence[str]) -> KernelCommand | None:
    for i, arg in enumerate(argv):
        if "IJulia.run_kernel()" in arg or _OLD_IJULIA.search(arg.replace("\\", "/")):
            rest = [a for a in argv[i + 1 :] if not a.startswith("-")]
            if rest:
                return KernelCommand("julia", rest[-1], "ijulia")
            return None
    return None


def _dash_f(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("-f", "--f") and i + 1 < len(argv):
            return argv[i + 1]
        for prefix in ("-f=", "--f="):
            if arg.startswith(prefix) and len(arg) > len(prefix):
                return arg[len(prefix) :]
    return None


def runtime_dirs() -> list[Path]:
    """Jupyter runtime directories worth scanning: ours, and every user's when root."""
    dirs: list[Path] = []
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        dirs.append(Path(jupyter_runtime_dir()))
    except ImportError:
        log.warning("event=no-jupyter-core reason=runtime dir unknown")
    if os.geteuid() == 0:
        for base in (Path("/home"), Path("/root")):
            homes = [base] if base.name == "root" else _children(base)
            dirs.extend(h / ".local/share/jupyter/runtime" for h in homes)
        dirs.extend(Path("/run/user").glob("*/jupyter/runtime") if Path("/run/user").is_dir() else [])
    seen: list[Path] = []
    for d in dirs:
        if d not in seen and d.is_dir():
            seen.append(d)
    return seen


def _children(base: Path) -> list[Path]:
    try:
        return [p for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []


def connection_files(dirs: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        try:
            files.extend(sorted(d.glob("kernel-*.json")))
        except OSError as exc:
            log.info("event=runtime-dir-unreadable dir=%s error=%s", d, exc)
    return files


def listening_pids(ports: Iterable[int]) -> dict[int, int]:
    """Maps each given TCP port to the pid that LISTENs on it (where the OS lets us see)."""
    wanted = set(ports)
    return {p: pid for p, pid in _all_listeners().items() if p in wanted}


class _Listeners:
    """listening_pids for one scan, computed at most once (all TCP listeners)."""

    def __init__(self) -> None:
        self._all: dict[int, int] | None = None

    def get(self, ports: Iterable[int]) -> dict[int, int]:
        if self._all is None:
            self._all = _all_listeners()
        wanted = set(ports)
        return {p: pid for p, pid in self._all.items() if p in wanted}


def _all_listeners() -> dict[int, int]:
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        log.info("event=net-connections-denied reason=not root; only own sockets visible")
        conns = []
    return {c.laddr.port: c.pid for c in conns
            if c.status == psutil.CONN_LISTEN and c.laddr and c.pid}


def pid_for_connection(info: ConnectionInfo, listeners: dict[int, int] | None = None) -> int | None:
    """The pid that listens on the file's ports; None when none or several do."""
    if info.transport != "tcp":
        return None
    if listeners is None:
        listeners = listening_pids(info.ports.values())
    pids = {listeners.get(p) for p in info.ports.values()} - {None}
    return pids.pop() if len(pids) == 1 else None


class KernelDiscovery:
    """Scans the host's kernels. Build it with the dirs to scan, then call scan() (repeatedly).

    Listing listening sockets means reading every process's fds, the one
    expensive step here, so a scan does it at most once, and only for what is
    new: a kernel already found (same pid and start time) is not re-proved, and
    a connection file nobody listened on is re-checked only after
    STALE_RECHECK_S (or when it changes).
    """

    STALE_RECHECK_S = 60.0

    def __init__(self, dirs: Iterable[Path] | None = None, uid: int | None = None) -> None:
        self.dirs = [Path(d) for d in dirs] if dirs is not None else None
        self.uid = uid  # only kernels of this uid, when set
        self._known: dict[tuple[int, float], DiscoveredKernel] = {}
        self._stale: dict[str, tuple[int, float]] = {}  # path -> (mtime_ns, recheck at)

    def scan(self) -> Discovery:
        result = Discovery()
        by_file: dict[str, DiscoveredKernel] = {}
        listeners = _Listeners()
        seen: set[tuple[int, float]] = set()
        for proc in psutil.process_iter(["pid", "cmdline", "cwd", "uids", "create_time"]):
            key = (proc.info["pid"], proc.info["create_time"])
            seen.add(key)
            kernel = self._known.get(key) or self._from_process(proc, result, listeners)
            if kernel is not None:
                self._known[key] = kernel
                by_file[os.path.realpath(kernel.connection_file)] = kernel
        self._known = {k: v for k, v in self._known.items() if k in seen}
        files = connection_files(self.dirs if self.dirs is not None else runtime_dirs())
        infos: list[ConnectionInfo] = []
        now = time.monotonic()
        for path in files:
            if os.path.realpath(path) in by_file or self._still_stale(path, now):
                continue
            try:
                infos.append(parse_connection_file(path))
            except ConnectionFileError as exc:
                result.gaps.append(Gap("connection-file", str(path), exc.reason))
        for info in infos:
            kernel = self._from_ports(info, listeners.get(p for i in infos for p in i.ports.values()), result)
            if kernel is not None:
                by_file[os.path.realpath(info.path)] = kernel
            else:
                self._mark_stale(info.path, now)
        result.kernels = sorted(by_file.values(), key=lambda k: k.pid)
        return result

    def _still_stale(self, path: Path | str, now: float) -> bool:
        entry = self._stale.get(str(path))
        if entry is None:
            return False
        try:
            mtime_ns = os.stat(path).st_mtime_ns
        except OSError:
            return False
        return entry[0] == mtime_ns and now < entry[1]

    def _mark_stale(self, path: str, now: float) -> None:
        try:
            self._stale[str(path)] = (os.stat(path).st_mtime_ns, now + self.STALE_RECHECK_S)
        except OSError:
            self._stale.pop(str(path), None)

    def _from_process(self, proc: psutil.Process, result: Discovery,
                      listeners: "_Listeners | None" = None) -> DiscoveredKernel | None:
        info = proc.info
        cmd = match_kernel_argv(info.get("cmdline") or [])
        if cmd is None:
            return None
        uid = info["uids"].real if info.get("uids") else -1
        if self.uid is not None and uid != self.uid:
            return None
        path = _resolve(cmd.connection_file, info.get("cwd"), self.dirs)
        connection = None
        try:
            connection = parse_connection_file(path)
        except ConnectionFileError as exc:
            if cmd.launcher == "generic":
                return None
            result.gaps.append(Gap("connection-file", path, exc.reason))
        found = ("cmdline",)
        ports = listeners.get(connection.ports.values()) if (listeners and connection) else None
        if connection is not None and pid_for_connection(connection, ports) == info["pid"]:
            found = ("cmdline", "ports")
        elif cmd.launcher == "generic":
            return None  # `tail -f x` is no kernel: a generic match needs the ports too
        return DiscoveredKernel(
            pid=info["pid"], create_time=info["create_time"], uid=uid, language=cmd.language,
            connection_file=path, connection=connection, found_by=found,
        )

    def _from_ports(self, info: ConnectionInfo, listeners: dict[int, int], result: Discovery) -> DiscoveredKernel | None:
        pid = pid_for_connection(info, listeners)
        if pid is None:
            result.gaps.append(Gap("ports", info.path, "no single process listens on its ports (stale file?)"))
            return None
        try:
            proc = psutil.Process(pid)
            uid, created, argv = proc.uids().real, proc.create_time(), proc.cmdline()
        except psutil.Error as exc:
            result.gaps.append(Gap("process", str(pid), f"vanished or denied: {exc}"))
            return None
        if self.uid is not None and uid != self.uid:
            return None
        language = info.kernel_name or (os.path.basename(argv[0]) if argv else "unknown")
        return DiscoveredKernel(
            pid=pid, create_time=created, uid=uid, language=language,
            connection_file=info.path, connection=info, found_by=("ports",),
        )


def _resolve(path: str, cwd: str | None, dirs: list[Path] | None) -> str:
    """Absolute path of a connection file named on a command line."""
    if os.path.isabs(path):
        return os.path.normpath(path)
    candidates = [Path(cwd) / path] if cwd else []
    candidates += [d / path for d in (dirs if dirs is not None else runtime_dirs())]
    for cand in candidates:
        if cand.exists():
            return os.path.normpath(cand)
    return os.path.normpath(candidates[0]) if candidates else path
