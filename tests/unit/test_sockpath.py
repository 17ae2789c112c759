"""The trusted-socket-path rule (sockpath.py) on real directories, owners and symlinks.

Needs root: directories are chown'ed to the real non-root user `provtrace-test`.
"""

from __future__ import annotations

import os

import pytest

from provtrace.tracer.serve.sockpath import UntrustedSocket, check_socket_path, open_socket_dir

pytestmark = pytest.mark.privileged
ROOT = frozenset({0})


@pytest.fixture
def base(root_tmp_dir):
    return root_tmp_dir


def _dir(*parts: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> str:
    path = os.path.join(*parts)
    os.mkdir(path)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def _refused(path: str, trusted=ROOT) -> str:
    with pytest.raises(UntrustedSocket) as err:
        check_socket_path(path, trusted)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_root_owned_dir_under_sticky_tmp_is_accepted(base):
    run = _dir(base, "run")
    assert check_socket_path(os.path.join(run, "provtrace.sock"), ROOT) == run


def test_user_owned_dir_anywhere_on_the_path_is_refused(base, test_user):
    user_dir = _dir(base, "u", uid=test_user.pw_uid, gid=test_user.pw_gid)
    below = _dir(user_dir, "run")  # root-owned, but its parent is the user's: it can be renamed away
    for path in (os.path.join(user_dir, "provtrace.sock"), os.path.join(below, "provtrace.sock")):
        msg = _refused(path)
        assert msg.startswith(f"{user_dir} is owned by uid {test_user.pw_uid}")


def test_writable_dirs_are_refused(base, test_user):
    world = _dir(base, "world", mode=0o777)
    assert _refused(os.path.join(world, "s.sock")).startswith(f"{world} is writable by others without the sticky bit")
    group = _dir(base, "group", mode=0o775, gid=test_user.pw_gid)
    assert f"{group} is writable by group {test_user.pw_gid}" in _refused(os.path.join(group, "s.sock"))
    root_group = _dir(base, "rootgroup", mode=0o775)  # only root's group may write: accepted
    assert check_socket_path(os.path.join(root_group, "s.sock"), ROOT) == root_group


def test_sticky_dir_is_an_ancestor_never_the_parent(base):
    sticky = _dir(base, "sticky", mode=0o1777)
    assert "writable by other users" in _refused(os.path.join(sticky, "s.sock"))
    inner = _dir(sticky, "run")
    assert check_socket_path(os.path.join(inner, "s.sock"), ROOT) == inner


def test_symlinks_are_followed_only_when_nobody_else_can_change_them(base, test_user):
    run = _dir(base, "run")
    os.symlink(run, os.path.join(base, "trusted-link"))  # root's, in a root-only dir
    assert check_socket_path(os.path.join(base, "trusted-link", "s.sock"), ROOT) == run
    sticky = _dir(base, "sticky", mode=0o1777)
    link = os.path.join(sticky, "user-link")
    os.symlink(run, link)
    os.lchown(link, test_user.pw_uid, test_user.pw_gid)  # its owner may repoint it
    assert _refused(os.path.join(link, "s.sock")).startswith(f"{link} is a symlink owned by uid {test_user.pw_uid}")
    user_dir = _dir(base, "u", uid=test_user.pw_uid)
    os.symlink(user_dir, os.path.join(base, "to-user"))  # a trusted link to an untrusted place
    assert _refused(os.path.join(base, "to-user", "s.sock")).startswith(f"{user_dir} is owned by uid")


def test_dotdot_walks_the_real_parent(base, test_user):
    """`..` leaves the directory walked into, not the text before it; every
    directory walked through must pass, even one left again by `..`."""
    run = _dir(base, "run")
    other = _dir(base, "other")
    assert check_socket_path(os.path.join(other, "..", "run", "s.sock"), ROOT) == run
    user_dir = _dir(base, "u", uid=test_user.pw_uid)
    assert _refused(os.path.join(user_dir, "..", "run", "s.sock")).startswith(f"{user_dir} is owned by uid")


def test_daemon_uid_is_trusted_when_configured(base, test_user):
    mine = _dir(base, "svc", uid=test_user.pw_uid)
    _refused(os.path.join(mine, "s.sock"))
    assert check_socket_path(os.path.join(mine, "s.sock"), frozenset({0, test_user.pw_uid})) == mine


def test_missing_directory_is_not_a_trust_error(base):
    with pytest.raises(FileNotFoundError):
        open_socket_dir(os.path.join(base, "nope", "s.sock"), ROOT)
