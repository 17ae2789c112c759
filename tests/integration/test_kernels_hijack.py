"""A hostile local user cannot get someone else's kernel followed, nor probed.

Issue 12, finding 1: a process whose command line names another user's
connection file (or a file naming another user's kernel ports) used to be
followed with that kernel's key under the attacker's session, or made the
daemon probe the victim's ports with a wrong key (which kills IRkernel).
Here the victim is root's real kernel, the attacker the real non-root user
`provtrace-test`, and the fake kernel a real process of that user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from provtrace.tracer.daemon.ingest import StoreSink
from provtrace.tracer.daemon.memory import InMemoryStore
from provtrace.tracer.correlate.follower import KernelFollower

from .helpers import sessions as _sessions
from .helpers import stored_run, until_followed, wait_for

pytestmark = pytest.mark.privileged

SLEEP = "import time; time.sleep(60)"
REPO = Path(__file__).resolve().parents[2]


def _have(name: str) -> bool:
    return name in KernelSpecManager().find_kernel_specs()


@pytest.fixture
def base():
    """A root-owned directory others may traverse (0755), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="provtrace-hijack-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_user(user, argv: list[str]) -> subprocess.Popen:
    """argv run by `user` (a real non-root process); returns once its command line shows."""
    proc = subprocess.Popen(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/tmp",
                            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: psutil.Process(proc.pid).cmdline()[-1:] == argv[-1:], 10, "the fake's argv")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class _Kernel:
    """A real kernel of root's, on a connection file in `runtime`; its stderr is kept."""

    def __init__(self, name: str, runtime: Path, cwd: Path) -> None:
        runtime.mkdir(mode=0o755, exist_ok=True)
        self.stderr = open(cwd / f"{name}.stderr", "w+")  # noqa: SIM115 - closed in stop()
        self.km = KernelManager(kernel_name=name)
        self.km.connection_file = str(runtime / f"kernel-{name}.json")
        self.km.start_kernel(cwd=str(cwd), stderr=self.stderr)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.pid = self.km.provisioner.process.pid
        self.connection = json.loads(Path(self.km.connection_file).read_text())

    def answers(self) -> bool:
        reply = self.kc.execute_interactive("1", timeout=30, output_hook=lambda msg: None)
        return reply["content"]["status"] == "ok"

    def log(self) -> str:
        self.stderr.flush()
        return Path(self.stderr.name).read_text(errors="replace")

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        self.stderr.close()


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_fake_argv_naming_roots_connection_file_does_not_take_over(base, test_user, mode):
    if not _have("python3"):
        pytest.skip("ipykernel not installed")
    runtime = base / "root-runtime"
    kernel = _Kernel("python3", runtime, base)
    os.chmod(kernel.km.connection_file, mode)  # 0644: readable, but still not the attacker's file
    store = InMemoryStore()
    follower = KernelFollower(StoreSink(store), dirs=[runtime], ready_timeout_s=60)
    fake = None
    try:
        follower.scan_once()
        session = follower.sessions[kernel.pid]
        fake = _as_user(test_user, [sys.executable, "-c", SLEEP, "ipykernel_launcher",
                                    "-f", kernel.km.connection_file])
        found = [follower.scan_once() for _ in range(3)][-1]
        assert follower.sessions.get(kernel.pid) == session  # root's session is not displaced
        assert fake.pid not in follower.sessions
        assert store.get_run(session, None).ended is None
        assert all(k.pid != fake.pid for k in found.kernels)
        why = " ".join(g.reason for g in found.gaps if f"pid {fake.pid}:" in g.reason)
        assert ("Permission denied" if mode == 0o600 else "owned by uid 0") in why, found.gaps
        # root's next cell lands in root's session, and no session exists for the fake
        kernel.kc.execute_interactive("x = 41 + 1", timeout=60, output_hook=lambda msg: None)
        wait_for(lambda: store.list_cells(session), 30, "root's cell in root's session")
        # (other kernels on the host are followed too: these are the ones on root's file)
        on_file = [r for r in store.list_runs(None, "session")
                   if r.kernel is not None and r.kernel.connection_file == kernel.km.connection_file]
        assert [(r.id, r.uid) for r in on_file] == [(session, 0)]
    finally:
        if fake is not None:
            _stop(fake)
        follower.close()
        kernel.stop()


