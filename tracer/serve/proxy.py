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

Limits (ConnectionLimits), so that no local user can exhaust the daemon:
- at most `per_uid` connections held at once by one uid (root is exempt),
  and at most `total` in all; a connection over a cap is closed at once;
- a connection whose client sends nothing within `handshake_s` is closed
  (a gRPC client sends its HTTP/2 preface immediately);
- a connection whose client sends nothing for `idle_s` is closed. The gRPC
  server pings every connection (keepalive) more often than that, and a live
  client's gRPC library answers each ping, so only dead or hostile peers go.
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
from dataclasses import dataclass

from ..errors import TracerError
from ..fds import fds_to_spare
from .auth import CallerRegistry, peer_cred
from .ratelog import RateLimitedLog
from .sockpath import check_socket_path, open_socket_dir

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_PRIVATE_PREFIX = ".grpc-"  # the gRPC server's private folder beside PATH: .grpc-PID-XXXXXXXX


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
            _remove_stale_private_dirs(parent)
            # 0700; named by our pid so that the next daemon can tell it is stale
            self.private_dir = tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-", dir=parent)
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
            _remove_private_dir(self.private_dir)
            self.private_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- steps ---------------------------------------------------------------
    def _lock(self) -> None:
        """The lock file is 0600: no other user can open it, so none can flock it to
        keep the daemon from starting. A lock held by a process of an untrusted uid
        (from an older, looser lock file) is not a daemon's: the file is replaced."""
        lock_path = self.path + ".lock"
        fd = self._open_lock(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(fd)
            if holder is not None and _uid_of(holder) not in (None, 0, os.geteuid()):
                log.warning("event=lock-held-by-untrusted path=%s pid=%d: replacing the lock file",
                            lock_path, holder)
                os.close(fd)
                os.unlink(lock_path)
                fd = self._open_lock(lock_path)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                owner = _read_pid(fd) or _listener_pid(self.path)
                os.close(fd)
                raise SocketInUse(self.path, owner) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    @staticmethod
    def _open_lock(lock_path: str) -> int:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)  # left looser by an older provtrace
        except OSError as exc:
            raise SocketError(f"cannot open lock {lock_path}: {exc.strerror}") from exc
        return fd

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


