"""A fake daemon gets nothing (issue 12, finding 7), with real users and real sockets.

- the real `provtrace daemon` refuses socket paths a user could swap;
- a fake server run by the non-root user `provtrace-test` (the attacker)
  at a path a victim uses: the victim's client refuses in one line and the
  fake receives no byte; `provtrace run --socket FAKE` warns, falls back to
  ptrace and still runs and traces the command;
- the environment reaches the daemon redacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import textwrap

import pytest

from provtrace.tracer.serve.events import EventHub
from provtrace.tracer.daemon.memory import InMemoryStore
from provtrace.tracer.serve.server import ApiServer

from .helpers import PROVTRACE, PY

pytestmark = pytest.mark.privileged

SECRETS = {"DB_PASSWORD": "hunter2-db", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY"}

# Listens on argv[1] as whoever runs it; on SIGTERM prints what it received.
FAKE_SERVER = textwrap.dedent("""
    import json, os, select, signal, socket, sys
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sys.argv[1])
    os.chmod(sys.argv[1], 0o666)  # open to every victim
    srv.listen(16)
    seen = {"connections": 0, "bytes": 0}
    def stop(*_):
        print(json.dumps(seen), flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("listening", flush=True)
    conns = [srv]
    while True:
        for s in select.select(conns, [], [])[0]:
            if s is srv:
                conns.append(srv.accept()[0])
                seen["connections"] += 1
                continue
            data = s.recv(65536)
            seen["bytes"] += len(data)
            if not data:
                conns.remove(s)
                s.close()
""")


@pytest.fixture
def base(root_tmp_dir):
    return root_tmp_dir


@pytest.fixture(scope="module")
def victim():
    """A second real non-root user, created for this module and removed after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create users")
    name = f"pt-victim-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def _owned_dir(path: str, user, mode: int = 0o755) -> str:
    os.mkdir(path)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, mode)
    return path


@contextlib.contextmanager
def fake_server(path: str, user):
    """The attacker's listener at path; yields a dict filled with what it saw when it stops."""
    proc = subprocess.Popen([PY, "-c", FAKE_SERVER, path], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                            stdout=subprocess.PIPE, text=True, cwd="/")
    seen: dict = {}
    try:
        assert proc.stdout.readline().strip() == "listening"
        yield seen
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        seen.update(json.loads(out.strip().splitlines()[-1]))


