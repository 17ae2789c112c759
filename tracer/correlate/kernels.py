"""Discovery of running Jupyter kernels, whatever launched them.

Two sources, merged:
- process command lines: ipykernel (`-m ipykernel_launcher -f FILE`, also
  VS Code's `--f=FILE`), IRkernel (`R --slave -e IRkernel::main() --args
  FILE`), IJulia (`julia ... -e "import IJulia; IJulia.run_kernel()" FILE`
  and the older `julia .../IJulia/src/kernel.jl FILE`), and any other kernel
  taking `-f FILE`;
- connection files `kernel-*.json` in Jupyter runtime directories, mapped to
  a pid language-agnostically: the process that LISTENs on the file's ports.

Either way a kernel is admitted only when the claim is proven: the file is
owned by the process's real uid, read with that user's credentials (never
root's, never through a symlink), and every port in it is held by that
process. A command line is text anyone can write; ports are visible to
anyone in /proc/net/tcp; only both together, checked here, show that the
file is that kernel's own.

Anything unusable (unreadable or partial file, no listener, a process that
vanished) becomes a Gap in the result, never an exception.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import psutil

from ..privs import Creds, PrivilegeError, acting_as
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
    what: str  # "connection-file", "process", "ports", "claim"
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


Listeners = dict[tuple[str, int], frozenset[int]]  # (bound ip, port) -> pids holding it
_WILDCARDS = {4: ("0.0.0.0", "::"), 6: ("::",)}


class _Listeners:
    """Every TCP listener on the host, listed at most once per scan."""

    def __init__(self) -> None:
        self._all: Listeners | None = None

    def get(self) -> Listeners:
        if self._all is None:
            self._all = listening_sockets()
        return self._all


_TCP_LISTEN = "0A"


def listening_sockets(pids: Iterable[int] | None = None) -> Listeners:
    """(bound ip, port) -> every pid holding that listening TCP socket, from /proc.

    Every holder counts: a socket inherited by a forked child is held by both
    (psutil names only one of them). pids limits the processes looked at."""
    by_inode: dict[int, tuple[str, int]] = {}
    for table, version in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        by_inode.update(_listen_table(table, version))
    found: dict[tuple[str, int], set[int]] = {}
    for pid in (pids if pids is not None else _all_pids()):
        for inode in _socket_inodes(pid):
            addr = by_inode.get(inode)
            if addr is not None:
                found.setdefault(addr, set()).add(pid)
    return {k: frozenset(v) for k, v in found.items()}


def _listen_table(path: str, version: int) -> dict[int, tuple[str, int]]:
    """inode -> (ip, port) of the LISTEN sockets in one /proc/net/tcp* table."""
    out: dict[int, tuple[str, int]] = {}
    try:
        with open(path, encoding="ascii") as fh:
            next(fh, None)  # header
            for line in fh:
                fields = line.split()
                if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                    continue
                ip_hex, port_hex = fields[1].split(":")
                out[int(fields[9])] = (_proc_ip(ip_hex, version), int(port_hex, 16))
    except (OSError, ValueError) as exc:
        log.info("event=tcp-table-unreadable path=%s error=%s", path, exc)
    return out


def _proc_ip(hex_ip: str, version: int) -> str:
    """/proc/net/tcp writes addresses as 32-bit words in host byte order."""
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    return str(ipaddress.ip_address(words)) if version == 4 else str(ipaddress.IPv6Address(words))


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _socket_inodes(pid: int) -> list[int]:
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []  # gone, or not ours to look at (not root)
    inodes = []
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return inodes


def _target_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a client of this connection file really connects to."""
    if ip == "localhost":
        ip = "127.0.0.1"  # ZeroMQ resolves names over IPv4 unless told otherwise
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.is_unspecified:  # connecting to 0.0.0.0 / :: reaches the loopback
        addr = ipaddress.ip_address("127.0.0.1" if addr.version == 4 else "::1")
    return addr


def _holders(listeners: Listeners, ip: str, port: int) -> frozenset[int]:
    """The pids holding the socket that a connection to ip:port reaches: a socket
    bound to that very address wins over a wildcard one."""
    target = _target_ip(ip)
    if target is None:
        return frozenset()
    for bound in (str(target), *_WILDCARDS[target.version]):
        pids = listeners.get((bound, port))
        if pids:
            return pids
    return frozenset()


