"""`provtrace reproduce` on real traced runs: re-executed through the real run path
(eBPF here as root, the daemon for a user), then compared with the original. One
reproduce that succeeds, and one that fails for each cause: an input changed, a
package upgraded in a real venv, a shared library swapped, a nondeterministic
output (and --tolerate letting that one pass), a secret that could not be
restored; a notebook re-run and compared cell by cell; and the runs that cannot
be re-run, each refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbformat.v4 import new_code_cell, new_notebook

from . import helpers

pytestmark = pytest.mark.privileged

PIPELINE = "sort in.csv > sorted.csv && wc -l < sorted.csv > count.txt && echo done"
DIFFERS = 4


@pytest.fixture
def db(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to trace with eBPF")
    return str(tmp_path / "store.db")


def _env(work, **extra) -> dict:
    """A small, known environment for the original run."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", **extra}


def _run(db, work, *argv, env=None) -> str:
    """Traces argv in work; returns the run id."""
    r = helpers.pt("run", "--db", db, "--", *argv, cwd=work, env=env or _env(work))
    assert r.returncode == 0, r.stderr
    return json.loads(helpers.pt("runs", "--db", db, "--json", check=True).stdout)[-1]["id"]


def _reproduce(db, run_id, *opts, cwd, env=None):
    """(exit code, the provtrace.reproduce/1 document, stderr) of `reproduce --json`."""
    r = helpers.pt("reproduce", run_id, "--db", db, "--json", *opts, cwd=cwd, env=env)
    assert r.returncode in (0, DIFFERS), r.stderr
    return r.returncode, json.loads(r.stdout), r.stderr


def _by_key(doc) -> dict:
    return {(d["what"], d["key"]): d for d in doc["differences"]}


def _one_line_error(r, *needles) -> None:
    assert r.returncode not in (0, DIFFERS), r.stdout
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_a_deterministic_pipeline_reproduces(db, work, tmp_path):
    (work / "in.csv").write_text("b,2\na,1\n")
    run_id = _run(db, str(work), "sh", "-c", PIPELINE)
    # from another folder, with another environment: argv, cwd and environment are the run's
    text = helpers.pt("reproduce", run_id, "--db", db, cwd=tmp_path)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "REPRODUCED: same inputs (1), outputs (2)" in text.stdout and "done" in text.stdout
    code, doc, err = _reproduce(db, run_id, cwd=tmp_path)
    assert code == 0 and doc["schema"] == "provtrace.reproduce/1"
    assert doc["reproduced"] is True and doc["differences"] == [] and doc["tolerated"] == []
    assert doc["original"]["id"] == run_id and doc["rerun"]["id"] != run_id
    assert doc["rerun"]["cwd"] == str(work) and doc["rerun"]["argv"] == ["sh", "-c", PIPELINE]
    assert doc["rerun"]["backend"] == "ebpf" and doc["rerun"]["exit_code"] == 0
    assert doc["environment"] == {"restored": True, "variables": 3, "secrets_missing": [],
                                  "secrets_from_env": []}
    assert "done" in err, "with --json the command's own output goes to stderr"
    runs = json.loads(helpers.pt("runs", "--db", db, "--json", check=True).stdout)
    assert runs[-1]["id"] == doc["rerun"]["id"] and runs[-1]["label"] == f"reproduce {run_id}"


def test_an_input_changed_between_runs(db, work):
    (work / "in.csv").write_text("b,2\na,1\n")
    run_id = _run(db, str(work), "sh", "-c", PIPELINE)
    with open(work / "in.csv", "a") as f:
        f.write("c,3\n")
    code, doc, _ = _reproduce(db, run_id, cwd=work)
    assert code == DIFFERS and doc["reproduced"] is False
    diffs = _by_key(doc)
    assert set(diffs) == {("input", f"{work}/in.csv"), ("output", f"{work}/sorted.csv"),
                          ("output", f"{work}/count.txt")}
    changed = diffs[("input", f"{work}/in.csv")]
    assert changed["change"] == "content" and changed["cause"] == "input_changed"
    assert changed["original"]["sha256"] != changed["rerun"]["sha256"]
    for out in ("sorted.csv", "count.txt"):
        d = diffs[("output", f"{work}/{out}")]
        assert d["cause"] == "input_changed" and d["because"] == [f"input {work}/in.csv"]
    text = helpers.pt("reproduce", run_id, "--db", db, cwd=work)
    assert text.returncode == DIFFERS and "DIFFERS: 3 differences" in text.stdout
    assert "likely cause: input changed" in text.stdout