def _as(user, argv, cwd, extra_env=None):
    env = {"PATH": "/usr/bin:/bin", "HOME": cwd, **SECRETS, **(extra_env or {})}
    return subprocess.run(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _client_health(user, socket_path: str, cwd: str) -> str:
    """What a ProvtraceClient of user says about socket_path: the error line, or OK."""
    code = textwrap.dedent(f"""
        from provtrace.tracer.serve.client import ApiError, ProvtraceClient
        try:
            ProvtraceClient({socket_path!r}).health()
            print("OK")
        except ApiError as e:
            print(type(e).__name__, e)
    """)
    r = _as(user, [PY, "-c", code], cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# -- the daemon ----------------------------------------------------------------
@pytest.mark.parametrize("layout", ["user-dir", "user-dir-above", "user-dir-above-missing",
                                    "world-writable", "sticky-parent"])
def test_daemon_refuses_a_socket_others_could_swap(base, test_user, layout):
    if layout.startswith("user-dir"):
        bad = _owned_dir(os.path.join(base, "u"), test_user)
        parent = bad if layout == "user-dir" else os.path.join(bad, "run")
        if layout == "user-dir-above":
            os.mkdir(parent)  # root's own directory, inside the user's
        why = f"{bad} is owned by uid {test_user.pw_uid}"
    else:
        bad = parent = os.path.join(base, "shared")
        os.mkdir(parent)
        os.chmod(parent, 0o777 if layout == "world-writable" else 0o1777)
        why = (f"{bad} is writable by others without the sticky bit" if layout == "world-writable"
               else f"{bad} is writable by other users")
    sock, db = os.path.join(parent, "provtrace.sock"), os.path.join(base, "provtrace.db")
    r = subprocess.run([PROVTRACE, "daemon", "--socket", sock, "--db", db],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], r.stderr
    assert not os.path.exists(sock) and not os.path.exists(db)  # refused before anything was made
    assert os.path.isdir(parent) == (layout != "user-dir-above-missing")  # not even its directory


# -- clients against a fake -------------------------------------------------------
def test_client_refuses_a_fake_in_a_user_dir_and_sends_nothing(base, test_user, victim):
    attacker_dir = _owned_dir(os.path.join(base, "attacker"), test_user)
    home = _owned_dir(os.path.join(base, "victim"), victim, 0o700)
    sock = os.path.join(attacker_dir, "provtrace.sock")
    with fake_server(sock, test_user) as seen:
        said = _client_health(victim, sock, home)
    assert said.startswith(f"UntrustedDaemon refusing daemon socket {sock}: {attacker_dir} is owned by uid")
    assert seen == {"connections": 0, "bytes": 0}


def test_client_checks_the_socket_owner_and_the_listener(base, test_user, victim):
    """A fake made to look right (in a root-only directory) is still caught: first
    by the socket file's owner, then, with that chown'ed to root, by SO_PEERCRED."""
    attacker_dir = _owned_dir(os.path.join(base, "attacker"), test_user)
    run = os.path.join(base, "run")
    os.mkdir(run)
    home = _owned_dir(os.path.join(base, "victim"), victim, 0o700)
    sock = os.path.join(run, "provtrace.sock")
    with fake_server(os.path.join(attacker_dir, "fake.sock"), test_user) as seen:
        os.rename(os.path.join(attacker_dir, "fake.sock"), sock)  # what only root could do
        said = _client_health(victim, sock, home)
        assert said == (f"UntrustedDaemon refusing daemon socket {sock}: {sock} is owned by uid "
                        f"{test_user.pw_uid}, not by root or the daemon's uid: not a provtrace daemon")
        os.chown(sock, 0, 0)
        said = _client_health(victim, sock, home)
        assert said == (f"UntrustedDaemon refusing daemon socket {sock}: the process listening there runs "
                        f"as uid {test_user.pw_uid}, not as root or the daemon's uid")
    assert seen == {"connections": 1, "bytes": 0}  # the SO_PEERCRED probe, which sends nothing


def test_run_with_a_fake_socket_warns_falls_back_and_leaks_nothing(base, test_user, victim):
    attacker_dir = _owned_dir(os.path.join(base, "attacker"), test_user)
    home = _owned_dir(os.path.join(base, "victim"), victim, 0o700)
    sock, db = os.path.join(attacker_dir, "provtrace.sock"), os.path.join(home, "store.db")
    with fake_server(sock, test_user) as seen:
        r = _as(victim, [PROVTRACE, "run", "--socket", sock, "--db", db, "--",
                         "sh", "-c", 'echo "ran $DB_PASSWORD" > out; exit 7'], home)
    assert r.returncode == 7, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"provtrace: warning: refusing daemon socket {sock}: {attacker_dir} is owned by uid {test_user.pw_uid}: "
        "every directory above a daemon socket must be owned by root (or the daemon's uid); "
        "tracing with ptrace instead"]
    assert open(os.path.join(home, "out")).read() == f"ran {SECRETS['DB_PASSWORD']}\n"  # it ran, as itself
    assert seen == {"connections": 0, "bytes": 0}
    runs = _as(victim, [PROVTRACE, "runs", "--db", db, "--json"], home)
    assert runs.returncode == 0, runs.stderr
    (run,) = json.loads(runs.stdout)
    assert run["backend"] == "ptrace" and run["exit_code"] == 7


def test_run_with_a_fake_socket_and_ebpf_asked_is_a_one_line_error(base, test_user, victim):
    attacker_dir = _owned_dir(os.path.join(base, "attacker"), test_user)
    home = _owned_dir(os.path.join(base, "victim"), victim, 0o700)
    sock = os.path.join(attacker_dir, "provtrace.sock")
    with fake_server(sock, test_user) as seen:
        r = _as(victim, [PROVTRACE, "run", "--backend", "ebpf", "--socket", sock, "--", "touch", "out"], home)
    assert r.returncode != 0 and not os.path.exists(os.path.join(home, "out"))
    assert len(r.stderr.strip().splitlines()) == 1 and "refusing daemon socket" in r.stderr
    assert seen == {"connections": 0, "bytes": 0}


# -- what the real daemon receives ------------------------------------------------
class RecordingStore(InMemoryStore):
    """The daemon's API over memory, keeping the env each TraceCommand carried."""

    def __init__(self, hub: EventHub) -> None:
        super().__init__(hub)
        self.envs: list[dict] = []

    def start_command(self, **kw):
        self.envs.append(dict(kw["env"]))
        return super().start_command(**kw)


def test_environment_reaches_the_daemon_redacted(base, victim):
    run = os.path.join(base, "run")
    os.mkdir(run)
    home = _owned_dir(os.path.join(base, "victim"), victim, 0o700)
    hub = EventHub()
    store = RecordingStore(hub)
    with ApiServer(store, os.path.join(run, "provtrace.sock"), hub=hub) as server:
        r = _as(victim, [PROVTRACE, "run", "--socket", server.socket_path, "--", "sh", "-c",
                         'test "$DB_PASSWORD" = hunter2-db'], home, {"JULIA_PROJECT": "/srv/proj"})
    assert r.returncode == 0, r.stderr  # the command itself saw its real environment
    (env,) = store.envs
    assert env["DB_PASSWORD"] == env["AWS_SECRET_ACCESS_KEY"] == "<redacted>"
    assert env["JULIA_PROJECT"] == "/srv/proj"  # what the daemon uses stays usable
    assert not any(v in json.dumps(env) for v in SECRETS.values())
