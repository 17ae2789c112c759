"""acting_as: a user's file-system view on the calling thread only, restored after."""

from __future__ import annotations

import os
import threading

import pytest

from provtrace.tracer.privs import Creds, PrivilegeError, acting_as, current_fs_ids


@pytest.fixture
def root_only(tmp_path):
    path = tmp_path / "root-only"
    path.write_text("secret\n")
    path.chmod(0o600)
    tmp_path.chmod(0o755)
    return path


@pytest.mark.privileged
def test_thread_reads_as_the_user_and_is_restored(root_only, test_user):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    creds = Creds.of_user(test_user.pw_uid)
    groups = os.getgroups()
    seen_elsewhere: list[str] = []
    inside, go_on = threading.Event(), threading.Event()

    def other_thread() -> None:
        inside.wait(10)
        seen_elsewhere.append(root_only.read_text())  # root's view, while the main thread is not
        go_on.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with acting_as(creds):
        assert current_fs_ids() == (test_user.pw_uid, test_user.pw_gid)
        with pytest.raises(PermissionError):
            root_only.read_text()
        inside.set()
        assert go_on.wait(10)
    t.join()
    assert seen_elsewhere == ["secret\n"]
    assert current_fs_ids() == (0, 0) and os.getgroups() == groups
    assert root_only.read_text() == "secret\n"


@pytest.mark.privileged
def test_restored_after_an_exception(test_user):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(RuntimeError), acting_as(Creds.of_user(test_user.pw_uid)):
        raise RuntimeError("boom")
    assert current_fs_ids() == (0, 0)


def test_creds_of_a_process_and_of_an_unknown_uid():
    me = Creds.of_process(os.getpid())
    assert (me.uid, me.gid) == (os.getuid(), os.getgid())
    assert Creds.of_user(2_000_000_123) == Creds(2_000_000_123, 65534, ())
    with pytest.raises(PrivilegeError):
        Creds.of_process(2**22 + 7)  # beyond pid_max: no such process


def test_own_uid_needs_no_privilege():
    with acting_as(Creds(os.geteuid(), os.getegid())):
        assert os.path.exists("/proc/self")
