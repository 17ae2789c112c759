"""ELF reading against real libraries on this machine, checked with readelf."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from provtrace.tracer.context.dpkg import DpkgIndex, merge_twins
from provtrace.tracer.context.elf import ElfCache, libraries_for, looks_like_shared_object

LIBDIR = "/lib/x86_64-linux-gnu"
REAL_LIBS = ["libc.so.6", "libssl.so.3", "libsqlite3.so.0"]

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def readelf_build_id(path: str) -> str:
    m = re.search(r"Build ID:\s*([0-9a-f]+)", readelf("-n", path))
    assert m, f"readelf shows no build-id for {path}"
    return m.group(1)


def readelf_dynamic(path: str) -> tuple[str | None, list[str]]:
    text = readelf("-d", path)
    soname = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", text)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text)
    return (soname.group(1) if soname else None), needed


def readelf_version_needs(path: str) -> set[str]:
    text = readelf("-V", path)
    section = text.split(".gnu.version_r", 1)[1] if ".gnu.version_r" in text else ""
    return set(re.findall(r"Name:\s+(\S+)\s+Flags", section))


@pytest.fixture(scope="module")
def cache() -> ElfCache:
    return ElfCache()


@pytest.mark.parametrize("name", REAL_LIBS)
def test_real_library_matches_readelf(cache: ElfCache, name: str) -> None:
    path = os.path.join(LIBDIR, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not installed")
    info = cache.read(path)
    assert info.error is None
    assert info.build_id == readelf_build_id(path)
    soname, needed = readelf_dynamic(path)
    assert info.soname == soname == name
    assert list(info.needed) == needed
    assert set(info.symbol_versions) == readelf_version_needs(path)
    assert any(v.startswith("GLIBC_2.") for v in info.symbol_versions) or name == "libc.so.6"


def test_libc_record_has_contract_fields_and_debian_owner(cache: ElfCache) -> None:
    [entry] = libraries_for([f"{LIBDIR}/libc.so.6"], cache)
    assert {"path", "soname", "build_id", "package", "needed", "symbol_versions",
            "error"} <= set(entry)
    assert entry["package"] == "libc6"
    assert entry["needed"] == ["ld-linux-x86-64.so.2"]


def test_usr_merge_path_finds_owner(cache: ElfCache) -> None:
    # dpkg lists /lib/x86_64-linux-gnu/libssl.so.3; maps show the /usr/lib twin.
    assert cache.record(f"/usr{LIBDIR}/libssl.so.3")["package"] == "libssl3"
    assert merge_twins("/lib/x/y.so") == ["/lib/x/y.so", "/usr/lib/x/y.so"]
    assert merge_twins("/usr/lib/x/y.so") == ["/usr/lib/x/y.so", "/lib/x/y.so"]
    assert merge_twins("/opt/a") == ["/opt/a"]


def test_symlinked_soname_resolves_owner(cache: ElfCache) -> None:
    path = f"{LIBDIR}/libsqlite3.so.0"  # a symlink to libsqlite3.so.0.8.6
    if not os.path.exists(path):
        pytest.skip("libsqlite3 not installed")
    assert cache.record(path)["package"] == "libsqlite3-0"


def test_parsed_once_per_identity(tmp_path) -> None:
    cache = ElfCache(DpkgIndex(info_dir=str(tmp_path / "no-dpkg")))
    src = f"{LIBDIR}/libc.so.6"
    link = tmp_path / "libc-link.so.6"
    link.symlink_to(src)
    for _ in range(500):
        cache.read(src)
    info = cache.read(str(link))
    assert cache.parses == 1
    assert info.path == str(link)  # same parse, reported under the asked-for path
    assert info.build_id == readelf_build_id(src)


def test_changed_file_is_parsed_again(tmp_path) -> None:
    cache = ElfCache(DpkgIndex(info_dir=str(tmp_path / "no-dpkg")))
    copy = tmp_path / "libssl.so.3"
    shutil.copy(f"{LIBDIR}/libssl.so.3", copy)
    first = cache.read(str(copy))
    copy.write_bytes(b"not an elf any more")
    os.utime(copy, ns=(1, 1))
    second = cache.read(str(copy))
    assert first.error is None and second.error is not None
    assert cache.parses == 2


def test_truncated_file_gives_recorded_error(tmp_path) -> None:
    data = open(f"{LIBDIR}/libssl.so.3", "rb").read()
    for size in (10, 100, 3000, len(data) // 2):
        path = tmp_path / f"trunc{size}.so"
        path.write_bytes(data[:size])
        entry = ElfCache().record(str(path))
        assert entry["error"] and entry["error"].startswith("malformed ELF"), (size, entry)
        assert entry["build_id"] is None or size == len(data) // 2


def test_non_elf_named_so_gives_recorded_error(tmp_path) -> None:
    path = tmp_path / "x.so"
    path.write_text("this is plain text, not ELF\n")
    entry = ElfCache().record(str(path))
    assert entry["error"] == "not an ELF file (bad magic)"
    assert entry["soname"] is None and entry["build_id"] is None


def test_deleted_after_open_gives_missing(tmp_path) -> None:
    path = tmp_path / "libgone.so.1"
    shutil.copy(f"{LIBDIR}/libssl.so.3", path)
    with open(path, "rb") as held:  # still open (like a mapping) when deleted
        os.unlink(path)
        entry = ElfCache().record(str(path))
        # The content is still reachable through the open descriptor:
        via_fd = ElfCache().read(str(path), open_path=f"/proc/self/fd/{held.fileno()}")
    assert entry["error"].startswith("missing")
    assert via_fd.error is None and via_fd.soname == "libssl.so.3"


def test_unreadable_gives_recorded_error() -> None:
    # A directory nobody can traverse into (pytest's tmp root is 0700).
    directory = tempfile.mkdtemp(prefix="provtrace-elf-")
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "libsecret.so")
        shutil.copy(f"{LIBDIR}/libssl.so.3", path)
        os.chmod(path, 0)
        if os.geteuid() != 0:
            assert ElfCache().record(path)["error"] == "unreadable: Permission denied"
            return
        if shutil.which("setpriv") is None:
            pytest.skip("root reads any file, and setpriv is missing to drop privileges")
        # Root reads any file: ask as nobody, in a child process. stat() works
        # there (the directory is 0755), so this is open() failing.
        code = ("import sys; from provtrace.tracer.context.elf import ElfCache; "
                "print(ElfCache().record(sys.argv[1])['error'])")
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", code, path],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "unreadable: Permission denied"
    finally:
        shutil.rmtree(directory)


def test_directory_gives_recorded_error(tmp_path) -> None:
    assert ElfCache().record(str(tmp_path))["error"] == "not a regular file"


def test_shared_object_names() -> None:
    assert looks_like_shared_object("/x/libc.so.6")
    assert looks_like_shared_object("/x/libfoo.so")
    assert looks_like_shared_object("/x/_json.cpython-311-x86_64-linux-gnu.so")
    assert looks_like_shared_object("/x/libz.so.1.2.13")
    assert not looks_like_shared_object("/x/data.csv")
    assert not looks_like_shared_object("/x/so.txt")


def test_fifo_and_device_are_not_opened(tmp_path) -> None:
    fifo = tmp_path / "libpipe.so"
    os.mkfifo(fifo)  # opening it for reading would block forever
    assert ElfCache().record(str(fifo))["error"] == "not a regular file"
    assert ElfCache().record("/dev/zero")["error"] == "not a regular file"
