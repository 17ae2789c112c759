"""`provtrace tui` as a user runs it: the real CLI in a real terminal (tmux), and its one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from .stores import RUN_A, RUN_B, RUN_NB, build_store

PROVTRACE = os.path.join(os.path.dirname(sys.executable), "provtrace")
COLS, ROWS = 120, 40
POLLS = 300  # capture-pane polls, 0.1 s apart: a bound on waiting, not a timing assertion


class Tmux:
    """One tmux server on a private socket, so nothing else's sessions are touched."""

    def __init__(self) -> None:
        self.socket = f"provtrace-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "tui")

    def wait_for(self, *texts: str, polls: int = POLLS) -> str:
        """The screen once every one of texts is on it (a repaint can be caught half done)."""
        for _ in range(polls):
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{texts!r} never all appeared; the screen was:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (setup.sh installs it)")
    t = Tmux()
    yield t
    t.kill()


def test_tui_in_a_real_terminal(tmux, tmp_path):
    db = build_store(str(tmp_path / "prov.db"))
    status = tmp_path / "status"
    # the shell records the exit status, then stays so the pane can still be read
    # (textual draws on stderr; stdout goes to a file, to check nothing is printed there)
    cmd = f"{PROVTRACE} tui --db {db} >{tmp_path}/stdout; echo $? > {status}; sleep 60"
    tmux("new-session", "-d", "-s", "tui", "-x", str(COLS), "-y", str(ROWS), cmd)
    # the runs, newest first, and the keys in the footer
    screen = tmux.wait_for(RUN_A, "3 runs in store", "q Quit", "/ Filter")
    assert screen.index(RUN_NB) < screen.index(RUN_B) < screen.index(RUN_A)

    tmux("send-keys", "-t", "tui", "Down", "Down", "Enter")  # the oldest run: A
    tmux.wait_for(f"run {RUN_A} (command)", "/data/in.csv", "l Lineage", "tab Next pane",
                  "/data/caf\\xe9.csv")  # a non-UTF-8 name, escaped

    tmux("send-keys", "-t", "tui", "Down", "Down", "l")  # out.csv.tmp
    tmux.wait_for("upstream lineage of /data/out.csv.tmp",
                  f"written by [run {RUN_A} pid 4100001] python3 job.py")

    tmux("send-keys", "-t", "tui", "q")
    for _ in range(POLLS):
        if status.exists() and status.read_text().strip():
            break
        time.sleep(0.1)
    assert status.read_text().strip() == "0"
    assert (tmp_path / "stdout").read_text() == ""  # the TUI never prints


# 159 characters: longer than the old fixed column cap (100), shorter than a 250-column window
LONG_PATH = ("/tmp/pytest-of-root/pytest-1234/test_wide_terminal_shows_whole0/inputs/"
             "a-rather-deeply/nested/directory-tree/of/training-data/for-the-cell/2024-01-01/train.csv")


def test_wide_terminal_shows_whole_paths(tmux, tmp_path):
    """A 250-column window: a cell's long read shows whole in the Cells and Files panes,
    each of the cell's reads on its own line. The pane's environment says COLUMNS=80, as
    under pytest (Python's readline exports it); the app must measure the terminal instead."""
    db = build_store(str(tmp_path / "prov.db"), nb_reads=(LONG_PATH, "/nb/train.csv"))
    tmux("new-session", "-d", "-s", "tui", "-x", "250", "-y", str(ROWS), "-e", "COLUMNS=80",
         "-e", "LINES=24", f"{PROVTRACE} tui --db {db}; sleep 60")
    tmux.wait_for("3 runs in store", "q Quit")
    tmux("send-keys", "-t", "tui", "Enter")  # newest first: the notebook run, on its cells
    screen = tmux.wait_for(f"run {RUN_NB} (notebook)", "tab Next pane", LONG_PATH)
    lines = screen.splitlines()
    row = next(i for i, line in enumerate(lines) if "/nb/train.csv" in line)
    assert "/nb/model.pkl" in lines[row], screen  # the cell's first read and its write
    assert LONG_PATH in lines[row + 1], screen  # its second read, below the first
    tmux("send-keys", "-t", "tui", "Enter")  # the cell's files
    screen = tmux.wait_for("ACCESS", "/nb/model.pkl")
    assert LONG_PATH in screen, screen


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROVTRACE, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize("make, expect", [
    (lambda p: str(p / "missing.db"), "no store at"),
    (lambda p: (p / "junk.db").write_bytes(b"not sqlite at all " * 100) and str(p / "junk.db"),
     "cannot open store"),
    (lambda p: str(p), "cannot open store"),  # a directory
])
def test_unusable_store_is_one_line_before_the_app(tmp_path, make, expect):
    r = _cli("tui", "--db", make(tmp_path))
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("provtrace: ") and expect in r.stderr


