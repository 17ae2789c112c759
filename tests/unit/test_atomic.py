"""atomic_write: whole files, random temporary names, symlinks replaced and never followed."""

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
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    dest = tmp_path / "out.dot"
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
