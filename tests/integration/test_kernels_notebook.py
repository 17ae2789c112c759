"""provtrace notebook run's engine on real ipykernel and IRkernel kernels."""

from __future__ import annotations

import hashlib
import json

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from provtrace.tracer.correlate.notebook import NotebookError, NotebookRunner, run_notebook

CELLS = {
    "python3": [
        "open('out.txt', 'w').write('hello')",
        "import subprocess; subprocess.run(['sh', '-c', 'echo child > child.txt'], check=True)",
        "raise ValueError('boom')",
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()); s.close()",
        "print(open('out.txt').read())",
    ],
    "ir": [
        "writeLines('hello', 'out.txt')",
        "system('echo child > child.txt')",
        "stop('boom')",
        "s <- serverSocket(0L)\nclose(s)",
        "cat(readLines('out.txt'))",
    ],
}
LANGUAGE = {"python3": "python", "ir": "R"}


def _notebook(path, kernel: str, cells: list[str]):
    nb = new_notebook(cells=[new_markdown_cell("# title")] + [new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": LANGUAGE[kernel]}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return nb


@pytest.mark.parametrize("kernel", ["python3", "ir"])
def test_runs_every_cell_through_a_failure(kernel, tmp_path):
    if kernel not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"kernelspec {kernel} not installed")
    path = tmp_path / "nbdir" / "analysis.ipynb"
    nb = _notebook(path, kernel, CELLS[kernel])
    started: list[int] = []
    ended: list = []

    def on_kernel_started(pid: int) -> None:
        proc = psutil.Process(pid)  # alive, and cells have not run yet
        assert proc.is_running() and not ended
        assert proc.cwd() == str(path.parent)
        started.append(pid)

    result = NotebookRunner(path, on_kernel_started=on_kernel_started, on_cell_end=ended.append).run()
    assert started == [result.kernel_pid] and result.language == LANGUAGE[kernel]
    assert [c.index for c in result.cells] == [1, 2, 3, 4, 5]  # the markdown cell is not a window
    assert [c.status for c in result.cells] == ["ok", "ok", "error", "ok", "ok"]
    assert [c.execution_count for c in result.cells] == [1, 2, 3, 4, 5]
    assert [c.cell_id for c in result.cells] == [c.id for c in nb.cells[1:]]
    for cell, code in zip(result.cells, CELLS[kernel]):
        assert cell.code_sha256 == hashlib.sha256(code.encode()).hexdigest()
        assert cell.started <= cell.ended and cell.msg_id
    assert result.cells[2].error_name
    assert result.failed and result.stopped_early is None
    assert ended == result.cells
    windows = result.windows()
    assert all(w.kernel_pid == result.kernel_pid and w.start_ns <= w.end_ns for w in windows)
    assert all(a.end_ns <= b.start_ns for a, b in zip(windows, windows[1:]))
    assert (path.parent / "out.txt").read_text().strip() == "hello"  # cwd = the notebook's folder
    assert (path.parent / "child.txt").exists()
    out = tmp_path / "executed.ipynb"
    result.write_notebook(out)
    assert nbformat.read(str(out), as_version=4).cells[1].execution_count == 1


def test_kernel_dying_mid_notebook_still_gives_a_result(tmp_path):
    path = tmp_path / "die.ipynb"
    _notebook(path, "python3", ["x = 1", "import os; os._exit(3)", "x + 1"])
    result = run_notebook(path, timeout_s=60)
    assert result.stopped_early and result.stopped_early.startswith("died")
    assert [(c.index, c.status, c.end_reason) for c in result.cells] == [(1, "ok", None), (2, "error", "died")]
    assert result.failed


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not a valid notebook"),
        (json.dumps({"cells": "nope", "nbformat": 4, "nbformat_minor": 5, "metadata": {}}), "not a valid notebook"),
        (json.dumps({"hello": 1}), "not a valid notebook"),
    ],
)
def test_invalid_notebook_is_a_clear_error(tmp_path, content, words):
    path = tmp_path / "bad.ipynb"
    path.write_text(content)
    with pytest.raises(NotebookError, match=words) as err:
        NotebookRunner(path)
    assert str(path) in str(err.value)


def test_missing_notebook_and_unknown_kernel(tmp_path):
    with pytest.raises(NotebookError, match="cannot read"):
        NotebookRunner(tmp_path / "nope.ipynb")
    path = tmp_path / "k.ipynb"
    _notebook(path, "python3", ["1"])
    with pytest.raises(NotebookError, match="no kernel named 'no-such-kernel'"):
        run_notebook(path, kernel_name="no-such-kernel")
