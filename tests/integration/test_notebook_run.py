"""`provtrace notebook run` on real ipykernel and IRkernel kernels, traced by the
real probes: every cell's reads, writes, processes, sockets and status."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from provtrace.tracer.correlate.notebook import NotebookError
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.pipeline.notebook import TracedNotebook

pytestmark = pytest.mark.privileged

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")

LANGUAGE = {"python3": "python", "ir": "R"}

# One list per kernel: (cell source, expected status). {port} is a listener
# the test holds open. Cell 5 starts a child that writes after its cell ended.
CELLS = {
    "python3": [
        ("open('out.txt', 'w').write('hello')", "ok"),
        ("import subprocess\nsubprocess.run(['sh', '-c', 'cat out.txt > child.txt'], check=True)", "ok"),
        ("raise ValueError('boom')", "error"),
        ("import socket\nc = socket.create_connection(('127.0.0.1', {port}))\nc.close()", "ok"),
        ("import os\ntext = open('out.txt').read()\nwith open('res.tmp', 'w') as f:\n    f.write(text)\n"
         "os.rename('res.tmp', 'result.csv')", "ok"),
        ("import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 1; echo late > late.txt'])", "ok"),
        ("import time\ntime.sleep(2.5)", "ok"),
    ],
    "ir": [
        ("writeLines('hello', 'out.txt')", "ok"),
        ("system('cat out.txt > child.txt')", "ok"),
        ("stop('boom')", "error"),
        ("con <- socketConnection('127.0.0.1', {port}, blocking = TRUE, open = 'r+')\nclose(con)", "ok"),
        ("text <- readLines('out.txt')\nwriteLines(text, 'res.tmp')\nfile.rename('res.tmp', 'result.csv')",
         "ok"),
        # stdout detached: IRkernel would otherwise keep the cell busy until the pipe closes
        ("system('(sleep 1; echo late > late.txt) > /dev/null 2>&1', wait = FALSE)", "ok"),
        ("Sys.sleep(2.5)", "ok"),
    ],
}


def _write_notebook(path, kernel: str, sources: list[str]) -> None:
    nb = new_notebook(cells=[new_markdown_cell("# analysis")] + [new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": LANGUAGE[kernel]}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def _need_kernel(kernel: str) -> None:
    if kernel not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"kernelspec {kernel!r} is not installed (setup.sh installs it)")


def _run(capture, path, db, **kw):
    store = S.Store(str(db))
    try:
        traced = TracedNotebook(str(path), store=store, capture=capture, **kw)
        code = traced.run()
        return code, traced, Q.load_run(store, traced.rid)
    finally:
        store.close()


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


@pytest.mark.parametrize("kernel", ["python3", "ir"])
def test_cells_get_their_reads_writes_processes_and_sockets(kernel, capture, tmp_path, listener):
    _need_kernel(kernel)
    work = tmp_path / "nb"
    sources = [src.replace("{port}", str(listener)) for src, _ in CELLS[kernel]]
    _write_notebook(work / "analysis.ipynb", kernel, sources)
    code, traced, doc = _run(capture, work / "analysis.ipynb", tmp_path / "s.db")

    assert code == 1  # one cell failed
    assert doc["run"]["kind"] == "notebook" and doc["run"]["lost_events"] == 0
    cells = doc["cells"]
    assert [c["index"] for c in cells] == [1, 2, 3, 4, 5, 6, 7]
    assert [c["status"] for c in cells] == [status for _, status in CELLS[kernel]]
    assert all(c["id"] for c in cells) and len({c["id"] for c in cells}) == 7
    w = str(work)
    write_cell, child_cell, fail_cell, sock_cell, rename_cell, late_cell, _sleep = cells
    assert write_cell["writes"] == [f"{w}/out.txt"] and write_cell["reads"] == []
    assert child_cell["reads"] == [f"{w}/out.txt"] and child_cell["writes"] == [f"{w}/child.txt"]
    assert child_cell["processes"], "the cell's sh (and cat) must be its processes"
    assert fail_cell["writes"] == [] and fail_cell["reads"] == []
    # the temp name is followed to its final name
    assert rename_cell["reads"] == [f"{w}/out.txt"] and rename_cell["writes"] == [f"{w}/result.csv"]
    # a child started in cell 6 that writes after cell 6 ended still belongs to cell 6
    assert late_cell["writes"] == [f"{w}/late.txt"]
    late = [f for f in doc["files"] if f["path"] == f"{w}/late.txt"]
    assert late and all(f["cell"] == late_cell["id"] for f in late)
    assert max(f["last"] for f in late) > late_cell["ended"]
    conns = [n for n in doc["network"] if n["op"] == "connect" and n["port"] == listener]
    assert conns and all(n["cell"] == sock_cell["id"] for n in conns)
    for c in cells:  # every process of a cell points back at it
        for pid in c["processes"]:
            assert any(p["pid"] == pid and p["cell"] == c["id"] for p in doc["processes"])
    kernel_proc = [p for p in doc["processes"] if p["pid"] == traced.result.kernel_pid]
    assert kernel_proc and kernel_proc[0]["cell"] is None  # the kernel itself is in no cell
    # per-cell context: the run's and each cell's
    assert doc["context"]["libraries"] and all("context" in c for c in cells)
    assert all(c["context"]["gpu_samples"] for c in cells)


def test_kernel_start_up_belongs_to_no_cell(capture, tmp_path):
    _need_kernel("python3")
    work = tmp_path / "nb"
    _write_notebook(work / "a.ipynb", "python3", ["import json\nopen('x.txt', 'w').write('1')"])
    code, traced, doc = _run(capture, work / "a.ipynb", tmp_path / "s.db")
    assert code == 0
    kpid = traced.result.kernel_pid
    startup_maps = [f for f in doc["files"] if f["pid"] == kpid and "map" in f["access"] and f["cell"] is None]
    assert startup_maps, "what the kernel mapped before its first cell is recorded, in no cell"
    (cell,) = doc["cells"]
    assert cell["writes"] == [f"{work}/x.txt"]


def test_kernel_killed_mid_cell_closes_the_window(capture, tmp_path):
    _need_kernel("python3")
    work = tmp_path / "nb"
    _write_notebook(work / "dies.ipynb", "python3", [
        "open('before.txt', 'w').write('1')",
        "import os\nopen('dying.txt', 'w').write('2')\nos.kill(os.getpid(), 9)",
        "open('never.txt', 'w').write('3')",
    ])
    code, traced, doc = _run(capture, work / "dies.ipynb", tmp_path / "s.db", timeout_s=60)
    assert code == 1
    assert traced.result.stopped_early and "died" in traced.result.stopped_early
    first, second = doc["cells"]  # the third never ran
    assert first["status"] == "ok" and second["status"] == "error"
    assert second["writes"] == [f"{work}/dying.txt"]
    assert second["ended"] is not None
    assert not (work / "never.txt").exists()
    kernel = [p for p in doc["processes"] if p["pid"] == traced.result.kernel_pid]
    assert kernel and kernel[0]["exit_code"] == 128 + 9


def test_invalid_notebook_is_a_clear_error_and_no_run(capture, tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text('{"cells": "not a list"')
    store = S.Store(str(tmp_path / "s.db"))
    with pytest.raises(NotebookError, match="not a valid notebook"):
        TracedNotebook(str(bad), store=store, capture=capture)
    assert Q.list_runs(store) == []
    store.close()


def test_cli_writes_json_and_notebook_even_when_a_cell_fails(tmp_path):
    _need_kernel("python3")
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    work = tmp_path / "nb"
    _write_notebook(work / "a.ipynb", "python3", ["print(open('in.txt').read())", "1/0"])
    (work / "in.txt").write_text("data\n")
    db, out_json, out_nb = tmp_path / "s.db", tmp_path / "run.json", tmp_path / "done.ipynb"
    proc = subprocess.run([PROVTRACE, "notebook", "run", str(work / "a.ipynb"), "--db", str(db),
                           "--json-out", str(out_json), "--output", str(out_nb)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == "provtrace.run/1"
    assert [c["status"] for c in doc["cells"]] == ["ok", "error"]
    assert doc["cells"][0]["reads"] == [f"{work}/in.txt"]
    executed = nbformat.read(str(out_nb), as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "data\n\n"  # print() adds one
    shown = subprocess.run([PROVTRACE, "show", "last", "--db", str(db), "--json"],
                           capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["run"]["id"] == doc["run"]["id"]
    bad = subprocess.run([PROVTRACE, "notebook", "run", str(tmp_path / "missing.ipynb"), "--db", str(db)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "missing.ipynb" in bad.stderr.strip().splitlines()[-1]
