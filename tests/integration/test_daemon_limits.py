"""A local user cannot exhaust the root daemon (issue 12, finding 3).

Real daemon processes, a real unprivileged user (nobody) holding raw
connections on the public socket, a real fd limit lowered on the live daemon.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

from jupyter_client import KernelManager

from provtrace.tracer.serve.client import ProvtraceClient

from .helpers import PROVTRACE, pt, running_daemon

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

NOBODY = 65534

# Run as nobody with Debian's python (stdlib only): open N connections to the
# socket, send `hello` on each (or nothing), then report which were closed by
# the daemon within `wait` seconds, and keep the rest open for `hold` seconds.
_HOLDER = r"""
import json, socket, sys, time
path, n, hello, wait, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), float(sys.argv[4]), float(sys.argv[5])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    if hello:
        s.sendall(hello)
    socks.append(s)
def closed(s, timeout):
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except socket.timeout:
        return False
    except OSError:
        return True
time.sleep(wait)
first = [closed(s, 0.05) for s in socks]
print(json.dumps({"closed_at_once": sum(first)}), flush=True)
time.sleep(hold)
print(json.dumps({"closed_later": sum(closed(s, 0.05) for s, c in zip(socks, first) if not c)}), flush=True)
"""


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _hold(sock: str, n: int, *, hello: str = "", wait: float = 1.0, hold: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(["/usr/bin/python3", "-c", _HOLDER, sock, str(n), hello, str(wait), str(hold)],
                            stdout=subprocess.PIPE, text=True, preexec_fn=_as_nobody)


def _log(proc: subprocess.Popen) -> str:
    """What the daemon wrote to stderr since start-up (non-blocking)."""
    os.set_blocking(proc.stderr.fileno(), False)
    return proc.stderr.read() or ""


def test_connection_caps_and_handshake_timeout():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    args = ("--max-connections-per-user", "4", "--max-connections", "16", "--handshake-timeout", "3")
    with running_daemon(args=args) as d:
        holder = _hold(d["socket"], 10, wait=1.0, hold=4.0)
        first = json.loads(holder.stdout.readline())
        assert first["closed_at_once"] == 6  # over nobody's cap of 4: refused at once

        # while nobody holds its share, root and the daemon's other users are served
        r = pt("runs", "--socket", d["socket"], "--json")
        assert r.returncode == 0, r.stderr
        with ProvtraceClient(d["socket"], timeout_s=10) as c:
            assert c.health().serving

        later = json.loads(holder.stdout.readline())
        assert later["closed_later"] == 4  # silent past the handshake timeout
        assert holder.wait(timeout=30) == 0
        log = _log(d["proc"])
        assert "event=connection-refused uid=65534" in log and "reason=cap" in log
        assert "reason=handshake-timeout" in log
        # six refusals within a minute make one log line, not six
        assert log.count("event=connection-refused") == 1


def test_idle_timeout_cuts_silent_peers_and_spares_live_clients():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with running_daemon(args=("--idle-timeout", "3")) as d:
        # a peer that starts HTTP/2 and then never answers anything
        preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        silent = _hold(d["socket"], 1, hello=preface, wait=8.0)
        with ProvtraceClient(d["socket"], timeout_s=10) as c:
            assert c.health().serving
            time.sleep(8)  # idle, but its gRPC library answers the daemon's keepalive pings
            assert c.health().serving
        assert json.loads(silent.stdout.readline())["closed_at_once"] == 1
        silent.wait(timeout=30)
        log = _log(d["proc"])
        assert log.count("reason=idle-timeout") == 1, log


def test_daemon_survives_fd_exhaustion():
    """With its fd limit cut to what it already uses, accept, the proxy, the IOPub
    watchers and the /proc scans all fail with EMFILE; the daemon logs a few lines,
    keeps running, and serves again once fds are to be had."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with running_daemon(args=("--handshake-timeout", "30")) as d:
        pid = d["proc"].pid
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={in_use + 2}:"], check=True)
        flood = _hold(d["socket"], 60, wait=0.5, hold=1.0)
        json.loads(flood.stdout.readline())
        # a kernel that starts now must not be followed yet: libzmq aborts a
        # process that cannot make its fds
        kernel = KernelManager(kernel_name="python3")
        kernel.start_kernel()
        r = pt("runs", "--socket", d["socket"])  # refused or timed out: the client's one-line error
        assert "Traceback" not in r.stderr
        time.sleep(4.5)  # reaper and follower scans (every 2 s) run out of fds too
        assert d["proc"].poll() is None, "the daemon died of fd exhaustion"
        json.loads(flood.stdout.readline())
        flood.wait(timeout=30)
        kernel.shutdown_kernel(now=True)

        subprocess.run(["prlimit", f"--pid={pid}", "--nofile=4096:"], check=True)
        with ProvtraceClient(d["socket"], timeout_s=15) as c:
            h = c.health()
        assert h.serving and h.failed == ()
        r = pt("run", "--socket", d["socket"], "--", "true")
        assert r.returncode == 0, r.stderr
        log = _log(d["proc"])
        assert "Traceback" not in log, log
        assert "event=proxy-loop-error" in log
        assert "event=kernel-follow-deferred" in log
        assert len(log.splitlines()) < 40, log  # rate-limited, not one line per failure


def test_a_users_flock_on_the_socket_lock_cannot_keep_the_daemon_down(root_tmp_dir):
    """A lock file an older provtrace left 0644, held by another user's flock:
    the daemon replaces it and starts (issue 12, small leaks); its new lock is 0600."""
    sock = os.path.join(root_tmp_dir, "provtrace.sock")
    lock = sock + ".lock"
    with open(lock, "w") as f:
        f.write("4242\n")  # a pid the holder would like to be named
    os.chmod(lock, 0o644)
    holder = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)", lock],
        stdout=subprocess.PIPE, text=True, preexec_fn=_as_nobody)
    try:
        assert holder.stdout.readline().strip() == "held"
        db = os.path.join(root_tmp_dir, "d.db")
        proc = subprocess.Popen([PROVTRACE, "daemon", "--socket", sock, "--db", db],
                                stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            for _ in range(600):
                line = proc.stderr.readline()
                if "serving" in line or proc.poll() is not None:
                    break
            assert "serving" in line, line
            assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
            r = pt("runs", "--socket", sock)
            assert r.returncode == 0, r.stderr
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    finally:
        holder.kill()
        holder.wait()
