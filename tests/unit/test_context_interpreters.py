"""Interpreters and compilers from exec'd paths and mapped libraries."""

from __future__ import annotations

import os
import platform
import shutil
import sys

import pytest

from provtrace.tracer.context.interpreters import (
    InterpreterProbe, julia_version_from_lib, pyvenv_version, r_home_of, r_version,
)


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


def test_venv_python_from_pyvenv_cfg() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("tests not running in a venv")
    exe = os.path.join(sys.prefix, "bin", "python")
    assert pyvenv_version(exe) == platform.python_version()
    [entry] = InterpreterProbe().interpreters_for([exe])
    assert entry == {"name": "python", "path": exe, "implementation": "CPython",
                     "version": platform.python_version(), "source": "pyvenv.cfg"}


def test_system_python_is_run_once_and_cached(monkeypatch) -> None:
    exe = os.path.realpath(sys.base_prefix + "/bin/python3")
    probe = InterpreterProbe()
    [entry] = probe.interpreters_for([exe])
    assert entry["version"] == platform.python_version()
    assert entry["implementation"] == platform.python_implementation()
    assert entry["source"] == "run"

    def no_more_runs(argv):
        raise AssertionError(f"ran {argv} again")
    monkeypatch.setattr("provtrace.tracer.context.interpreters._first_line", no_more_runs)
    assert probe.interpreters_for([exe]) == [entry]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_gcc_version_first_line() -> None:
    gcc = shutil.which("gcc")
    [entry] = InterpreterProbe().interpreters_for([gcc])
    assert entry["name"] == "gcc"
    assert entry["version"].startswith("gcc") and "\n" not in entry["version"]


def test_compiler_names(tmp_path) -> None:
    probe = InterpreterProbe()
    names = ["x86_64-linux-gnu-gcc-12", "g++", "clang++", "rustc", "gfortran", "cc", "nvcc"]
    paths = [str(tmp_path / n) for n in names]  # missing files: recorded error, no crash
    found = probe.interpreters_for(paths)
    assert [e["name"] for e in found] == ["gcc", "g++", "clang++", "rustc", "gfortran", "cc", "nvcc"]
    assert all(e["error"].startswith("missing") for e in found)


def test_compiler_that_hangs_or_fails(tmp_path) -> None:
    fake = tmp_path / "gcc"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    [entry] = InterpreterProbe().interpreters_for([str(fake)])
    assert entry["version"] is None and entry["error"] == "exit status 3"


@pytest.mark.skipif(not os.path.exists("/usr/lib/R/lib/libR.so"), reason="R not installed")
def test_r_from_binary_and_libR() -> None:
    assert r_home_of("/usr/lib/R/lib/libR.so") == "/usr/lib/R"
    assert r_home_of("/usr/bin/R") == "/usr/lib/R"  # the shell script's R_HOME_DIR
    version, source = r_version("/usr/lib/R")
    expected = open("/usr/lib/R/library/base/DESCRIPTION").read().split("Version:")[1].split()[0]
    assert version == expected
    probe = InterpreterProbe()
    [from_exec] = probe.interpreters_for(["/usr/bin/R"])
    [from_lib] = probe.interpreters_for([], [{"path": "/usr/lib/R/lib/libR.so", "soname": None}])
    assert from_exec["version"] == from_lib["version"] == expected
    assert from_lib["r_home"] == "/usr/lib/R"


def test_r_version_from_header_when_no_base(tmp_path) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "include/Rversion.h").write_text(
        '#define R_MAJOR  "4"\n#define R_MINOR  "3.1"\n')
    assert r_version(str(tmp_path)) == ("4.3.1", str(tmp_path / "include/Rversion.h"))


def test_julia_from_library_names(tmp_path) -> None:
    # Julia is not installable here; its lib/ layout is libjulia.so -> .so.1.10 -> .so.1.10.4.
    lib = tmp_path / "julia-1.10.4/lib"
    lib.mkdir(parents=True)
    (lib / "libjulia.so.1.10.4").write_bytes(b"\x7fELF")
    (lib / "libjulia.so.1.10").symlink_to("libjulia.so.1.10.4")
    (lib / "libjulia.so").symlink_to("libjulia.so.1.10")
    assert julia_version_from_lib(str(lib / "libjulia.so")) == "1.10.4"
    assert julia_version_from_lib("/gone/libjulia.so", soname="libjulia.so.1.10") == "1.10"
    (tmp_path / "julia-1.10.4/bin").mkdir()
    exe = tmp_path / "julia-1.10.4/bin/julia"
    exe.write_text("")
    found = by_name(InterpreterProbe().interpreters_for(
        [str(exe)], [{"path": str(lib / "libjulia.so.1.10"), "soname": "libjulia.so.1.10"}]))
    assert found["julia"]["version"] == "1.10.4"


def test_libpython_soname_when_no_python_exec() -> None:
    found = InterpreterProbe().interpreters_for(
        ["/usr/bin/mytool"], [{"path": "/usr/lib/libpython3.12.so.1.0", "soname": "libpython3.12.so.1.0"}])
    assert found == [{"name": "python", "path": "/usr/lib/libpython3.12.so.1.0",
                      "implementation": "CPython", "version": "3.12", "source": "libpython soname"}]
