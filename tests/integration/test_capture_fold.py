"""Repeated opens of one file are folded in the kernel (issue 15, docs/capture.md):
one record per file and 100 ms instead of two per open, with the same totals."""

from __future__ import annotations

import pytest

from .helpers import accesses, entries, trace_py

pytestmark = pytest.mark.privileged


def records_sent(capture) -> int:
    """The probes' own count of ring-buffer records (common.h, rb_flags), all CPUs."""
    return sum(sum(v) for v in capture._bpf[b"emitted"].values())


def test_hundred_thousand_reopens_keep_exact_totals(capture, work):
    """open+read+close of one file 100,000 times and of another once: both
    files, every byte, nothing lost."""
    (work / "hot").write_bytes(b"h" * 10)
    (work / "cold").write_bytes(b"c" * 7)
    before = records_sent(capture)
    code, doc = trace_py(capture, """
        import os
        for _ in range(100_000):
            fd = os.open("hot", os.O_RDONLY)
            os.read(fd, 3)
            os.close(fd)
        fd = os.open("cold", os.O_RDONLY)
        os.read(fd, 100)
        os.close(fd)
    """, cwd=work)
    assert code == 0
    assert doc["run"]["lost_events"] == 0
    assert sum(f["bytes_read"] for f in entries(doc, work / "hot")) == 300_000
    assert sum(f["bytes_read"] for f in entries(doc, work / "cold")) == 7
    assert accesses(doc, work / "hot") == {"read"}
    assert accesses(doc, work / "cold") == {"read"}
    # unfolded, each open sends an EV_OPEN and its close an EV_FDIO: 200,000
    assert records_sent(capture) - before < 20_000


def test_folded_writes_and_an_fd_kept_open_across_the_bound(capture, work):
    """Appends through reopened fds, one of them still open when another file
    takes over and when the process exits: the bytes still land on the file."""
    code, doc = trace_py(capture, """
        import os, time
        open("log", "w").close()
        for _ in range(1000):
            fd = os.open("log", os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"ab")
            os.close(fd)
        kept = os.open("log", os.O_WRONLY | os.O_APPEND)
        time.sleep(0.15)
        for _ in range(100):
            fd = os.open("log", os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"c")
            os.close(fd)
        os.write(kept, b"dddd")
        os._exit(0)
    """, cwd=work)
    assert code == 0
    assert doc["run"]["lost_events"] == 0
    assert sum(f["bytes_written"] for f in entries(doc, work / "log")) == 2000 + 100 + 4
    assert accesses(doc, work / "log") == {"create", "write"}


def test_a_reopen_in_the_next_cell_belongs_to_that_cell(capture, tmp_path):
    """A followed kernel: cell 1 reopens a file 1,000 times (folded), cell 2
    reopens it after the 100 ms bound; each cell keeps its own bytes."""
    import nbformat  # noqa: PLC0415
    from nbformat.v4 import new_code_cell, new_notebook  # noqa: PLC0415

    from provtrace.tracer.store import queries as Q  # noqa: PLC0415
    from provtrace.tracer.store import sqlite as S  # noqa: PLC0415
    from provtrace.tracer.pipeline.notebook import TracedNotebook  # noqa: PLC0415

    work = tmp_path / "nb"
    work.mkdir()
    (work / "data").write_bytes(b"d" * 10)
    loop = "import os\nfor _ in range(1000):\n    fd = os.open('data', os.O_RDONLY)\n    os.read(fd, 3)\n    os.close(fd)"
    nb = new_notebook(cells=[new_code_cell(loop), new_code_cell("import time\ntime.sleep(0.2)"),
                             new_code_cell("fd = os.open('data', os.O_RDONLY)\nos.read(fd, 5)\nos.close(fd)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, str(work / "a.ipynb"))
    store = S.Store(str(tmp_path / "s.db"))
    try:
        traced = TracedNotebook(str(work / "a.ipynb"), store=store, capture=capture)
        assert traced.run() == 0
        doc = Q.load_run(store, traced.rid)
    finally:
        store.close()
    assert doc["run"]["lost_events"] == 0
    first, _, third = doc["cells"]
    by_cell = {}
    for f in entries(doc, work / "data"):
        by_cell[f["cell"]] = by_cell.get(f["cell"], 0) + f["bytes_read"]
    assert by_cell == {first["id"]: 3000, third["id"]: 5}
