"""`provtrace env` on real traced runs, each manifest checked by its real consumer:
pip resolves the requirements.txt with --require-hashes, apt-get dry-runs the
apt list, R parses the renv.lock, dockerfile-parse reads the Dockerfile (no
docker here) and its apt and pip steps are dry-run on this machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

import pytest

from . import helpers

pytestmark = pytest.mark.privileged

VENV_PACKAGES = ("idna==3.21", "python-dateutil==4.0.0")  # small, pure Python, on PyPI


def pt(*args, cwd=None, check=True):
    return helpers.pt(*args, cwd=cwd, check=check)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A throwaway venv of Debian's python3 with two PyPI packages (and their dependencies)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to trace")
    where = tmp_path_factory.mktemp("envvenv") / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(where)], check=True, timeout=120)
    r = subprocess.run([str(where / "bin/pip"), "install", "-q", *VENV_PACKAGES],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot install {VENV_PACKAGES} from PyPI here: {r.stderr.strip()[-300:]}")
    return where


@pytest.fixture(scope="module")
def py_run(venv, tmp_path_factory):
    """(db, run id) of a traced `import dateutil, idna`: tzdata (dateutil's dependency) is never imported."""
    work = tmp_path_factory.mktemp("envrun")
    db = str(work / "env.db")
    code = "import sys, dateutil, idna; assert 'tzdata' not in sys.modules; print(idna.encode('example.org'))"
    pt("run", "--db", db, "--", str(venv / "bin/python"), "-c", code, cwd=work)
    (run,) = json.loads(pt("runs", "--db", db, "--json").stdout)
    return db, run["id"]


def _pins(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1)[0].split("==") for line in text.splitlines()
                if line and not line.startswith(("#", " ")))


def _pip_resolve(venv, req: str, tmp_path) -> dict[str, str]:
    """What pip itself resolves from req (hashes required), without installing."""
    report = tmp_path / "R.json"
    r = subprocess.run([str(venv / "bin/pip"), "install", "--dry-run", "--ignore-installed",
                        "--require-hashes", "--report", str(report), "-r", req],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in items}


def test_requirements_pip_resolves_exactly_the_pinned_set(venv, py_run, tmp_path):
    db, run = py_run
    out = tmp_path / "requirements.txt"
    r = pt("env", run, "--db", db, "--format", "requirements.txt", "-o", str(out))
    text = out.read_text()
    pins = _pins(text)
    assert pins["idna"] == "3.21" and pins["python-dateutil"] == "4.0.0"
    assert "tzdata" in pins, "the dependency closure must add what dateutil requires"
    assert text.count("--hash=sha256:") >= len(pins)
    assert "pip" not in pins and "warning" not in r.stderr
    assert _pip_resolve(venv, str(out), tmp_path) == pins


def test_no_hashes_is_plain_pins_and_says_so(py_run):
    db, run = py_run
    r = pt("env", run, "--db", db, "--format", "requirements.txt", "--no-hashes")
    assert "--hash" not in r.stdout and "without hashes" in r.stdout
    assert "provtrace: warning:" in r.stderr and "no hashes" in r.stderr


