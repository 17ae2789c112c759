"""collect_run_context on live child processes and bad inputs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import psutil
import pytest

from provtrace.tracer.context.collect import (
    ContextCollector, collect_run_context, gpu_sample, parse_maps,
)
from provtrace.tracer.context.redact import REDACTED

LIBSSL = "/lib/x86_64-linux-gnu/libssl.so.3"
CONTRACT_KEYS = {"host", "kernel", "cpu", "memory_bytes", "interpreters", "libraries",
                 "packages", "gpus", "env"}


def spawn_loader(lib: str) -> subprocess.Popen:
    """A child that dlopen()s ``lib``, says so, and waits for stdin to close."""
    code = ("import ctypes,sys; ctypes.CDLL(sys.argv[1]); print('loaded', flush=True); "
            "sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, lib], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "loaded"
    return child


def stop(child: subprocess.Popen) -> None:
    child.stdin.close()
    child.wait()


def by_path(libraries: list[dict]) -> dict[str, dict]:
    return {lib["path"]: lib for lib in libraries}


def test_live_process_maps_give_libraries() -> None:
    child = spawn_loader(LIBSSL)
    try:
        ctx = ContextCollector().collect(pids=[child.pid], touched_paths=[], mapped_paths=[],
                                         exec_paths=[sys.executable], env={})
    finally:
        stop(child)
    assert CONTRACT_KEYS <= set(ctx)
    libs = by_path(ctx["libraries"])
    ssl = next(lib for lib in libs.values() if lib["soname"] == "libssl.so.3")
    assert ssl["build_id"] and ssl["package"] == "libssl3" and ssl["error"] is None
    assert any(lib["soname"] == "libc.so.6" for lib in libs.values())
    # Non-ELF mappings (locale archives, data) are not libraries:
    assert all(lib["error"] is None for lib in libs.values()), [
        lib for lib in libs.values() if lib["error"]]
    assert {("deb", "libssl3"), ("deb", "libc6")} <= {(p["ecosystem"], p["name"])
                                                      for p in ctx["packages"]}
    assert any(i["name"] == "python" for i in ctx["interpreters"])
    json.dumps(ctx)  # the context is plain JSON


def test_deleted_while_mapped(tmp_path) -> None:
    lib = tmp_path / "libdoomed.so.3"
    shutil.copy(LIBSSL, lib)
    child = spawn_loader(str(lib))
    try:
        os.unlink(lib)
        libs = by_path(ContextCollector().libraries([child.pid], [str(lib)], []))
    finally:
        stop(child)
    entry = libs[str(lib)]
    assert entry["deleted"] is True
    if os.geteuid() == 0:  # root can open /proc/PID/map_files/*: the content is still read
        assert entry["error"] is None and entry["soname"] == "libssl.so.3"
    else:
        assert entry["error"].startswith("deleted while mapped")


def test_deleted_mapped_path_without_live_process(tmp_path) -> None:
    gone = str(tmp_path / "libgone.so.1")
    [entry] = ContextCollector().libraries([], [gone], [])
    assert entry["path"] == gone and entry["error"].startswith("missing")


def test_bad_files_are_recorded_not_raised(tmp_path) -> None:
    text_so = tmp_path / "x.so"
    text_so.write_text("not elf")
    truncated = tmp_path / "libtrunc.so.1"
    truncated.write_bytes(open(LIBSSL, "rb").read()[:200])
    data = tmp_path / "data.bin"
    data.write_bytes(b"\0" * 10)
    ctx = ContextCollector().collect(
        pids=[2**22 + 4321], touched_paths=[str(data), "/nonexistent"],
        mapped_paths=[str(text_so), str(truncated), str(data)], exec_paths=[], env=None)
    libs = by_path(ctx["libraries"])
    assert libs[str(text_so)]["error"] == "not an ELF file (bad magic)"
    assert libs[str(truncated)]["error"].startswith("malformed ELF")
    assert str(data) not in libs  # not ELF and not named like a library
    assert ctx["env"] == {} and ctx["gpus"] == []


def test_env_is_redacted_and_packages_are_used_only() -> None:
    env = {"GITHUB_TOKEN": "ghp_abcdefghijklmnopqrstuvwxyz0123", "HOME": "/root",
           "DATABASE_URL": "postgres://u:p@h/db"}
    ctx = collect_run_context(pids=[], touched_paths=[psutil.__file__], mapped_paths=[],
                              exec_paths=[], env=env)
    assert ctx["env"] == {"GITHUB_TOKEN": REDACTED, "HOME": "/root",
                          "DATABASE_URL": f"postgres://u:{REDACTED}@h/db"}
    assert [p["name"] for p in ctx["packages"] if p["ecosystem"] == "pypi"] == ["psutil"]


def test_second_run_reuses_elf_cache() -> None:
    collector = ContextCollector()
    kwargs = dict(pids=[os.getpid()], touched_paths=[], mapped_paths=[LIBSSL], exec_paths=[],
                  env={})
    collector.collect(**kwargs)
    parses = collector.elf.parses
    assert parses > 0
    collector.collect(**kwargs)
    assert collector.elf.parses == parses


def test_gpu_samples_are_carried_and_sampling_is_safe() -> None:
    sample = gpu_sample([os.getpid()])
    assert sample["gpus"] == [] or "name" in sample["gpus"][0]
    ctx = collect_run_context(pids=[], touched_paths=[], mapped_paths=[], exec_paths=[],
                              env={}, gpu_samples=[sample])
    assert ctx["gpu_samples"] == [sample]


def test_parse_maps() -> None:
    text = (
        "7f00-7f10 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f10-7f20 r-xp 00010000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f30-7f40 r--p 00000000 00:00 0 \n"
        "7f40-7f50 rw-p 00000000 00:00 0 [heap]\n"
        "7f50-7f60 r--p 00000000 08:01 9 /tmp/my lib.so (deleted)\n"
    )
    maps = parse_maps(text, 42)
    assert [(m.path, m.deleted) for m in maps] == [
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", False), ("/tmp/my lib.so", True)]
    assert maps[1].map_files_path == "/proc/42/map_files/7f50-7f60"


@pytest.mark.parametrize("pids", [[], [1], [2**22 + 99]])
def test_any_pid_list_is_safe(pids: list[int]) -> None:
    ctx = collect_run_context(pids=pids, touched_paths=[], mapped_paths=[], exec_paths=[],
                              env=None)
    assert CONTRACT_KEYS <= set(ctx)


def test_non_utf8_library_path_is_escaped_with_b64(tmp_path) -> None:
    raw_dir = os.fsencode(str(tmp_path)) + b"/lib\xff.so.3"
    shutil.copy(LIBSSL, raw_dir)
    path = os.fsdecode(raw_dir)  # surrogate-escaped, as capture hands it over
    [entry] = ContextCollector().libraries([], [path], [])
    assert entry["soname"] == "libssl.so.3"
    assert entry["path"].endswith("/lib\\xff.so.3")
    assert base64.b64decode(entry["path_b64"]) == raw_dir
    json.dumps(entry, ensure_ascii=False).encode("utf-8")
