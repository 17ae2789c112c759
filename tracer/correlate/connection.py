"""A Jupyter connection file, parsed defensively.

Connection files are written by whoever launched the kernel and read here
by the daemon, so nothing in them is trusted: an unreadable, partial or odd
file (a symlink as its last component, a FIFO, anything but a regular file)
raises ConnectionFileError (the caller records a gap) and never anything
else. The daemon reads them with the claimed owner's credentials
(privs.acting_as): this module only opens what it is given.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from ..errors import TracerError

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
_MAX_BYTES = 64 * 1024  # real files are < 1 KiB; refuse to slurp a huge one

log = logging.getLogger(__name__)


class ConnectionFileError(TracerError):
    """A connection file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"connection file {self.path}: {reason}")


@dataclass(frozen=True)
class ConnectionInfo:
    path: str
    transport: str
    ip: str
    ports: dict[str, int] = field(hash=False)
    key: bytes = field(repr=False)
    signature_scheme: str
    kernel_name: str | None = None
    curve_publickey: bytes | None = field(default=None, repr=False)
    curve_secretkey: bytes | None = field(default=None, repr=False)
    owner_uid: int = -1  # the file's owner, when read from a file (who may claim it)

    @property
    def uses_curve(self) -> bool:
        return self.curve_publickey is not None

    def as_jupyter_dict(self) -> dict[str, object]:
        """The dict jupyter_client's load_connection_info() takes."""
        info: dict[str, object] = {
            "transport": self.transport,
            "ip": self.ip,
            "key": self.key,
            "signature_scheme": self.signature_scheme,
        }
        info.update({f"{name}_port": port for name, port in self.ports.items()})
        if self.curve_publickey is not None and self.curve_secretkey is not None:
            info["curve_publickey"] = self.curve_publickey
            info["curve_secretkey"] = self.curve_secretkey
        return info


def parse_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Reads and validates one connection file; raises ConnectionFileError."""
    raw, st = read_connection_bytes(path)
    if not raw.strip():
        raise ConnectionFileError(path, "empty (the launcher may still be writing it)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConnectionFileError(path, f"not valid JSON ({exc}); partial write?") from exc
    return dataclasses.replace(connection_from_dict(data, path), owner_uid=st.st_uid)


def read_connection_bytes(path: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """The bytes of a connection file and its stat, read so that nothing a user
    plants under a kernel-*.json name can hang or mislead the reader.

    O_NONBLOCK: opening a FIFO does not wait for a writer. O_NOFOLLOW: a
    symlink is refused, not followed to a file its planter could not read.
    Then fstat on what was opened: only a regular file of at most _MAX_BYTES
    is read. Anything else raises ConnectionFileError (a recorded gap), with
    one warning per file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse(path, "cannot read: a symlink, not followed")
        raise ConnectionFileError(path, f"cannot read ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _refuse(path, "cannot read: not a regular file (a FIFO, socket, device or folder)")
        if st.st_size > _MAX_BYTES:
            _refuse(path, f"larger than {_MAX_BYTES} bytes; not a connection file")
        raw = _read_upto(fd, _MAX_BYTES + 1)
    except OSError as exc:
        raise ConnectionFileError(path, f"cannot read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if len(raw) > _MAX_BYTES:  # grew after the fstat
        _refuse(path, f"larger than {_MAX_BYTES} bytes; not a connection file")
    return raw, st


def _read_upto(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.read(fd, limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# (path, reason) already warned about: a planted file is seen again at every
# scan, and the log should say so once. Bounded: cleared when full.
_warned: set[tuple[str, str]] = set()
_WARNED_MAX = 1024


def _refuse(path: str | os.PathLike[str], reason: str) -> NoReturn:
    key = (os.fspath(path), reason)
    if key not in _warned:
        if len(_warned) >= _WARNED_MAX:
            _warned.clear()
        _warned.add(key)
        log.warning("event=connection-file-refused path=%s reason=%r", key[0], reason)
    raise ConnectionFileError(path, reason)


def connection_from_dict(data: object, path: str | os.PathLike[str] = "<dict>") -> ConnectionInfo:
    if not isinstance(data, dict):
        raise ConnectionFileError(path, "top level is not a JSON object")
    transport = data.get("transport", "tcp")
    if transport not in ("tcp", "ipc"):
        raise ConnectionFileError(path, f"unknown transport {transport!r}")
    ip = data.get("ip", "127.0.0.1")
    if not isinstance(ip, str) or not ip:
        raise ConnectionFileError(path, "ip is missing or not a string")
    ports: dict[str, int] = {}
    for name in CHANNELS:
        port = data.get(f"{name}_port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConnectionFileError(path, f"{name}_port is missing or not a port number: {port!r}")
        ports[name] = port
    key = data.get("key", "")
    if not isinstance(key, str):
        raise ConnectionFileError(path, "key is not a string")
    scheme = data.get("signature_scheme", "hmac-sha256")
    if not isinstance(scheme, str) or not scheme.startswith("hmac-"):
        raise ConnectionFileError(path, f"unsupported signature_scheme {scheme!r}")
    pub, sec = data.get("curve_publickey"), data.get("curve_secretkey")
    if (pub is None) != (sec is None):
        raise ConnectionFileError(path, "only one of curve_publickey/curve_secretkey is set")
    if pub is not None and not (isinstance(pub, str) and isinstance(sec, str) and len(pub) == len(sec) == 40):
        raise ConnectionFileError(path, "CurveZMQ keys are not 40-character Z85 strings")
    name = data.get("kernel_name")
    return ConnectionInfo(
        path=str(Path(path)),
        transport=transport,
        ip=ip,
        ports=ports,
        key=key.encode("utf-8"),
        signature_scheme=scheme,
        kernel_name=name if isinstance(name, str) and name else None,
        curve_publickey=pub.encode("ascii") if pub else None,
        curve_secretkey=sec.encode("ascii") if sec else None,
    )