@pytest.mark.parametrize("name", ["ir", "python3"])
def test_attackers_file_naming_victims_ports_is_refused_and_never_probed(base, test_user, name):
    """IRkernel exits on a message signed with a wrong key; ipykernel logs it.

    Run in a network namespace of its own: any other provtrace daemon on this
    host (an older one, say) sees the fake's command line too, and must not be
    able to reach the victim's ports and spoil what this test observes."""
    if not _have(name):
        pytest.skip(f"kernelspec {name!r} not installed")
    seen = _in_private_network(f"_never_probed({name!r}, {str(base)!r}, {test_user.pw_name!r})")
    assert not seen["fake_followed"]
    assert seen["victim_alive"] and seen["victim_answers"]  # not killed by a wrong-key probe
    assert not seen["victim_log_complains"], seen["victim_log"]  # and sent nothing at all
    # the fake's command-line claim, and the file itself (its ports lead to root's kernel)
    assert f"shell port {seen['shell_port']} is not held by pid {seen['fake_pid']}" in seen["reasons"]
    assert f"owned by uid {test_user.pw_uid}, not by the process's uid 0" in seen["reasons"]


def _in_private_network(call: str) -> dict:
    """json of `call` (a call of a function of this module, as `m`), run by a child
    in a new network namespace with its loopback up."""
    code = f"import json\nfrom tests.integration import test_kernels_hijack as m\nprint(json.dumps(m.{call}))"
    r = subprocess.run(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"',
                        sys.executable, code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _never_probed(name: str, base: str, user_name: str) -> dict:
    """Root's kernel `name`; the user's own file naming its ports with a wrong key,
    claimed by the user's fake process; three follower scans. What was seen."""
    user, base_dir = pwd.getpwnam(user_name), Path(base)
    victim = _Kernel(name, base_dir / "root-runtime", base_dir)
    evil_runtime = base_dir / "evil-runtime"
    evil_runtime.mkdir()
    evil = evil_runtime / "kernel-evil.json"
    evil.write_text(json.dumps({**victim.connection, "key": "not-the-key"}))
    for p in (evil_runtime, evil):
        os.chown(p, user.pw_uid, user.pw_gid)
    argv = ([sys.executable, "-c", SLEEP, "IRkernel::main()", "--args", str(evil)] if name == "ir"
            else [sys.executable, "-c", SLEEP, "ipykernel_launcher", "-f", str(evil)])
    follower = KernelFollower(StoreSink(InMemoryStore()), dirs=[evil_runtime], ready_timeout_s=5)
    fake = None
    try:
        fake = _as_user(user, argv)
        gaps = [g for _ in range(3) for g in follower.scan_once().gaps]
        time.sleep(1)
        log = victim.log()
        return {
            "fake_pid": fake.pid, "fake_followed": fake.pid in follower.sessions,
            "victim_alive": victim.km.is_alive(), "victim_answers": victim.km.is_alive() and victim.answers(),
            "victim_log": log, "victim_log_complains": "Invalid" in log or "signature" in log.lower(),
            "shell_port": victim.connection["shell_port"],
            "reasons": " | ".join(g.reason for g in gaps if g.what == "claim" and g.where == str(evil)),
        }
    finally:
        if fake is not None:
            _stop(fake)
        follower.close()
        victim.stop()


def test_runtime_file_of_another_owner_is_refused(base, test_user):
    """A file in the attacker's runtime dir naming root's kernel ports: the ports
    lead to root's pid, whose uid is not the file's owner."""
    if not _have("python3"):
        pytest.skip("ipykernel not installed")
    victim = _Kernel("python3", base / "root-runtime", base)
    evil_runtime = base / "evil-runtime"
    evil_runtime.mkdir()
    evil = evil_runtime / "kernel-evil.json"
    evil.write_text(json.dumps({**victim.connection, "key": "not-the-key"}))
    os.chown(evil, test_user.pw_uid, test_user.pw_gid)
    follower = KernelFollower(StoreSink(InMemoryStore()), dirs=[evil_runtime], ready_timeout_s=5)
    try:
        found = follower.scan_once()
        reasons = [g.reason for g in found.gaps if g.where == str(evil)]
        assert reasons == [f"pid {victim.pid}: connection file owned by uid {test_user.pw_uid}, "
                           f"not by the process's uid 0; not followed"], found.gaps
        assert all(k.connection_file != str(evil) for k in found.kernels)
        assert "Invalid" not in victim.log()
    finally:
        follower.close()
        victim.stop()


def test_daemon_keeps_roots_kernel_when_a_user_claims_its_file(daemon, base, test_user):
    """The daemon end to end: root's kernel stays in root's session, the fake gets none."""
    if not _have("python3"):
        pytest.skip("ipykernel not installed")
    kernel = _Kernel("python3", base / "root-runtime", base)
    mine = lambda: [r for r in _sessions(daemon["db"]) if r["label"] == kernel.km.connection_file]  # noqa: E731
    fake = None
    try:
        # other kernels on the host are followed too: this one is known by its file
        session = wait_for(mine, 60, "the daemon to discover root's kernel")[0]
        assert session["uid"] == 0
        until_followed(kernel.kc, daemon["db"], session["id"])
        fake = _as_user(test_user, [sys.executable, "-c", SLEEP, "ipykernel_launcher",
                                    "-f", kernel.km.connection_file])
        time.sleep(7)  # the daemon scans every 2 s
        kernel.kc.execute_interactive("y = 'after the fake'", timeout=60, output_hook=lambda msg: None)
        time.sleep(1.5)  # the store is flushed every 0.5 s
        assert [(r["id"], r["uid"]) for r in mine()] == [(session["id"], 0)]  # no session for the fake
        doc = stored_run(daemon["db"], session["id"])
        assert doc["run"]["ended"] is None  # root's session was not ended
        counts = [c.get("execution_count") for c in doc["cells"]]
        assert max(c for c in counts if c) >= 2, doc["cells"]  # the later cell is root's
    finally:
        if fake is not None:
            _stop(fake)
        kernel.stop()


def test_register_kernel_says_nothing_of_files_the_caller_cannot_see(daemon, base, test_user):
    """RegisterKernel checks a connection file with the caller's view: a file that
    exists in a root-only directory and one that does not get the same answer."""
    sealed = base / "sealed"
    sealed.mkdir(mode=0o700)
    (sealed / "kernel-root.json").write_text("{}")
    code = textwrap.dedent(f"""
        import json, subprocess
        from provtrace.tracer.serve.client import ApiError, ProvtraceClient
        sleeper = subprocess.Popen(["sleep", "30"])
        answers = []
        with ProvtraceClient({daemon["socket"]!r}) as c:
            for name in ("kernel-root.json", "kernel-none.json"):
                try:
                    c.register_kernel(sleeper.pid, connection_file={str(sealed)!r} + "/" + name)
                    answers.append("OK")
                except ApiError as e:
                    answers.append(e.code.name + " " + e.details.replace(name, "NAME"))
        sleeper.kill()
        print(json.dumps(answers))
    """)
    out = subprocess.run([sys.executable, "-c", code], user=test_user.pw_uid, group=test_user.pw_gid,
                         extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/tmp",
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    existing, missing = json.loads(out.stdout.strip().splitlines()[-1])
    assert existing == missing and existing.startswith("PERMISSION_DENIED"), (existing, missing)