def test_apt_list_is_what_apt_get_takes(py_run, tmp_path):
    db, run = py_run
    out = tmp_path / "apt.txt"
    pt("env", run, "--db", db, "--format", "apt", "-o", str(out))
    pins = out.read_text().split()
    assert any(p.startswith("libc6:") and "=" in p for p in pins)
    assert all("=" in p for p in pins)
    r = subprocess.run(["apt-get", "install", "--dry-run", "--no-install-recommends", *pins],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _instructions(path):
    from dockerfile_parse import DockerfileParser  # noqa: PLC0415

    with open(path, "rb") as f:
        return DockerfileParser(fileobj=f).structure


def test_dockerfile_parses_and_its_steps_dry_run(venv, py_run, tmp_path):
    db, run = py_run
    ctx = tmp_path / "build"
    ctx.mkdir()
    pt("env", run, "--db", db, "--format", "dockerfile", "-o", str(ctx / "Dockerfile"))
    steps = _instructions(ctx / "Dockerfile")
    kinds = [s["instruction"] for s in steps if s["instruction"] != "COMMENT"]
    assert kinds[0] == "FROM" and steps[[s["instruction"] for s in steps].index("FROM")]["value"] == "debian:12"
    assert kinds == ["FROM", "RUN", "COPY", "RUN", "ENV"]
    copy = next(s["value"] for s in steps if s["instruction"] == "COPY").split()
    assert (ctx / copy[0]).is_file(), "-o writes the build context's requirements.txt beside the Dockerfile"
    # The apt step, as apt-get would run it (dry run: this machine has the packages).
    apt_run = next(s["value"] for s in steps if s["instruction"] == "RUN" and "apt-get install" in s["value"])
    words = shlex.split(apt_run.split("apt-get install", 1)[1].split("&&", 1)[0])
    r = subprocess.run(["apt-get", "install", "--dry-run", *words], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # The pip step, against the copied file.
    pip_run = next(s["value"] for s in steps if s["instruction"] == "RUN" and "pip install" in s["value"])
    assert "--require-hashes" in pip_run
    assert _pip_resolve(venv, str(ctx / copy[0]), tmp_path) == _pins((ctx / copy[0]).read_text())


def test_dockerfile_base_option(py_run):
    db, run = py_run
    r = pt("env", run, "--db", db, "--format", "dockerfile", "--base", "debian:12-slim", "--no-hashes")
    assert "\nFROM debian:12-slim\n" in r.stdout and "# ==> requirements.txt <==" in r.stdout


def test_empty_ecosystem_is_an_empty_manifest_and_a_warning(py_run):
    db, run = py_run
    r = pt("env", run, "--db", db, "--format", "renv.lock")
    assert json.loads(r.stdout)["Packages"] == {}
    assert "loaded no CRAN packages" in r.stderr


def test_errors_are_one_line(py_run, tmp_path):
    db, run = py_run
    for args, needle in ((("nope",), "no run 'nope'"), ((run + ":7",), "no cell '7'"),
                         ((run, "-o", str(tmp_path / "absent" / "x")), "cannot write")):
        r = pt("env", *args, "--db", db, "--format", "apt", check=False)
        assert r.returncode != 0 and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("Rscript") is None or not os.path.isdir("/usr/lib/R/site-library/jsonlite"),
                    reason="needs Debian's r-base and r-cran-jsonlite")
def test_renv_lock_is_read_by_r(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to trace")
    db = str(tmp_path / "r.db")
    pt("run", "--db", db, "--", "Rscript", "-e", "library(jsonlite); cat(toJSON(1:2))", cwd=tmp_path)
    lock = tmp_path / "renv.lock"
    pt("env", "last", "--db", db, "--format", "renv.lock", "-o", str(lock))
    doc = json.loads(lock.read_text())
    assert doc["Packages"]["jsonlite"]["Source"] == "Repository"
    assert "base" not in doc["Packages"] and "utils" not in doc["Packages"]
    check = (f'x <- jsonlite::fromJSON("{lock}"); stopifnot(x$R$Version == "{doc["R"]["Version"]}", '
             '"jsonlite" %in% names(x$Packages), x$Packages$jsonlite$Version == '
             'as.character(packageVersion("jsonlite")), x$R$Version == paste(R.version$major, '
             'R.version$minor, sep = "."))')
    r = subprocess.run(["Rscript", "-e", check], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_cell_gets_its_own_packages(tmp_path):
    """A real notebook run (ipykernel, traced): each cell's manifest holds what that cell imported."""
    if os.geteuid() != 0:
        pytest.skip("needs root to trace")
    import nbformat  # noqa: PLC0415
    from nbformat.v4 import new_code_cell, new_notebook  # noqa: PLC0415

    nb = new_notebook(cells=[new_code_cell("import idna"), new_code_cell("import six")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "nb.ipynb"))
    db = str(tmp_path / "nb.db")
    pt("notebook", "run", str(tmp_path / "nb.ipynb"), "--db", db, cwd=tmp_path)
    doc = json.loads(pt("show", "last", "--db", db, "--json").stdout)
    first, second = (c["id"] for c in sorted(doc["cells"], key=lambda c: c["index"]))
    run = doc["run"]["id"]
    own = {cell: _pins(pt("env", f"{run}:{cell}", "--db", db, "--format", "requirements.txt",
                          "--no-hashes").stdout) for cell in (first, second)}
    assert "idna" in own[first] and "six" not in own[first]
    assert "six" in own[second] and "idna" not in own[second]
    whole = _pins(pt("env", run, "--db", db, "--format", "requirements.txt", "--no-hashes").stdout)
    assert {"idna", "six"} <= set(whole)


@pytest.fixture
def shared_work(test_user):
    """A folder the test user owns, where it can reach it (pytest's tmp_path is root's alone)."""
    import pathlib  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    work = pathlib.Path(tempfile.mkdtemp(prefix="provtrace-env-", dir="/tmp"))
    os.chown(work, test_user.pw_uid, test_user.pw_gid)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def test_through_the_daemon_a_user_gets_only_its_own_runs(daemon, test_user, shared_work):
    """--socket asks the daemon's GetContext: the same manifest as the store file gives, for
    the caller's own runs; another user's run is refused in one line."""
    work = shared_work
    as_user = {"user": test_user.pw_uid, "group": test_user.pw_gid, "extra_groups": [],
               "env": {"PATH": "/usr/bin:/bin", "HOME": str(work)}, "cwd": str(work)}

    def cli(*args, user=False):
        return subprocess.run([helpers.PROVTRACE, *args], capture_output=True, text=True, timeout=180,
                              **(as_user if user else {"cwd": str(work)}))

    sock = ("--socket", daemon["socket"])
    assert cli("run", *sock, "--json-out", str(work / "root.json"), "--", "sh", "-c", "true").returncode == 0
    r = cli("run", *sock, "--json-out", str(work / "mine.json"), "--", "sh", "-c", "ls >/dev/null", user=True)
    assert r.returncode == 0, r.stderr
    root_run, mine = (json.loads((work / f).read_text())["run"]["id"] for f in ("root.json", "mine.json"))

    via_socket = cli("env", mine, *sock, "--format", "apt", user=True)
    assert via_socket.returncode == 0, via_socket.stderr
    assert via_socket.stdout == pt("env", mine, "--db", daemon["db"], "--format", "apt").stdout
    assert "coreutils=" in via_socket.stdout  # ls

    denied = cli("env", root_run, *sock, "--format", "apt", user=True)
    assert denied.returncode != 0 and root_run in denied.stderr and denied.stdout == ""
    assert len(denied.stderr.strip().splitlines()) == 1