def test_absent_daemon_is_one_line(tmp_path):
    r = _cli("tui", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no provtrace daemon answers" in r.stderr


def test_db_and_socket_together_is_a_usage_error(tmp_path):
    r = _cli("tui", "--db", "x.db", "--socket", "y.sock")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_no_terminal_is_one_line(tmp_path):
    r = _cli("tui", "--db", build_store(str(tmp_path / "prov.db")))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "needs a terminal" in r.stderr


NOTEBOOK_CELLS = ("b = bytearray(80 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1",
                  "x = sum(i * i for i in range(1_500_000))")


@pytest.mark.privileged
def test_resources_pane_on_real_notebook_runs(tmux, tmp_path):
    """Two traced runs of one notebook: per-cell bars, and sparklines across the runs."""
    import nbformat  # noqa: PLC0415
    from nbformat.v4 import new_code_cell, new_notebook  # noqa: PLC0415

    nb = new_notebook(cells=[new_code_cell(c) for c in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "job.ipynb"))
    db = tmp_path / "prov.db"
    for _ in range(2):
        r = _cli("notebook", "run", str(tmp_path / "job.ipynb"), "--db", str(db))
        assert r.returncode == 0, r.stderr
    tmux("new-session", "-d", "-s", "tui", "-x", str(COLS), "-y", str(ROWS),
         f"{PROVTRACE} tui --db {db}; sleep 60")
    tmux.wait_for("2 runs in store")
    tmux("send-keys", "-t", "tui", "Enter")  # the newest run opens on its cells
    tmux.wait_for("(notebook)", "tab Next pane")
    for _ in range(8):  # tab through the panes, one key per repaint, to Resources
        before = tmux.screen()
        if "per cell" in before:
            break
        tmux("send-keys", "-t", "tui", "Tab")
        for _ in range(POLLS):
            if tmux.screen() != before:
                break
            time.sleep(0.1)
    screen = tmux.wait_for("per cell", "2 runs of this job", "peak RSS")
    bars = [line for line in screen.splitlines() if line.lstrip().startswith(("[0]", "[1]"))]
    assert len(bars) == 2 and all("█" in line for line in bars), screen
    assert "MiB" in bars[0], screen  # the 80 MB cell's peak
    assert any(ch in screen for ch in "▁▂▃▄▅▆▇"), f"no sparkline drawn:\n{screen}"


def test_the_tuis_own_entry_answers_as_the_verb_does(tmp_path):
    """`provtrace-tui` and `python -m provtrace.tui` run the same code as `provtrace tui`."""
    db = build_store(str(tmp_path / "prov.db"))
    for argv in ([PROVTRACE + "-tui"], [sys.executable, "-m", "provtrace.tui"]):
        r = subprocess.run([*argv, "--db", db], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 2 and r.stdout == "", argv
        assert r.stderr.count("\n") == 1 and "needs a terminal" in r.stderr, (argv, r.stderr)
        r = subprocess.run([*argv, "--db", str(tmp_path / "missing.db")], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode != 0 and r.stderr.startswith("provtrace: no store at"), (argv, r.stderr)
