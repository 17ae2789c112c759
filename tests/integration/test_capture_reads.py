"""Issue 13, reads: directory listings, failed opens and io_uring, on both backends.

Each scenario runs against the real kernel under the loaded probes and under
ptrace (with its seccomp filter), with the same assertions: the backends
must give the same records.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from provtrace.tracer.capture.ptrace import PtraceCapture

from .helpers import PY, entries, pt, trace, trace_py

pytestmark = pytest.mark.privileged

HERE = os.path.dirname(os.path.abspath(__file__))
IO_URING_GAP = "io_uring used by pid {pid}: its file I/O was not traced"


@pytest.fixture(params=["ebpf", "ptrace"])
def cap(request):
    """The session's loaded probes, or a fresh ptrace backend."""
    if request.param == "ebpf":
        return request.getfixturevalue("capture")
    return PtraceCapture()


def _readers(doc, path) -> set[int]:
    return {f["pid"] for f in entries(doc, path) if "read" in f["access"]}


def _attempts(doc, path) -> list[dict]:
    return [a for a in doc["attempts"] if a["path"] == str(path)]


def _data_dir(work, n=3):
    d = work / "data"
    d.mkdir()
    for i in range(n):
        (d / f"{2020 + i}.csv").write_text(f"{i}\n")
    (d / "notes.txt").write_text("x\n")
    return d


# -- directory listings ----------------------------------------------------------


def test_ls_into_a_manifest_reads_the_directory(cap, work):
    data = _data_dir(work)
    code, doc = trace(cap, ["sh", "-c", "ls data > manifest"], cwd=work)
    assert code == 0
    [ls] = [p for p in doc["processes"] if p["argv"][:1] == ["ls"]]
    assert _readers(doc, data) == {ls["pid"]}, "getdents64 of data/ is a read of data/ by ls"
    [rec] = [f for f in entries(doc, data) if f["pid"] == ls["pid"]]
    assert rec["access"] == ["read"] and rec["kind"] == "data" and rec["bytes_read"] > 0
    assert rec["directory"] is True
    assert not any(f.get("directory") for f in entries(doc, work / "manifest"))
    assert doc["run"]["complete"] is True


def test_glob_reads_the_directory(cap, work):
    data = _data_dir(work)
    code, doc = trace_py(cap, """
        import glob
        with open("found.txt", "w") as f:
            f.write("\\n".join(sorted(glob.glob("data/*.csv"))))
    """, cwd=work)
    assert code == 0
    assert (work / "found.txt").read_text().count(".csv") == 3
    [py] = [p for p in doc["processes"] if p["argv"][:1] == [PY]]
    assert py["pid"] in _readers(doc, data)
    assert not _attempts(doc, data), "a directory read is an access, not an attempt"


