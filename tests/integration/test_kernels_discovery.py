"""Kernel discovery from processes and runtime dirs, IJulia included.

No Julia is installed here: tests/fakes/julia_standin.c is compiled and run
with argv[0] = "julia" and IJulia's real arguments, and listens on the
connection file's ports like a kernel. Its /proc/PID/cmdline is exactly what
a real IJulia kernel shows.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from provtrace.tracer.correlate.kernels import KernelDiscovery

STANDIN = Path(__file__).resolve().parents[1] / "fakes" / "julia_standin.c"


@pytest.fixture(scope="module")
def standin_binary(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the IJulia stand-in")
    out = tmp_path_factory.mktemp("standin") / "julia-standin"
    subprocess.run([cc, "-O2", "-o", str(out), str(STANDIN)], check=True)
    return out


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _connection_file(runtime: Path, name: str, ports: list[int]) -> Path:
    runtime.mkdir(parents=True, exist_ok=True)
    path = runtime / name
    keys = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    data = dict(zip(keys, ports), ip="127.0.0.1", key="k", transport="tcp",
                signature_scheme="hmac-sha256", kernel_name="julia-1.10")
    path.write_text(json.dumps(data))
    return path


def _start(binary: Path, argv: list[str], ports: list[int]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, executable=str(binary), stdout=subprocess.PIPE, text=True,
                            env={"STANDIN_PORTS": ",".join(map(str, ports))})
    assert proc.stdout.readline().strip() == "ready"
    return proc


IJULIA_ARGVS = {
    "run_kernel": lambda f: ["julia", "-i", "--color=yes", "-e", "import IJulia; IJulia.run_kernel()", f],
    "run_kernel_project": lambda f: ["/opt/julia-1.10.4/bin/julia", "-i", "--color=yes", "--project=@.",
                                     "-e", "import IJulia; IJulia.run_kernel()", f],
    "kernel_jl": lambda f: ["julia", "-i", "--startup-file=yes", "--color=yes",
                            "/home/u/.julia/packages/IJulia/Vo51o/src/kernel.jl", f],
}


@pytest.mark.parametrize("form", sorted(IJULIA_ARGVS))
def test_ijulia_found_by_cmdline_and_ports(standin_binary, tmp_path, form):
    ports = _free_ports(5)
    conn = _connection_file(tmp_path / "runtime", "kernel-julia.json", ports)
    argv = IJULIA_ARGVS[form](str(conn))
    proc = _start(standin_binary, argv, ports)
    try:
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]
        found = KernelDiscovery(dirs=[tmp_path / "runtime"]).scan()
        kernel = found.by_pid(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert kernel is not None, found
    assert kernel.language == "julia" and set(kernel.found_by) == {"cmdline", "ports"}
    assert kernel.connection is not None and kernel.connection.ports["hb"] == ports[4]


def test_connection_file_mapped_to_pid_by_listening_ports(standin_binary, tmp_path):
    """A kernel whose command line says nothing is still found from its runtime file."""
    ports = _free_ports(5)
    _connection_file(tmp_path / "runtime", "kernel-opaque.json", ports)
    proc = _start(standin_binary, ["some-kernel-binary"], ports)
    try:
        found = KernelDiscovery(dirs=[tmp_path / "runtime"]).scan()
        kernel = found.by_pid(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert kernel is not None and kernel.found_by == ("ports",)
    assert kernel.language == "julia-1.10"  # from kernel_name: nothing better is known


def test_bad_and_stale_files_become_gaps(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "kernel-partial.json").write_text('{"shell_port": 1')
    (runtime / "kernel-empty.json").write_text("")
    _connection_file(runtime, "kernel-stale.json", _free_ports(5))  # nobody listens
    found = KernelDiscovery(dirs=[runtime]).scan()
    reasons = {Path(g.where).name: g.reason for g in found.gaps}
    assert "not valid JSON" in reasons["kernel-partial.json"]
    assert "empty" in reasons["kernel-empty.json"]
    assert "no single process listens" in reasons["kernel-stale.json"]
    assert all(not k.connection_file.startswith(str(runtime)) for k in found.kernels)


def test_generic_dash_f_without_ports_is_not_a_kernel(tmp_path):
    victim = tmp_path / "log.json"
    victim.write_text("{}")
    proc = subprocess.Popen(["tail", "-f", str(victim)], stdout=subprocess.DEVNULL)
    try:
        found = KernelDiscovery(dirs=[tmp_path]).scan()
    finally:
        proc.kill()
        proc.wait()
    assert found.by_pid(proc.pid) is None
    assert not [g for g in found.gaps if str(victim) in g.where]


def test_second_file_naming_a_followed_kernels_ports_is_refused(standin_binary, tmp_path):
    """First valid claim wins: another file proving the same process never replaces it."""
    ports = _free_ports(5)
    runtime = tmp_path / "runtime"
    first = _connection_file(runtime, "kernel-a.json", ports)
    second = _connection_file(runtime, "kernel-b.json", ports)
    proc = _start(standin_binary, IJULIA_ARGVS["run_kernel"](str(first)), ports)
    discovery = KernelDiscovery(dirs=[runtime])
    try:
        scans = [discovery.scan(), discovery.scan()]
    finally:
        proc.kill()
        proc.wait()
    for found in scans:
        assert [k.connection_file for k in found.kernels if k.pid == proc.pid] == [str(first)]
    reasons = [g.reason for g in scans[0].gaps if g.where == str(second)]
    assert reasons == [f"pid {proc.pid}: pid {proc.pid} is followed with {first} already; not followed"]


def test_ports_held_on_another_address_prove_nothing(standin_binary, tmp_path, test_user):
    """A user holding the victim's port numbers on 127.0.0.2 does not hold the
    sockets a client of 127.0.0.1 reaches: the victim's do."""
    ports = _free_ports(5)
    victim = _start(standin_binary, ["some-kernel-binary"], ports)
    evil_dir = Path(tempfile.mkdtemp(prefix="provtrace-evil-", dir="/tmp"))  # 0700, the user's
    os.chown(evil_dir, test_user.pw_uid, test_user.pw_gid)
    evil = _connection_file(evil_dir, "kernel-evil.json", ports)  # ip 127.0.0.1
    os.chown(evil, test_user.pw_uid, test_user.pw_gid)
    code = ("import socket, sys, time\n"
            "socks = [socket.socket() for _ in range(5)]\n"
            f"for s, p in zip(socks, {ports!r}):\n"
            "    s.bind(('127.0.0.2', p)); s.listen()\n"
            "print('ready', flush=True); time.sleep(60)\n")
    fake = subprocess.Popen([sys.executable, "-c", code, "ipykernel_launcher", "-f", str(evil)],
                            user=test_user.pw_uid, group=test_user.pw_gid, extra_groups=[],
                            stdout=subprocess.PIPE, text=True, cwd="/tmp")
    try:
        assert fake.stdout.readline().strip() == "ready"
        found = KernelDiscovery(dirs=[]).scan()
    finally:
        for p in (fake, victim):
            p.kill()
            p.wait()
        shutil.rmtree(evil_dir)
    assert found.by_pid(fake.pid) is None
    assert [g.reason for g in found.gaps if g.where == str(evil)] == [
        f"pid {fake.pid}: shell port {ports[0]} is not held by pid {fake.pid}; not followed"]


def test_a_forked_child_of_a_kernel_is_not_a_second_kernel(tmp_path):
    """A cell that forks (multiprocessing's default) leaves a child with the
    kernel's command line and its listening sockets: the kernel stays the one
    followed, the child is refused (the sockets were not its own)."""
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.connection_file = str(tmp_path / "kernel-fork.json")
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.execute_interactive("import os, time\nchild = os.fork()\nif child == 0:\n"
                               "    time.sleep(30)\n    os._exit(0)", timeout=60, output_hook=lambda m: None)
        pid = km.provisioner.process.pid
        [child] = psutil.Process(pid).children()
        found = KernelDiscovery(dirs=[tmp_path]).scan()
        child.kill()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert [k.pid for k in found.kernels if k.connection_file == km.connection_file] == [pid]
    reasons = [g.reason for g in found.gaps if g.reason.startswith(f"pid {child.pid}:")]
    assert reasons and "shared with a process that pid" in reasons[0], found.gaps
