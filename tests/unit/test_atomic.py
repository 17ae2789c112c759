"""atomic_write: whole files, random temporary names; planted symlinks replaced, devices written into."""

from __future__ import annotations

import os
import stat

import pytest

from provtrace.tracer.atomic import atomic_write


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_new_file_gets_the_mode_open_would_give(tmp_path, umask_027):
    dest = tmp_path / "out.json"
    atomic_write(str(dest), b"{}\n")
    assert dest.read_bytes() == b"{}\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # 0666 less the umask, not mkstemp's 0600
    assert os.listdir(tmp_path) == ["out.json"]


def test_symlink_at_dest_is_replaced_not_written_through(tmp_path):
    """In a folder others may write to (like /tmp), a symlink may be planted: replaced."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    dest = shared / "out.dot"
    dest.symlink_to(victim)
    atomic_write(str(dest), b"digraph {}\n")
    assert victim.read_text() == "keep me"
    assert not dest.is_symlink() and dest.read_bytes() == b"digraph {}\n"


def test_planted_predictable_temp_names_are_ignored(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    dest = tmp_path / "out.json"
    for name in (f"out.json.tmp{os.getpid()}", "out.json.tmp", ".out.json.tmp"):
        (tmp_path / name).symlink_to(victim)
    atomic_write(str(dest), b"new")
    assert victim.read_text() == "keep me" and dest.read_bytes() == b"new"


def test_failure_leaves_the_old_file_and_no_temp(tmp_path):
    dest = tmp_path / "out"
    dest.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(str(dest), "not bytes")  # type: ignore[arg-type]
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["out"]
    with pytest.raises(FileNotFoundError):
        atomic_write(str(tmp_path / "no" / "such" / "out"), b"x")


def test_own_symlink_in_a_private_folder_is_followed(tmp_path):
    """Nobody else could have made it: `-o latest.json` writes where latest.json points."""
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "r1.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to("runs/r1.json")
    atomic_write(str(link), b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_a_device_is_written_into_never_replaced(tmp_path):
    """`-o /dev/null` as root must leave /dev/null a device (a null device made here)."""
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    atomic_write(str(null), b"discarded")
    assert stat.S_ISCHR(os.lstat(null).st_mode) and null.stat().st_rdev == os.makedev(1, 3)
    assert os.listdir(tmp_path) == ["null"]  # no temporary file left beside it


def test_a_fifo_gets_the_bytes_and_a_directory_is_refused(tmp_path):
    import threading  # noqa: PLC0415

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic_write(str(fifo), b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(IsADirectoryError):
        atomic_write(str(tmp_path), b"x")