def test_hundred_thousand_entries_are_one_record(cap, work):
    big = work / "big"
    big.mkdir()
    for i in range(100_000):
        os.close(os.open(big / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    code, doc = trace(cap, ["sh", "-c", "ls -f big > list.txt"], cwd=work)
    assert code == 0
    assert sum(1 for _ in open(work / "list.txt")) == 100_002  # with . and ..
    recs = entries(doc, big)
    assert len(recs) == 1 and recs[0]["access"] == ["read"]
    assert recs[0]["bytes_read"] >= 100_000 * 24, "every getdents64 call counted into the one record"
    assert doc["run"]["lost_events"] == 0 and doc["run"]["complete"] is True


def test_lineage_of_a_manifest_reaches_the_directory(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    work = tmp_path / "w"
    work.mkdir()
    data = _data_dir(work)
    db = str(tmp_path / "store.db")
    for backend in ("ebpf", "ptrace"):
        pt("run", "--backend", backend, "--db", db, "--", "sh", "-c", "ls data > manifest",
           cwd=work, check=True)
        lin = json.loads(pt("lineage", str(work / "manifest"), "--db", db, "--json", check=True).stdout)
        nodes = {n["id"]: n for n in lin["nodes"]}
        reads = [(nodes[e["from"]], nodes[e["to"]]) for e in lin["edges"] if e["rel"] == "read"]
        assert any(src.get("path") == str(data) and dst["kind"] == "process" and dst["argv"] == ["ls", "data"]
                   for src, dst in reads), (backend, lin["edges"])


# -- failed opens ------------------------------------------------------------------


def test_failed_opens_are_attempts_not_accesses(cap, root_tmp_dir, tmp_path):
    work = Path(root_tmp_dir)  # 0755: the command runs as nobody
    secret = work / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    script = work / "try.py"
    script.write_text(
        "import os\n"
        "for _ in range(500):\n"  # a loop's repeats are one attempt
        "    try:\n"
        "        open('data/2024.csv')\n"
        "    except FileNotFoundError:\n"
        "        pass\n"
        "try:\n"
        "    open('secret')\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "try:\n"
        "    open('nodir/out.csv', 'w')\n"
        "except FileNotFoundError:\n"
        "    pass\n")
    setpriv = shutil.which("setpriv")
    assert setpriv, "util-linux's setpriv"
    code, doc = trace(cap, [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            PY, str(script)], cwd=work, db=str(tmp_path / "store.db"))
    assert code == 0
    [py] = [p for p in doc["processes"] if str(script) in p["argv"]]
    missing = _attempts(doc, work / "data" / "2024.csv")
    assert [(a["pid"], a["errno"], a["access"], a["cell"]) for a in missing] == [(py["pid"], "ENOENT", "read", None)]
    assert missing[0]["exe"] == py["exe"] and missing[0]["time"]
    denied = _attempts(doc, secret)
    assert [(a["pid"], a["errno"]) for a in denied] == [(py["pid"], "EACCES")]
    assert [a["access"] for a in _attempts(doc, work / "nodir" / "out.csv")] == ["write"]
    for path in ("data/2024.csv", "secret", "nodir/out.csv"):
        assert not entries(doc, work / path), f"{path}: not an access, so not in files (nor lineage)"


def test_attempts_stay_out_of_default_text_views(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    db = str(tmp_path / "store.db")
    pt("run", "--db", db, "--", "sh", "-c", "cat missing.csv || true", cwd=tmp_path, check=True)
    missing = str(tmp_path / "missing.csv")
    default = pt("show", "last", "--db", db, check=True).stdout
    assert missing not in default and "failed opens (--attempts lists them)" in default
    listed = pt("show", "last", "--db", db, "--attempts", check=True).stdout
    assert f"ENOENT  read  pid" in listed and missing in listed
    doc = json.loads(pt("show", "last", "--db", db, "--json", check=True).stdout)
    assert [a["path"] for a in doc["attempts"] if a["path"] == missing] == [missing]
    assert missing not in {f["path"] for f in doc["files"]}


def test_a_failing_cell_has_its_attempt(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    nb = new_notebook(cells=[new_code_cell("x = 1"),
                             new_code_cell("open('data/2024.csv').read()")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, str(nb_dir / "a.ipynb"))
    out = tmp_path / "run.json"
    r = pt("notebook", "run", str(nb_dir / "a.ipynb"), "--db", str(tmp_path / "store.db"),
           "--json-out", str(out))
    assert r.returncode != 0, "the second cell raised FileNotFoundError"
    doc = json.loads(out.read_text())
    failed = [c for c in doc["cells"] if c["status"] == "error"]
    assert len(failed) == 1
    tried = _attempts(doc, nb_dir / "data" / "2024.csv")
    assert [(a["errno"], a["cell"]) for a in tried] == [("ENOENT", failed[0]["id"])]


# -- io_uring ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iouring_copy(tmp_path_factory):
    exe = tmp_path_factory.mktemp("iouring") / "iouring_copy"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe), os.path.join(HERE, "iouring_copy.c")],
                   check=True)
    return str(exe)


def test_io_uring_is_a_recorded_gap(cap, work, iouring_copy):
    (work / "src.txt").write_text("through the ring\n")
    code, doc = trace(cap, [iouring_copy, "src.txt", "dst.txt"], cwd=work)
    if code == 2:
        pytest.skip("io_uring is disabled on this kernel (kernel.io_uring_disabled)")
    assert code == 0
    assert (work / "dst.txt").read_text() == "through the ring\n", "the copy really went through io_uring"
    [p] = [p for p in doc["processes"] if p["argv"][:1] == [iouring_copy]]
    assert doc["run"]["gaps"].get(IO_URING_GAP.format(pid=p["pid"])) == 1, doc["run"]["gaps"]


def test_a_run_without_io_uring_has_no_such_gap(cap, work):
    code, doc = trace(cap, ["sh", "-c", "cat /dev/null"], cwd=work)
    assert code == 0
    assert not [g for g in doc["run"]["gaps"] if g.startswith("io_uring")]


# -- switching the new recording off (the bench's "before") --------------------------------


@pytest.mark.parametrize("backend", ["ebpf", "ptrace"])
def test_capture_off_switches_both_off(tmp_path, backend):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    work = tmp_path / "w"
    work.mkdir()
    data = _data_dir(work)
    cmd = ("run", "--backend", backend, "--db", str(tmp_path / "store.db"), "--json-out",
           str(tmp_path / "run.json"), "--", "sh", "-c", "ls data > manifest; cat missing || true")
    pt(*cmd, cwd=work, check=True, env={**os.environ, "PROVTRACE_CAPTURE_OFF": "failed-opens,dir-reads"})
    doc = json.loads((tmp_path / "run.json").read_text())
    assert not entries(doc, data) and doc["attempts"] == []
    pt(*cmd, cwd=work, check=True, env={k: v for k, v in os.environ.items() if k != "PROVTRACE_CAPTURE_OFF"})
    doc = json.loads((tmp_path / "run.json").read_text())
    assert entries(doc, data) and _attempts(doc, work / "missing")


# -- through the daemon ------------------------------------------------------------------


def test_through_the_daemon_the_same_records(daemon, tmp_path, iouring_copy):
    """The daemon's path (router, its own Tracker) gives the three the same way."""
    work = tmp_path / "w"
    work.mkdir()
    data = _data_dir(work)
    (work / "src.txt").write_text("ring\n")
    out = tmp_path / "run.json"
    pt("run", "--socket", daemon["socket"], "--json-out", str(out), "--", "sh", "-c",
       f"ls data > manifest; cat missing.csv || true; {iouring_copy} src.txt dst.txt", cwd=work, check=True)
    doc = json.loads(out.read_text())
    [ls] = [p for p in doc["processes"] if p["argv"][:1] == ["ls"]]
    [cat] = [p for p in doc["processes"] if p["argv"][:1] == ["cat"]]
    [iu] = [p for p in doc["processes"] if p["argv"][:1] == [iouring_copy]]
    assert _readers(doc, data) == {ls["pid"]}
    assert [(a["pid"], a["errno"]) for a in _attempts(doc, work / "missing.csv")] == [(cat["pid"], "ENOENT")]
    assert doc["run"]["gaps"].get(IO_URING_GAP.format(pid=iu["pid"])) == 1, doc["run"]["gaps"]
