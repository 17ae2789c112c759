"""A setuid/setgid exec in a user's run is a boundary (issue 12): what the
privileged program reads never reaches the user's record.

Real daemon, real non-root user, Debian's real setgid `chage` (group shadow),
which reads /etc/shadow for `chage -l USER`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile

import pytest

from .helpers import PROVTRACE

pytestmark = pytest.mark.privileged


def test_setgid_exec_is_recorded_as_a_boundary(daemon, test_user):
    chage = "/usr/bin/chage"
    assert os.stat(chage).st_mode & stat.S_ISGID, "Debian's chage is setgid shadow"
    work = tempfile.mkdtemp(prefix="provtrace-priv-", dir="/tmp")
    os.chown(work, test_user.pw_uid, test_user.pw_gid)
    out = os.path.join(work, "run.json")
    r = subprocess.run(
        [PROVTRACE, "run", "--socket", daemon["socket"], "--json-out", out, "--",
         "sh", "-c", f"cat /etc/passwd > /dev/null; {chage} -l {test_user.pw_name}; cat /etc/hostname"],
        capture_output=True, text=True, timeout=180, cwd=work, user=test_user.pw_uid,
        group=test_user.pw_gid, extra_groups=[], env={"PATH": "/usr/bin:/bin", "HOME": work})
    assert r.returncode == 0, r.stderr
    assert "Password expires" in r.stdout  # chage really read /etc/shadow with its privileges
    doc = json.loads(open(out).read())
    paths = {f["path"] for f in doc["files"]}
    assert "/etc/passwd" in paths and "/etc/hostname" in paths  # the user's own reads, before and after
    assert "/etc/shadow" not in paths
    assert not any(p.startswith("/etc/shadow") for p in paths)
    priv = [p for p in doc["processes"] if p.get("privileged")]
    assert [p["exe"] for p in priv] == [chage]
    assert priv[0]["argv"] == [chage, "-l", test_user.pw_name]  # the user's own command line stays
    assert doc["run"]["gaps"].get("privileged_exec_not_followed") == 1
    # the other processes of the run are followed as before
    assert all(not p.get("privileged") for p in doc["processes"] if p["exe"] != chage)
