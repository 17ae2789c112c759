"""The daemon's public Unix socket and its credential-checking proxy.

Socket life cycle, race-free:
- the path is refused unless no one but root (or the daemon's uid) can
  swap it: every directory above it is checked first (sockpath.py);
- an exclusive flock on PATH.lock (pid inside) decides who owns PATH; a
  second daemon fails with "already running, pid N" and touches nothing;
- with the lock held, a leftover socket at PATH is stale only if nobody
  accepts on it; it is then removed (a live listener is never stolen);
- the socket is bound under a temporary name with umask 077, chmod'ed to
  0666 (any local user may connect: authorization is by SO_PEERCRED),
  listening, and only then renamed onto PATH.
The gRPC server itself listens in a private 0700 directory beside PATH,
reachable only through this proxy (see auth.py for how calls get a uid).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading

from ..errors import TracerError
from .auth import CallerRegistry, peer_cred
from .sockpath import check_socket_path, open_socket_dir

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class SocketInUse(TracerError):
    """Another daemon owns the socket; the message names its pid."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a provtrace daemon is already running on {path} ({who}); "
                         "stop it first, or pass --socket to use another path")


class SocketError(TracerError):
    """The socket path cannot be used; the message says why."""


class PublicSocket:
    """Owns PATH (lock, stale clean-up, safe bind); build it, then open()."""

    def __init__(self, path: str, backlog: int = 128) -> None:
        self.path = os.path.abspath(path)
        self.backlog = backlog
        self.sock: socket.socket | None = None
        self.private_dir: str | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None

    @property
    def private_path(self) -> str:
        assert self.private_dir is not None
        return os.path.join(self.private_dir, "grpc.sock")

    def open(self) -> socket.socket:
        parent = prepare_socket_dir(self.path)
        self._lock()
        try:
            self._clear_stale()
            self.sock = self._bind()
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            self.private_dir = tempfile.mkdtemp(prefix=".grpc-", dir=parent)  # 0700
        except BaseException:
            self.close()
            raise
        log.info("event=socket-open path=%s pid=%d", self.path, os.getpid())
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # never remove someone else's
                    os.unlink(self.path)
            self.sock.close()
            self.sock = None
        if self.private_dir is not None:
            for name in os.listdir(self.private_dir):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.private_dir, name))
            with contextlib.suppress(OSError):
                os.rmdir(self.private_dir)
            self.private_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- steps ---------------------------------------------------------------
    def _lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SocketError(f"cannot open lock {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd) or _listener_pid(self.path)
            os.close(fd)
            raise SocketInUse(self.path, owner) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"{self.path} exists and is not a socket; remove it or pass --socket")
        pid = _listener_pid(self.path)
        if pid is not None:
            raise SocketInUse(self.path, pid)
        log.info("event=stale-socket-removed path=%s", self.path)
        os.unlink(self.path)

    def _bind(self) -> socket.socket:
        parent = os.path.dirname(self.path)
        tmp = os.path.join(parent, f".{os.path.basename(self.path)}.{os.getpid()}.{secrets.token_hex(4)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            sock.bind(tmp)
        except OSError as exc:
            sock.close()
            raise SocketError(f"cannot bind {tmp}: {exc.strerror}") from exc
        finally:
            os.umask(old)
        try:
            os.chmod(tmp, 0o666)
            sock.listen(self.backlog)
            os.rename(tmp, self.path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise SocketError(f"cannot publish socket {self.path}: {exc.strerror}") from exc
        return sock


def prepare_socket_dir(path: str) -> str:
    """Creates path's directory (0755) if missing and refuses a path that
    anyone but root or this process's uid could swap (sockpath.py); returns
    the directory. Cheap: the daemon calls it before loading its probes too."""
    parent = os.path.dirname(os.path.abspath(path))
    trusted = frozenset({0, os.geteuid()})
    top = parent
    while not os.path.isdir(top):  # nothing is created below a directory that fails
        top = os.path.dirname(top)
    try:
        if top != parent:
            os.close(open_socket_dir(os.path.join(top, "_"), trusted, shared_parent_ok=True)[0])
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create {parent}: {exc.strerror}") from exc
    try:
        check_socket_path(path, trusted)
    except OSError as exc:
        raise SocketError(f"cannot check {parent}: {exc.strerror}") from exc
    return parent


class CredentialProxy:
    """Relays public connections to the private gRPC socket, recording each peer's creds."""

    def __init__(self, listener: socket.socket, private_path: str, registry: CallerRegistry) -> None:
        self.listener = listener
        self.private_path = private_path
        self.registry = registry
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tag = f"provtrace-{os.getpid()}-{secrets.token_hex(4)}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cred-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # this thread's own loop
        self._loop = loop
        self.listener.setblocking(False)
        server = loop.run_until_complete(asyncio.start_unix_server(self._serve, sock=self.listener))
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            caller = peer_cred(sock)
        except OSError as exc:
            log.warning("event=peercred-failed error=%s", exc)
            writer.close()
            return
        self.connections += 1
        name = f"{self._tag}-{self.connections}-{secrets.token_hex(4)}"
        peer = f"unix-abstract:{name}"
        self.registry.add(peer, caller)
        out = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            out.bind("\0" + name)
            up_reader, up_writer = await asyncio.open_unix_connection(sock=_connected(out, self.private_path))
        except OSError as exc:
            out.close()
            log.error("event=proxy-upstream-failed private=%s error=%s", self.private_path, exc)
            self.registry.remove(peer)
            writer.close()
            return
        log.debug("event=proxy-accept uid=%d pid=%d peer=%s", caller.uid, caller.pid, peer)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self.registry.remove(peer)
            for w in (writer, up_writer):
                w.close()


def _connected(sock: socket.socket, path: str) -> socket.socket:
    # A local Unix connect completes at once (or fails): no need to go async.
    sock.connect(path)
    sock.setblocking(False)
    return sock


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await src.read(_CHUNK)
            if not data:
                break
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError) as exc:
        # One side went away mid-stream; the other is closed by the caller.
        log.debug("event=proxy-pipe-closed error=%s", exc)
        dst.close()


def _listener_pid(path: str) -> int | None:
    """The pid listening on a Unix socket path, or None when nobody accepts there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return None
        raise SocketError(f"cannot probe {path}: {exc.strerror}") from exc
    try:
        return peer_cred(probe).pid or None
    finally:
        probe.close()


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).strip()
    return int(raw) if raw.isdigit() else None