def ports_not_held(pid: int, info: ConnectionInfo, listeners: Listeners) -> str | None:
    """None when pid holds the listening socket behind every port of the file
    (shared at most with its own children, which inherit a forking kernel's
    sockets); otherwise why not. Only then may anything be sent to those ports."""
    if info.transport != "tcp":
        return f"transport {info.transport!r}: which process holds its sockets cannot be proven"
    if _target_ip(info.ip) is None:
        return f"ip {info.ip!r} is not an address"
    for name, port in info.ports.items():
        holders = _holders(listeners, info.ip, port)
        if pid not in holders:
            return f"{name} port {port} is not held by pid {pid}"
        if any(not _descends_from(other, pid) for other in holders - {pid}):
            return f"{name} port {port} is shared with a process that pid {pid} did not start"
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    try:
        return any(p.pid == ancestor for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def still_holds_ports(kernel: DiscoveredKernel) -> str | None:
    """ports_not_held for an already proven kernel, from its own sockets only
    (cheap): checked again right before the daemon first sends it anything."""
    if kernel.connection is None:
        return "no connection file"
    try:
        if psutil.Process(kernel.pid).create_time() != kernel.create_time:
            return "the process is gone"
    except psutil.Error as exc:
        return f"the process is gone or denied: {exc}"
    return ports_not_held(kernel.pid, kernel.connection, listening_sockets([kernel.pid]))


def _port_owner(info: ConnectionInfo, listeners: Listeners) -> int | None:
    """The one pid holding every port of the file; None when none does."""
    if info.transport != "tcp":
        return None
    for pid in sorted(_holders(listeners, info.ip, info.ports["shell"])):
        if ports_not_held(pid, info, listeners) is None:
            return pid
    return None


def _claim_refused(pid: int, uid: int, info: ConnectionInfo, listeners: Listeners) -> tuple[str, int] | None:
    """(why, log level) when process pid (real uid) may not be followed with this
    file; None when it may.

    The file must be the process's own (same owner) and the process must hold
    every port in it: a command line or a runtime file proves nothing alone,
    as anyone may start a process naming someone else's file. Ports not held
    are also what a kernel still starting shows, so that is only logged at
    info level (and the claim is re-checked at the next scan)."""
    if info.owner_uid != uid:
        return f"connection file owned by uid {info.owner_uid}, not by the process's uid {uid}", logging.WARNING
    why = ports_not_held(pid, info, listeners)
    return None if why is None else (why, logging.INFO)


def _read_as(creds: Creds, path: str | Path) -> ConnectionInfo:
    """parse_connection_file with creds' file-system access; ConnectionFileError on any failure."""
    try:
        with acting_as(creds):
            return parse_connection_file(path)
    except PrivilegeError as exc:
        raise ConnectionFileError(path, str(exc)) from exc


Key = tuple[int, float]  # (pid, create_time): a process's identity


class KernelDiscovery:
    """Scans the host's kernels. Build it with the dirs to scan, then call scan() (repeatedly).

    A kernel is admitted only when its connection file is owned by the
    process's real uid, was read with that user's credentials, and names
    ports that the process holds; the first valid claim on a process or a
    file wins for as long as that process lives, and a later conflicting one
    is refused and logged.

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
        self._known: dict[Key, DiscoveredKernel] = {}
        self._stale: dict[str, tuple[int, float]] = {}  # path -> (mtime_ns, recheck at)
        self._refused: dict[Key, str] = {}  # claims refused, logged once each

    def scan(self) -> Discovery:
        result = Discovery()
        listeners = _Listeners()
        kernels: dict[Key, DiscoveredKernel] = {}
        claims: dict[str, Key] = {}  # realpath of a connection file -> the kernel holding it
        fresh = []
        for proc in psutil.process_iter(["pid", "cmdline", "cwd", "uids", "create_time"]):
            key = (proc.info["pid"], proc.info["create_time"])
            known = self._known.get(key)
            if known is not None:  # admitted before: first in line, never displaced
                kernels[key] = known
                claims[os.path.realpath(known.connection_file)] = key
            else:
                fresh.append(proc)
        alive = set(kernels) | {(p.info["pid"], p.info["create_time"]) for p in fresh}
        self._refused = {k: v for k, v in self._refused.items() if k in alive}
        for proc in fresh:
            kernel = self._from_process(proc, result, listeners)
            if kernel is not None:
                self._admit(kernel, kernels, claims, result)
        now = time.monotonic()
        for path in connection_files(self.dirs if self.dirs is not None else runtime_dirs()):
            if os.path.realpath(path) in claims or self._still_stale(path, now):
                continue
            kernel = self._from_file(path, listeners, result)
            if kernel is None or not self._admit(kernel, kernels, claims, result):
                self._mark_stale(str(path), now)
        self._known = kernels
        result.kernels = sorted(kernels.values(), key=lambda k: k.pid)
        return result

    def _admit(self, kernel: DiscoveredKernel, kernels: dict[Key, DiscoveredKernel],
               claims: dict[str, Key], result: Discovery) -> bool:
        key = (kernel.pid, kernel.create_time)
        path = os.path.realpath(kernel.connection_file)
        holder = claims.get(path)
        if key in kernels:
            if kernels[key].connection_file != kernel.connection_file:
                self._refuse(key, kernel.connection_file, f"pid {kernel.pid} is followed with "
                             f"{kernels[key].connection_file} already", result)
            return False
        if holder is not None and holder != key:
            self._refuse(key, kernel.connection_file,
                         f"the connection file is claimed by pid {holder[0]} already", result)
            return False
        kernels[key] = kernel
        claims[path] = key
        return True

    def _refuse(self, key: Key, path: str, reason: str, result: Discovery,
                level: int = logging.WARNING) -> None:
        result.gaps.append(Gap("claim", path, f"pid {key[0]}: {reason}; not followed"))
        if self._refused.get(key) != reason:
            self._refused[key] = reason
            log.log(level, "event=kernel-claim-refused pid=%d file=%s reason=%r", key[0], path, reason)

    def _still_stale(self, path: Path | str, now: float) -> bool:
        entry = self._stale.get(str(path))
        if entry is None:
            return False
        try:
            mtime_ns = os.lstat(path).st_mtime_ns
        except OSError:
            return False
        return entry[0] == mtime_ns and now < entry[1]

    def _mark_stale(self, path: str, now: float) -> None:
        try:
            self._stale[str(path)] = (os.lstat(path).st_mtime_ns, now + self.STALE_RECHECK_S)
        except OSError:
            self._stale.pop(str(path), None)

    def _from_process(self, proc: psutil.Process, result: Discovery,
                      listeners: _Listeners) -> DiscoveredKernel | None:
        """A process whose command line names a connection file, once its claim is proven."""
        info = proc.info
        cmd = match_kernel_argv(info.get("cmdline") or [])
        if cmd is None:
            return None
        uid = info["uids"].real if info.get("uids") else -1
        if self.uid is not None and uid != self.uid:
            return None
        key = (info["pid"], info["create_time"])
        generic = cmd.launcher == "generic"  # `tail -f x` is no kernel: silence unless proven
        try:
            creds = Creds.of_process(info["pid"])
            if creds.uid != uid:
                raise PrivilegeError(f"pid {info['pid']} changed credentials while being read")
            with acting_as(creds):  # the file is looked for and read as the process's user
                path = _resolve(cmd.connection_file, info.get("cwd"), self.dirs)
                connection = parse_connection_file(path)
        except (ConnectionFileError, PrivilegeError) as exc:
            if not generic:
                result.gaps.append(Gap("connection-file", cmd.connection_file,
                                       f"pid {info['pid']}: {getattr(exc, 'reason', exc)}"))
            return None
        refused = _claim_refused(info["pid"], uid, connection, listeners.get())
        if refused is not None:
            if not generic:
                self._refuse(key, path, refused[0], result, refused[1])
            return None
        return DiscoveredKernel(
            pid=info["pid"], create_time=info["create_time"], uid=uid, language=cmd.language,
            connection_file=path, connection=connection, found_by=("cmdline", "ports"),
        )

    def _from_file(self, path: Path, listeners: _Listeners, result: Discovery) -> DiscoveredKernel | None:
        """A runtime-dir connection file, read as its owner and mapped to the pid holding its ports."""
        try:
            owner = os.lstat(path).st_uid  # only whom to read it as; the read re-checks
            info = _read_as(Creds.of_user(owner), path)
        except OSError as exc:
            result.gaps.append(Gap("connection-file", str(path), f"cannot stat ({exc.strerror or exc})"))
            return None
        except ConnectionFileError as exc:
            result.gaps.append(Gap("connection-file", str(path), exc.reason))
            return None
        pid = _port_owner(info, listeners.get())
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
        refused = _claim_refused(pid, uid, info, listeners.get())
        if refused is not None:
            self._refuse((pid, created), info.path, refused[0], result, refused[1])
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
