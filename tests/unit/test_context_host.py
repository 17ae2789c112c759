"""Host facts from /proc and /etc, checked against the running machine."""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess

from provtrace.tracer.context import host


def test_host_context_matches_this_machine() -> None:
    ctx = host.host_context()
    assert ctx["host"] == socket.gethostname()
    assert ctx["kernel"] == platform.release()
    assert ctx["arch"] == platform.machine()
    assert ctx["cpu"]["count"] == os.cpu_count()
    assert ctx["cpu"]["model"]
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert abs(ctx["memory_bytes"] - pages) <= 64 * 1024 * 1024
    assert ctx["os_release"]["ID"] == platform.freedesktop_os_release()["ID"]


def test_os_release_quoting(tmp_path) -> None:
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n# c\nVERSION_ID=\'12\'\n')
    assert host.os_release(str(path)) == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
                                          "ID": "debian", "VERSION_ID": "12"}
    assert host.os_release(str(tmp_path / "missing")) == {}


def test_cpuinfo_counts_physical_cores(tmp_path) -> None:
    block = "processor\t: {n}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {c}\n\n"
    path = tmp_path / "cpuinfo"
    path.write_text("".join(block.format(n=n, c=n // 2) for n in range(4)))  # 2 cores, SMT
    info = host.cpu_info(str(path))
    assert info["model"] == "Test CPU" and info["physical_cores"] == 2


def test_rlimits_of_self_match_getrlimit() -> None:
    limits = host.rlimits(os.getpid())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limits["Max open files"]["soft"] == soft
    assert limits["Max open files"]["hard"] == hard
    assert limits["Max open files"]["units"] == "files"
    stack_soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    expected = None if stack_soft == resource.RLIM_INFINITY else stack_soft
    assert limits["Max stack size"]["soft"] == expected


def test_rlimits_of_a_child_with_lowered_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Popen returns only after the child's exec, so the limit is in place.
    child = subprocess.Popen(
        ["sleep", "30"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (77, hard)))
    try:
        limits = host.rlimits(child.pid)
        assert limits["Max open files"]["soft"] == 77
        assert limits["Max open files"]["hard"] == hard
    finally:
        child.kill()
        child.wait()


def test_rlimits_of_missing_process() -> None:
    assert host.rlimits(2**22 + 12345) is None


def test_cgroups_and_container() -> None:
    entries = host.cgroups(os.getpid())
    assert entries and all({"hierarchy", "controllers", "path"} <= set(e) for e in entries)
    found = host.container(os.getpid())
    if os.path.exists("/.dockerenv"):
        assert found["runtime"] == "docker"
    assert host.container(os.getpid(), env={"container": "podman"}) is not None
