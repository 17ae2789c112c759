"""The daemon fingerprints a user's files as that user (issue 12, finding 4).

A real non-root user runs a command through a real daemon; the command swaps
its output for a symlink to a root-only file. The daemon (root) must record
nothing of that file, and `provtrace stale` through the daemon must not
change when root's file does.
"""

from __future__ import annotations

import json

import pytest

from .helpers import pt, stored_run

pytestmark = pytest.mark.privileged


def _as(user, *args, cwd):
    return pt(*args, cwd=cwd, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
              env={"PATH": "/usr/bin:/bin", "HOME": cwd})


def test_daemon_records_nothing_of_a_root_only_symlink_target(daemon, test_user, users_dir):
    _base, secret, work = users_dir
    r = _as(test_user, "run", "--socket", daemon["socket"], "--json-out", f"{work}/r.json", "--",
            "sh", "-c", f"echo mine > mine.csv; echo x > out.csv; rm out.csv; ln -s {secret} out.csv",
            cwd=str(work))
    assert r.returncode == 0, r.stderr
    run_id = json.loads(open(f"{work}/r.json").read())["run"]["id"]
    files = {f["path"]: f for f in stored_run(daemon["db"], run_id)["files"]}
    out, mine = files[f"{work}/out.csv"], files[f"{work}/mine.csv"]
    assert (out["sha256"], out["size_bytes"], out["mtime"]) == (None, None, None), out
    assert out["hash_skipped"] == "a symlink (not followed)"
    assert mine["sha256"] and mine["size_bytes"] == len("mine\n")  # the user's own file: hashed

    def stale() -> dict:
        s = _as(test_user, "stale", "--socket", daemon["socket"], "--json", run_id, cwd=str(work))
        assert s.returncode == 0, s.stderr
        return json.loads(s.stdout)

    before = stale()
    with open(secret, "a") as f:
        f.write("changed by root\n")
    assert stale() == before  # no oracle on root's file
