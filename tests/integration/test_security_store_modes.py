"""Issue 12, finding 2: a store is private whatever the umask (root, a real non-root user)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess

import pytest

from provtrace.tracer.store import sqlite as S

from .helpers import pt

pytestmark = pytest.mark.privileged

SYSTEM_PY = "/usr/bin/python3"  # any user may run it (the venv's may sit in a private folder)


@pytest.fixture
def open_dir(root_tmp_dir):
    """A world-traversable folder in /tmp: only the store's own modes keep others out."""
    return root_tmp_dir


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write_some(store: S.Store) -> None:
    """One run, so the WAL and shared-memory files exist and hold records."""
    rid = store.new_run("r-modes", {"kind": "command", "argv": ["secret-arg"]})
    store.append(rid, S.PROCESS, {"pid": 1})
    store.flush()


def read_as_nobody(db: str) -> subprocess.CompletedProcess:
    """What a hostile local user tries: SQLite's immutable URI, bypassing the daemon."""
    code = ("import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '?immutable=1', uri=True); "
            "print(c.execute('SELECT count(*) FROM records').fetchone()[0])")
    return subprocess.run([SYSTEM_PY, "-c", code, db], user="nobody", group="nogroup",
                          capture_output=True, text=True, timeout=60)


def test_new_store_is_private_under_a_loose_umask(open_dir):
    store_dir = os.path.join(open_dir, "store")  # created by the store itself
    db = os.path.join(store_dir, "provtrace.db")
    with umask(0o022):
        store = S.Store(db)
        try:
            write_some(store)
            assert os.path.exists(db + "-wal") and os.path.exists(db + "-shm")
            modes = {p: mode(p) for p in (store_dir, db, db + "-wal", db + "-shm")}
        finally:
            store.close()
    assert modes == {store_dir: 0o700, db: 0o600, db + "-wal": 0o600, db + "-shm": 0o600}


def test_another_user_cannot_read_the_store_file(open_dir):
    """In a folder anyone can enter (a --db the user chose), the files alone keep others out."""
    db = os.path.join(open_dir, "provtrace.db")
    with umask(0o022):
        store = S.Store(db)
        write_some(store)
        try:
            r = read_as_nobody(db)  # while the WAL and -shm are live
        finally:
            store.close()
    assert r.returncode != 0 and "unable to open database file" in r.stderr, r.stdout + r.stderr
    assert mode(open_dir) == 0o755  # a folder provtrace does not own is left as it was
    assert read_as_nobody(db).returncode != 0  # closed and checkpointed: still private


def test_loose_store_is_tightened_with_one_warning_per_path(open_dir, monkeypatch, caplog):
    """An older provtrace's 0755 directory and 0644 files, as /var/lib/provtrace was."""
    monkeypatch.setattr(S, "SYSTEM_DIR", open_dir)  # root's default store directory, for this test
    db = os.path.join(open_dir, "provtrace.db")
    with umask(0o022):
        store = S.Store(db)
        write_some(store)
        store.close()
        for p in (db, db + "-wal", db + "-shm"):
            open(p, "ab").close()  # a companion left behind by a crash
            os.chmod(p, 0o644)
    os.chmod(open_dir, 0o755)
    assert read_as_nobody(db).returncode == 0  # the hole: loose files are readable
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="provtrace.tracer.store.private"):
        S.Store(db).close()
    assert {p: mode(p) for p in (open_dir, db, db + "-wal", db + "-shm") if os.path.exists(p)} == \
        {open_dir: 0o700, db: 0o600, **{p: 0o600 for p in (db + "-wal", db + "-shm") if os.path.exists(p)}}
    tightened = [r.getMessage() for r in caplog.records if "store-mode-tightened" in r.getMessage()]
    assert f"event=store-mode-tightened path={open_dir} old=755 new=700" in tightened
    assert f"event=store-mode-tightened path={db} old=644 new=600" in tightened
    assert len(tightened) == 4  # directory, database, -wal, -shm: one line each
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="provtrace.tracer.store.private"):
        S.Store(db).close()
    assert not caplog.records  # already private: nothing to say


def test_cli_tightens_a_loose_store_and_says_so(open_dir):
    """The real CLI, as root: an existing 0644 store is 0600 after a run, with a warning line."""
    db = os.path.join(open_dir, "loose.db")
    with umask(0o022):
        S.Store(db).close()
    os.chmod(db, 0o644)
    r = pt("run", "--backend", "ptrace", "--db", db, "--", "true", cwd=open_dir)
    assert r.returncode == 0, r.stderr
    assert mode(db) == 0o600
    lines = [ln for ln in r.stderr.splitlines() if "store-mode-tightened" in ln]
    assert lines == [f"provtrace: WARNING provtrace.tracer.store.private "
                     f"event=store-mode-tightened path={db} old=644 new=600"], r.stderr