@dataclass(frozen=True)
class ConnectionLimits:
    total: int = 1024
    per_uid: int = 64
    handshake_s: float = 10.0
    idle_s: float = 300.0

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_uid < 1:
            raise ValueError(f"connection caps must be >= 1, got total={self.total} per_uid={self.per_uid}")
        if self.handshake_s <= 0 or self.idle_s <= 0:
            raise ValueError(f"timeouts must be > 0 s, got handshake={self.handshake_s} idle={self.idle_s}")


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

    def __init__(self, listener: socket.socket, private_path: str, registry: CallerRegistry,
                 limits: ConnectionLimits | None = None) -> None:
        self.listener = listener
        self.private_path = private_path
        self.registry = registry
        self.limits = limits or ConnectionLimits()
        self.connections = 0           # accepted since start (names the upstream sockets)
        self.refused = 0               # closed at once: over a cap
        self.timed_out = 0             # closed for silence (handshake or idle)
        self._held: dict[int, int] = {}  # uid -> connections open now
        self._warn = RateLimitedLog(log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tag = f"provtrace-{os.getpid()}-{secrets.token_hex(4)}"

    @property
    def held(self) -> int:
        return sum(self._held.values())

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
        loop.set_exception_handler(self._loop_error)
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

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # asyncio reports accept() failing with EMFILE here (and retries by
        # itself a second later): one line a minute, never a traceback.
        exc = context.get("exception")
        self._warn.warning(f"loop-{type(exc).__name__}", "event=proxy-loop-error message=%r error=%r",
                           context.get("message", ""), str(exc) if exc else "")

    def _admit(self, uid: int) -> bool:
        held = self._held.get(uid, 0)
        if self.held >= self.limits.total or (uid != 0 and held >= self.limits.per_uid):
            return False
        if not fds_to_spare(_FDS_PER_CONNECTION + _FD_RESERVE):
            return False  # the rest of the daemon (store, kernels, /proc scans) needs its fds
        self._held[uid] = held + 1
        return True

    def _release(self, uid: int) -> None:
        left = self._held.get(uid, 0) - 1
        if left > 0:
            self._held[uid] = left
        else:
            self._held.pop(uid, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            caller = peer_cred(sock)
        except OSError as exc:
            self._warn.warning("peercred", "event=peercred-failed error=%s", exc)
            writer.close()
            return
        if not self._admit(caller.uid):
            self.refused += 1
            self._warn.warning(f"cap-{caller.uid}", "event=connection-refused uid=%d pid=%d held_by_uid=%d "
                               "held=%d reason=cap", caller.uid, caller.pid, self._held.get(caller.uid, 0), self.held)
            writer.close()
            return
        try:
            await self._relay(reader, writer, caller)
        finally:
            self._release(caller.uid)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, caller) -> None:
        try:
            first = await asyncio.wait_for(reader.read(_CHUNK), self.limits.handshake_s)
        except asyncio.TimeoutError:
            self.timed_out += 1
            self._warn.warning("handshake", "event=connection-closed uid=%d pid=%d reason=handshake-timeout",
                               caller.uid, caller.pid)
            writer.close()
            return
        except (ConnectionError, OSError):
            writer.close()
            return
        if not first:
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
            self._warn.warning("upstream", "event=proxy-upstream-failed private=%s error=%s",
                               self.private_path, exc)
            self.registry.remove(peer)
            writer.close()
            return
        log.debug("event=proxy-accept uid=%d pid=%d peer=%s", caller.uid, caller.pid, peer)
        up_writer.write(first)
        try:
            idle = await _first_done(_pump(reader, up_writer, self.limits.idle_s), _pump(up_reader, writer))
            if idle:
                self.timed_out += 1
                self._warn.warning("idle", "event=connection-closed uid=%d pid=%d reason=idle-timeout",
                                   caller.uid, caller.pid)
        finally:
            self.registry.remove(peer)
            for w in (writer, up_writer):
                w.close()


_FDS_PER_CONNECTION = 3   # the accepted socket, the upstream socket, and grpc's end of it
_FD_RESERVE = 32          # kept free for everything else the daemon opens


def _connected(sock: socket.socket, path: str) -> socket.socket:
    # A local Unix connect completes at once (or fails): no need to go async.
    sock.connect(path)
    sock.setblocking(False)
    return sock


async def _first_done(client_to_daemon: "asyncio.Future", daemon_to_client: "asyncio.Future") -> bool:
    """Relays both ways until the client's side ends (EOF, error, or silence: returns True)."""
    up = asyncio.ensure_future(client_to_daemon)
    down = asyncio.ensure_future(daemon_to_client)
    try:
        await asyncio.wait({up}, return_when=asyncio.FIRST_COMPLETED)
        if not up.result():   # the client half-closed: let the answer finish
            await down
        return up.result()
    finally:
        for task in (up, down):
            task.cancel()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, idle_s: float | None = None) -> bool:
    """Copies src to dst until EOF. Returns True when src stayed silent for idle_s."""
    try:
        while True:
            try:
                data = await asyncio.wait_for(src.read(_CHUNK), idle_s)
            except asyncio.TimeoutError:
                return True
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
    return False


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


def _remove_stale_private_dirs(parent: str) -> None:
    """Remove the private gRPC folders that daemons killed with SIGKILL left in parent.

    Called with the lock held. A folder is stale when the daemon whose pid
    names it (.grpc-PID-*) is gone; one of an older provtrace, named without
    a pid, when nobody listens on its socket. Only folders, of our own uid,
    are touched.
    """
    try:
        names = [n for n in os.listdir(parent) if n.startswith(_PRIVATE_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or _private_dir_in_use(name, path):
            continue
        _remove_private_dir(path)
        log.info("event=stale-private-dir-removed path=%s", path)


def _private_dir_in_use(name: str, path: str) -> bool:
    pid = name[len(_PRIVATE_PREFIX):].split("-", 1)[0]
    if pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, someone else's
        return True
    try:
        return _listener_pid(os.path.join(path, "grpc.sock")) is not None
    except SocketError:
        return True  # cannot tell: keep it


def _remove_private_dir(path: str) -> None:
    """The gRPC socket inside, then the folder (nothing else is ever put there)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _flock_holder(fd: int) -> int | None:
    """The pid holding a flock on fd's file, from /proc/locks (None: not found)."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 00:1b:5678 0 EOF" ("->" marks a waiter)
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[1:2] != ["->"] and fields[5] == dev:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None


def _uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).strip()
    return int(raw) if raw.isdigit() else None