def test_nondeterministic_output_and_tolerate(db, work):
    (work / "in.csv").write_text("b,2\na,1\n")
    run_id = _run(db, str(work), "sh", "-c", "sort in.csv > sorted.csv && date +%s%N > stamp.txt")
    code, doc, _ = _reproduce(db, run_id, cwd=work)
    assert code == DIFFERS
    (d,) = doc["differences"]  # sorted.csv reproduced; only the timestamp differs
    assert (d["what"], d["key"], d["change"]) == ("output", f"{work}/stamp.txt", "content")
    assert d["cause"] == "nondeterministic" and d["because"] == []
    text = helpers.pt("reproduce", run_id, "--db", db, cwd=work)
    assert "likely cause: nondeterministic output" in text.stdout
    code, doc, _ = _reproduce(db, run_id, "--tolerate", "stamp.*", cwd=work)
    assert code == 0 and doc["reproduced"] is True
    assert doc["tolerated"] == [{"path": f"{work}/stamp.txt", "cell": None, "glob": "stamp.*"}]
    code, doc, _ = _reproduce(db, run_id, "--tolerate", "/nowhere/*", cwd=work)
    assert code == DIFFERS and doc["tolerated"] == []


@pytest.fixture(scope="module")
def tabulate_venv(tmp_path_factory):
    """A venv of Debian's python3 with tabulate 0.8.10 pinned (pure Python, no dependencies)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to trace")
    where = tmp_path_factory.mktemp("reprovenv") / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(where)], check=True, timeout=120)
    _pip(where, "tabulate==0.8.10")
    return where


def _pip(venv, requirement: str) -> None:
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", requirement],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot install {requirement} here: {r.stderr.strip()[-300:]}")


def test_a_package_upgraded_between_runs(db, work, tabulate_venv):
    (work / "table.py").write_text(textwrap.dedent("""\
        import tabulate
        with open("table.txt", "w") as f:
            f.write(tabulate.tabulate([["x", 1]]) + "\\n" + tabulate.__version__ + "\\n")
        """))
    run_id = _run(db, str(work), str(tabulate_venv / "bin/python"), "table.py")
    _pip(tabulate_venv, "tabulate==0.10.0")
    try:
        code, doc, _ = _reproduce(db, run_id, cwd=work)
    finally:
        _pip(tabulate_venv, "tabulate==0.8.10")
    assert code == DIFFERS
    diffs = _by_key(doc)
    pkg = diffs[("package", "pypi:tabulate")]
    assert (pkg["change"], pkg["original"], pkg["rerun"], pkg["cause"]) == \
        ("version", "0.8.10", "0.10.0", "package_changed")
    out = diffs[("output", f"{work}/table.txt")]
    assert out["cause"] == "package_changed" and "package pypi:tabulate" in out["because"]
    assert not [d for d in doc["differences"] if d["what"] == "input"]


def _greeting_lib(work, greeting: str) -> None:
    """libgreet.so.1, a real ELF shared library (gcc gives it a new build-id per content)."""
    (work / "greet.c").write_text("const char *greeting(void) { return GREETING; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DGREETING="{greeting}"', "-Wl,-soname,libgreet.so.1",
                    "-o", str(work / "libgreet.so.1"), str(work / "greet.c")], check=True, timeout=120)


def test_a_shared_library_swapped_between_runs(db, work):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    _greeting_lib(work, "hello")
    (work / "main.c").write_text(textwrap.dedent("""\
        #include <stdio.h>
        const char *greeting(void);
        int main(void) { FILE *f = fopen("out.txt", "w"); fprintf(f, "%s\\n", greeting()); return fclose(f); }
        """))
    subprocess.run(["gcc", "-o", str(work / "main"), str(work / "main.c"), f"-L{work}", "-l:libgreet.so.1",
                    "-Wl,-rpath,$ORIGIN"], check=True, timeout=120)
    run_id = _run(db, str(work), "./main")
    _greeting_lib(work, "bonjour")
    code, doc, _ = _reproduce(db, run_id, cwd=work)
    assert code == DIFFERS
    diffs = _by_key(doc)
    lib = diffs[("library", "libgreet.so.1")]
    assert lib["change"] == "build_id" and lib["cause"] == "library_changed"
    assert lib["original"]["build_id"] != lib["rerun"]["build_id"]
    out = diffs[("output", f"{work}/out.txt")]
    assert out["cause"] == "library_changed" and out["because"] == ["library libgreet.so.1"]
    assert (work / "out.txt").read_text() == "bonjour\n"


def test_a_secret_is_named_and_can_be_supplied(db, work, tmp_path):
    """The stored environment is redacted: the secret is left unset and named, or
    taken from the caller's environment when asked; it never appears in the output."""
    (work / "in.csv").write_text("a\n")
    script = "sort in.csv > sorted.csv; printenv API_TOKEN > token.txt; exit 0"
    run_id = _run(db, str(work), "sh", "-c", script, env=_env(work, API_TOKEN="hunter2-secret"))
    mine = _env(tmp_path)
    code, doc, err = _reproduce(db, run_id, cwd=tmp_path, env=mine)
    assert code == DIFFERS and doc["environment"]["secrets_missing"] == ["API_TOKEN"]
    assert "not restored" in err and "API_TOKEN" in err
    (d,) = doc["differences"]
    assert d["key"] == f"{work}/token.txt" and d["cause"] == "nondeterministic"
    assert d["possible"] == ["environment variable API_TOKEN (not restored)"]
    r = helpers.pt("reproduce", run_id, "--db", db, "--json", "--secret-env", "API_*", cwd=tmp_path,
                   env={**mine, "API_TOKEN": "hunter2-secret"})
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["environment"]["secrets_from_env"] == ["API_TOKEN"] and doc["environment"]["secrets_missing"] == []
    assert "hunter2" not in r.stdout + r.stderr
    assert (work / "token.txt").read_text() == "hunter2-secret\n"


