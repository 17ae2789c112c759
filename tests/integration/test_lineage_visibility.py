"""Lineage through the daemon keeps to what the caller may see (issue 12, finding 5).

A real daemon, root and the real non-root user `provtrace-test` (U):
root makes a shared file through a temporary name and copies it into a
root-only directory, again through a temporary name; U reads the same shared
file. U's lineage of it, both ways, names none of root's runs, pids, paths or
temporary names; root's lineage still shows everything. U's exports through
the daemon number file versions as U's lineage does, with the same cut.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import networkx as nx
import pytest

from .helpers import pt

pytestmark = pytest.mark.privileged


@pytest.fixture
def layout(test_user):
    base = tempfile.mkdtemp(prefix="provtrace-lineage-vis-", dir="/tmp")
    os.chmod(base, 0o755)
    dirs = {"shared": os.path.join(base, "shared"), "root": os.path.join(base, "root-only"),
            "user": os.path.join(base, "user")}
    os.mkdir(dirs["shared"], 0o755)
    os.mkdir(dirs["root"], 0o700)
    os.mkdir(dirs["user"], 0o700)
    os.chown(dirs["user"], test_user.pw_uid, test_user.pw_gid)
    yield dirs
    shutil.rmtree(base)


def _run_as_user(user, *args, cwd):
    r = subprocess.run(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", f"HOME={cwd}", *args], cwd=cwd,
                       user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _lineage(run, path: str, direction: str, sock: str) -> dict:
    return json.loads(run("lineage", path, f"--{direction}", "--socket", sock, "--json"))


def test_user_lineage_of_a_shared_file_hides_other_users(daemon, layout, test_user):
    from .helpers import PROVTRACE

    sock = daemon["socket"]
    shared = os.path.join(layout["shared"], "data.txt")
    root_out = os.path.join(layout["root"], "out.txt")
    user_out = os.path.join(layout["user"], "mine.txt")
    root_script = (f"echo secret-ish > {shared}.tmp && mv {shared}.tmp {shared} && chmod 644 {shared} && "
                   f"cat {shared} > {root_out}.tmp && mv {root_out}.tmp {root_out}")
    r = pt("run", "--socket", sock, "--", "sh", "-c", root_script, check=True)
    assert r.returncode == 0
    _run_as_user(test_user, PROVTRACE, "run", "--socket", sock, "--", "sh", "-c", f"cat {shared} > {user_out}",
                 cwd=layout["user"])

    def as_user(*args):
        return _run_as_user(test_user, PROVTRACE, *args, cwd=layout["user"])

    def as_root(*args):
        return pt(*args, check=True).stdout

    root_runs = {r["id"] for r in json.loads(as_root("runs", "--socket", sock, "--json")) if r["uid"] == 0}
    user_runs = {r["id"] for r in json.loads(as_user("runs", "--socket", sock, "--json"))}
    assert root_runs and user_runs  # (other tests' kernels on this host may add sessions to both)
    root_names = (root_out, f"{root_out}.tmp", f"{shared}.tmp", layout["root"])

    for direction in ("upstream", "downstream"):
        mine = _lineage(as_user, shared, direction, sock)
        text = json.dumps(mine)
        assert not any(rid in text for rid in root_runs), (direction, text)
        assert not any(name in text for name in root_names), (direction, text)
        procs = [n for n in mine["nodes"] if n["kind"] == "process"]
        assert {n["run"] for n in procs} <= user_runs
        assert not any(e.get("run") in root_runs for e in mine["edges"])
    down = _lineage(as_user, shared, "downstream", sock)
    assert user_out in {n.get("path") for n in down["nodes"]}  # the user's own lineage is all there
    up = _lineage(as_user, user_out, "upstream", sock)
    assert shared in {n.get("path") for n in up["nodes"]}
    assert not any(rid in json.dumps(up) for rid in root_runs)  # ... and stops at root's writer

    # the TUI's daemon source makes the same call, and shows the same cut
    tui = _run_as_user(test_user, sys.executable, "-c", textwrap.dedent(f"""
        import json
        from provtrace.tui.source import DaemonSource
        src = DaemonSource({sock!r})
        out = {{d: [(n.id, n.label) for n in src.lineage({shared!r}, d, 10).nodes.values()]
               for d in ("upstream", "downstream")}}
        print(json.dumps(out))
    """), cwd=layout["user"])
    seen = json.loads(tui)
    assert any(user_out in label for _, label in seen["downstream"])
    assert not any(rid in tui for rid in root_runs) and not any(name in tui for name in root_names)

    # exports bind to file versions as the caller sees them (issue 14): for U the shared
    # file is content from outside U's runs (no writer run), not root's rename
    for fmt in ("prov-xml", "prov-json", "graphml", "dot"):
        text = as_user("export", "--all", "--socket", sock, "--format", fmt, "-o", "-")
        assert not any(rid in text for rid in root_runs) and not any(name in text for name in root_names), fmt
    g = nx.read_graphml(io.BytesIO(as_user("export", "--all", "--socket", sock, "--format", "graphml",
                                           "-o", "-").encode()))
    (seen_version,) = [n["id"] for n in _lineage(as_user, shared, "upstream", sock)["nodes"] if n.get("path") == shared]
    assert g.nodes[seen_version]["how"] == "outside" and "run" not in g.nodes[seen_version]
    assert g.has_edge(seen_version, f"file:{shared}")

    everything_down = _lineage(as_root, shared, "downstream", sock)
    paths = {n.get("path") for n in everything_down["nodes"]}
    assert {root_out, f"{root_out}.tmp", user_out} <= paths
    assert {n["run"] for n in everything_down["nodes"] if n["kind"] == "process"} >= user_runs
    everything_up = _lineage(as_root, shared, "upstream", sock)
    assert f"{shared}.tmp" in {n.get("path") for n in everything_up["nodes"]}
    assert any(e.get("run") in root_runs for e in everything_up["edges"] if e["rel"] == "renamed")
