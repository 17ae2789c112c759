"""Peer credentials: who is on the other end of a Unix socket, per the kernel.

grpcio does not expose SO_PEERCRED, so the daemon's public socket is served
by a credential-checking proxy (proxy.py). For each accepted connection the
proxy reads SO_PEERCRED, then connects to the private gRPC socket from a
unique abstract address; the gRPC server sees that address as the call's
peer ("unix-abstract:NAME") and the CallerRegistry maps it back to the
credentials. Only the proxy can reach the private socket (0700 directory),
so a peer name that is not registered means "refuse", never "trust".
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from typing import TYPE_CHECKING

from ..errors import ProcessError

if TYPE_CHECKING:  # the daemon's side; the client checks a uid and never builds a Caller (start-up)
    from .records import Caller

log = logging.getLogger(__name__)

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


def peer_ids(sock: socket.socket) -> tuple[int, int, int]:
    """The connected peer's (pid, uid, gid) as the kernel recorded them."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def peer_cred(sock: socket.socket) -> Caller:
    """The connected peer's pid, uid and gid as the kernel recorded them."""
    from .records import Caller  # noqa: PLC0415

    pid, uid, gid = peer_ids(sock)
    return Caller(uid=uid, gid=gid, pid=pid)


class CallerRegistry:
    """Peer name (as grpc's context.peer() shows it) -> Caller, for live connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callers: dict[str, Caller] = {}

    def add(self, peer: str, caller: Caller) -> None:
        with self._lock:
            self._callers[peer] = caller

    def remove(self, peer: str) -> None:
        with self._lock:
            self._callers.pop(peer, None)

    def lookup(self, peer: str) -> Caller | None:
        with self._lock:
            return self._callers.get(peer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._callers)


def process_ids(pid: int) -> tuple[int, int, int]:
    """(real uid, ppid, start time in clock ticks since boot) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            status = fh.read().decode("utf-8", "replace")
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("utf-8", "replace")
    except FileNotFoundError as exc:
        raise ProcessError(pid, None, "no such process") from exc
    except OSError as exc:
        raise ProcessError(pid, None, f"cannot read /proc: {exc.strerror}") from exc
    uid = ppid = None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])  # real uid
        elif line.startswith("PPid:"):
            ppid = int(line.split()[1])
    # comm may hold spaces and parentheses: fields resume after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    if uid is None or ppid is None or len(fields) < 20:
        raise ProcessError(pid, None, "unparseable /proc status")
    return uid, ppid, int(fields[19])


def start_time_ns(pid: int) -> int:
    """Process start time in ns since boot (CLOCK_BOOTTIME; /proc/PID/stat field 22)."""
    return process_ids(pid)[2] * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))