def test_runs_that_cannot_be_re_run_are_refused_in_one_line(db, work, tmp_path):
    gone = work / "gone"
    gone.mkdir()
    run_id = _run(db, str(gone), "sh", "-c", "echo x > x.txt")
    _one_line_error(helpers.pt("reproduce", "no-such-run", "--db", db, cwd=tmp_path), "no run 'no-such-run'")
    shutil.rmtree(gone)
    _one_line_error(helpers.pt("reproduce", run_id, "--db", db, cwd=tmp_path), str(gone), "no longer exists")
    run_id = _run(db, str(work), "sh", "-c", "true", "--password=hunter2")
    _one_line_error(helpers.pt("reproduce", run_id, "--db", db, cwd=tmp_path), "redacted")


def _notebook(path: Path) -> None:
    nb = new_notebook(cells=[
        new_code_cell("rows = sorted(open('in.txt').read().split())\nopen('a.txt', 'w').write('\\n'.join(rows))"),
        new_code_cell("import time\nopen('stamp.txt', 'w').write(str(time.time_ns()))"),
        new_code_cell("open('b.txt', 'w').write(open('a.txt').read().upper())"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, str(path))


def test_a_notebook_is_re_run_and_compared_cell_by_cell(db, work, tmp_path):
    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("kernelspec python3 is not installed (setup.sh installs it)")
    (work / "in.txt").write_text("3\n1\n2\n")
    _notebook(work / "nb.ipynb")
    helpers.pt("notebook", "run", str(work / "nb.ipynb"), "--db", db, cwd=tmp_path, check=True)
    run_id = json.loads(helpers.pt("runs", "--db", db, "--json", check=True).stdout)[-1]["id"]

    code, doc, _ = _reproduce(db, run_id, cwd=tmp_path)
    assert code == DIFFERS and doc["rerun"]["kind"] == "notebook"
    assert [(c["index"], c["status"]) for c in doc["cells"]] == [(0, "reproduced"), (1, "differs"),
                                                                 (2, "reproduced")]
    (d,) = doc["differences"]
    assert (d["what"], d["key"], d["cell"]) == ("output", f"{work}/stamp.txt", doc["cells"][1]["id"])
    assert d["cause"] == "nondeterministic"

    with open(work / "in.txt", "a") as f:
        f.write("0\n")
    code, doc, _ = _reproduce(db, run_id, "--tolerate", "stamp.txt", cwd=tmp_path)
    assert code == DIFFERS
    assert [c["status"] for c in doc["cells"]] == ["differs", "reproduced", "differs"]
    first, _, last = (c["id"] for c in doc["cells"])
    diffs = {(d["cell"], d["what"], d["key"]): d for d in doc["differences"]}
    assert set(diffs) == {(first, "input", f"{work}/in.txt"), (first, "output", f"{work}/a.txt"),
                          (last, "input", f"{work}/a.txt"), (last, "output", f"{work}/b.txt")}
    assert {d["cause"] for d in diffs.values()} == {"input_changed"}
    assert diffs[(last, "output", f"{work}/b.txt")]["because"] == [f"input {work}/a.txt"]
    assert [t["path"] for t in doc["tolerated"]] == [f"{work}/stamp.txt"]
    text = helpers.pt("reproduce", run_id, "--db", db, "--tolerate", "stamp.txt", cwd=tmp_path)
    assert "cells:" in text.stdout and "reproduced" in text.stdout


# ---- through a daemon: a user's own runs only; sessions are not commands ----------

@pytest.fixture
def user_work(test_user):
    work = Path(tempfile.mkdtemp(prefix="provtrace-repro-", dir="/tmp"))
    os.chown(work, test_user.pw_uid, test_user.pw_gid)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def test_through_the_daemon_a_user_reproduces_only_its_own_runs(daemon, test_user, user_work):
    sock = ("--socket", daemon["socket"])

    def as_user(*args):
        return subprocess.run([helpers.PROVTRACE, *args], capture_output=True, text=True, timeout=300,
                              user=test_user.pw_uid, group=test_user.pw_gid, extra_groups=[],
                              env={"PATH": "/usr/bin:/bin", "HOME": str(user_work)}, cwd="/tmp")

    r = subprocess.run([helpers.PROVTRACE, "run", *sock, "--", "sh", "-c", "printf 'b\\na\\n' > in.txt"],
                       user=test_user.pw_uid, group=test_user.pw_gid, extra_groups=[], cwd=str(user_work),
                       env={"PATH": "/usr/bin:/bin", "HOME": str(user_work)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([helpers.PROVTRACE, "run", *sock, "--json-out", str(user_work / "r.json"), "--",
                        "sh", "-c", "sort in.txt > out.txt"], user=test_user.pw_uid, group=test_user.pw_gid,
                       extra_groups=[], cwd=str(user_work), capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(user_work)})
    assert r.returncode == 0, r.stderr
    mine = json.loads((user_work / "r.json").read_text())["run"]["id"]

    got = as_user("reproduce", mine, *sock, "--json")
    assert got.returncode == 0, got.stdout + got.stderr
    doc = json.loads(got.stdout)
    assert doc["reproduced"] and doc["rerun"]["cwd"] == str(user_work)
    again = helpers.stored_run(daemon["db"], doc["rerun"]["id"])  # traced by the daemon, stored as the user
    assert again["run"]["uid"] == test_user.pw_uid and again["run"]["backend"] == "ebpf"

    helpers.pt("run", *sock, "--", "true", cwd="/tmp", check=True)
    runs = json.loads(helpers.pt("runs", "--db", daemon["db"], "--json", check=True).stdout)
    root_run = [r["id"] for r in runs if r["uid"] == 0][-1]
    _one_line_error(as_user("reproduce", root_run, *sock), root_run)
    # root sees the user's run in the store, but is not the user: refused by name
    _one_line_error(helpers.pt("reproduce", mine, "--db", daemon["db"], cwd="/tmp"), test_user.pw_name)


def test_a_user_without_a_daemon_reproduces_with_ptrace(test_user, user_work):
    """No daemon: the user's run and its re-run are both traced with ptrace, into the user's store."""
    db = str(user_work / "mine.db")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(user_work), "PROVTRACE_SOCKET": str(user_work / "none.sock")}

    def as_user(*args, cwd):
        return subprocess.run([helpers.PROVTRACE, *args], capture_output=True, text=True, timeout=300,
                              user=test_user.pw_uid, group=test_user.pw_gid, extra_groups=[], env=env, cwd=cwd)

    (user_work / "in.txt").write_text("b\na\n")
    r = as_user("run", "--db", db, "--", "sh", "-c", "sort in.txt > out.txt", cwd=str(user_work))
    assert r.returncode == 0, r.stderr
    run_id = json.loads(as_user("runs", "--db", db, "--json", cwd="/tmp").stdout)[-1]["id"]
    got = as_user("reproduce", run_id, "--db", db, "--json", cwd="/tmp")
    assert got.returncode == 0, got.stdout + got.stderr
    doc = json.loads(got.stdout)
    assert doc["reproduced"] and doc["original"]["backend"] == doc["rerun"]["backend"] == "ptrace"
    assert doc["compared"]["inputs"] == doc["compared"]["outputs"] == 1


def test_a_kernel_session_is_not_re_runnable(daemon, tmp_path):
    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("kernelspec python3 is not installed (setup.sh installs it)")
    before = {r["id"] for r in helpers.sessions(daemon["db"])}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path))
    try:
        session = helpers.wait_for(lambda: [r for r in helpers.sessions(daemon["db"]) if r["id"] not in before],
                                   60, "the daemon to discover the kernel")[0]
    finally:
        km.shutdown_kernel(now=True)
    _one_line_error(helpers.pt("reproduce", session["id"], "--db", daemon["db"], cwd=str(tmp_path)),
                    "kernel session", "cannot be re-run")
