"""The traced program behaves exactly as it would untraced, on every path.

Each check runs the same command untraced and under the real `provtrace run`
CLI, by each path a user has: the probes standalone (`--backend ebpf`), a
real daemon (`--socket S`, the client forks the command), and `--backend
ptrace`; it compares what the program itself observes: its signal
dispositions and mask (also when provtrace is started with SIGINT ignored
and a signal blocked), $0 of a #! script, $PPID against the stored parent,
`yes | head -1` under pipefail, ^C typed at a real terminal (a pty), and
SIGTERM, SIGHUP and SIGINT sent to provtrace alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import termios
import uuid

import pytest

from .helpers import PROVTRACE, wait_for

pytestmark = pytest.mark.privileged

PATHS = ("ebpf", "daemon", "ptrace")
SIGNAL_LINES = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]
PIPEFAIL = ["bash", "-c", "set -o pipefail; yes | head -1"]
WAIT_S = 120  # a bound on waits, never a timing assertion


class Provtrace:
    """`provtrace run` by one path, writing the run's JSON next to the store."""

    def __init__(self, path: str, tmp, daemon: dict | None) -> None:
        self.path, self.tmp, self.daemon = path, tmp, daemon
        self.n = 0

    def argv(self, cmd: list[str]) -> tuple[list[str], str]:
        self.n += 1
        out = str(self.tmp / f"run{self.n}.json")
        if self.path == "daemon":
            opts = ["--socket", self.daemon["socket"]]
        else:
            opts = ["--backend", self.path, "--db", str(self.tmp / "store.db")]
        return [PROVTRACE, "run", *opts, "--json-out", out, "--", *cmd], out

    def run(self, cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess, dict]:
        argv, out = self.argv(cmd)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
        with open(out) as f:
            return r, json.load(f)


@pytest.fixture(params=PATHS)
def provtrace(request, tmp_path):
    daemon = request.getfixturevalue("daemon") if request.param == "daemon" else None
    return Provtrace(request.param, tmp_path, daemon)


def _untraced(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def _signal_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Sig")]


def test_signal_dispositions_and_mask_are_provtraces_own(provtrace):
    """Not Python's: SIGPIPE and SIGXFSZ not ignored, nor SIGINT (ptrace ignored it)."""
    plain = _untraced(SIGNAL_LINES)
    traced, doc = provtrace.run(SIGNAL_LINES)
    assert traced.returncode == 0, traced.stderr
    assert _signal_lines(traced.stdout) == _signal_lines(plain.stdout) == ["SigBlk:\t0000000000000000",
                                                                          "SigIgn:\t0000000000000000"]
    assert doc["run"]["exit_code"] == 0


def _started_odd() -> None:
    """As a parent may start provtrace: SIGINT ignored (a background job), SIGUSR1 blocked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def test_the_command_inherits_what_provtrace_was_started_with(provtrace):
    plain = _untraced(SIGNAL_LINES, preexec_fn=_started_odd)
    traced, _ = provtrace.run(SIGNAL_LINES, preexec_fn=_started_odd)
    assert traced.returncode == 0, traced.stderr
    want = _signal_lines(plain.stdout)
    assert want == [f"SigBlk:\t{1 << (signal.SIGUSR1 - 1):016x}", f"SigIgn:\t{1 << (signal.SIGINT - 1):016x}"]
    assert _signal_lines(traced.stdout) == want


def test_yes_head_under_pipefail_dies_of_sigpipe_as_untraced(provtrace):
    plain = _untraced(PIPEFAIL)
    traced, doc = provtrace.run(PIPEFAIL)
    assert plain.returncode == 141 and plain.stdout == "y\n" and "Broken pipe" not in plain.stderr
    assert (traced.returncode, traced.stdout) == (141, "y\n")
    assert "Broken pipe" not in traced.stderr and "yes:" not in traced.stderr, traced.stderr
    assert doc["run"]["exit_code"] == 141


def test_a_script_sees_the_same_dollar_zero(provtrace, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    script = work / "s.sh"
    script.write_text('#!/bin/sh\necho "$0"\n')
    script.chmod(0o755)
    plain = _untraced(["./s.sh"], cwd=work)
    traced, doc = provtrace.run(["./s.sh"], cwd=work)
    assert plain.stdout == "./s.sh\n"
    assert traced.stdout == plain.stdout, traced.stderr
    root = [p for p in doc["processes"] if p["ppid"] not in {q["pid"] for q in doc["processes"]}]
    assert [p["argv"] for p in root] == [["/bin/sh", "./s.sh"]], "the interpreter got the path as given"


def test_the_stored_parent_is_the_one_the_command_saw(provtrace):
    argv, out = provtrace.argv(["sh", "-c", 'echo "$PPID"'])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    seen = int(stdout)
    assert seen == proc.pid, "the command's parent is provtrace (the client, through a daemon)"
    with open(out) as f:
        doc = json.load(f)
    pids = {p["pid"] for p in doc["processes"]}
    roots = [p for p in doc["processes"] if p["ppid"] not in pids]
    assert [p["ppid"] for p in roots] == [seen]


def _process_with_arg(marker: str) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                    return int(pid)
        except OSError:
            continue
    return None


def _marker() -> str:
    """A sleep duration no other process on this host uses."""
    return f"600.{uuid.uuid4().int % 10**9:09d}"


def _stop(proc: subprocess.Popen, marker: str) -> None:
    """After a failure: nothing this test started is left running (provtrace, its sleep)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    left = _process_with_arg(marker)
    if left is not None:
        os.kill(left, signal.SIGKILL)


def _controlling_tty() -> None:
    """In the child: a new session whose controlling terminal is the pty on stdin."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_ctrl_c_at_a_terminal_stops_the_command(provtrace):
    marker = _marker()
    argv, out = provtrace.argv(["sleep", marker])
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_tty)
    try:
        os.close(slave)
        slave = -1
        wait_for(lambda: _process_with_arg(marker), WAIT_S, "the traced sleep to start")
        os.write(master, b"\x03")  # ^C: the terminal signals its whole foreground group
        code = proc.wait(timeout=WAIT_S)
        os.set_blocking(master, False)
        try:
            said = os.read(master, 65536).decode(errors="replace")
        except OSError:
            said = ""
    finally:
        _stop(proc, marker)
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert code == 130, said
    assert "Traceback" not in said and "interrupted" not in said, said
    assert _process_with_arg(marker) is None
    with open(out) as f:
        assert json.load(f)["run"]["exit_code"] == 130


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_a_signal_sent_to_provtrace_alone_reaches_the_command(provtrace, sig):
    """kill(1) on provtrace's pid: the command gets it and the exit code says so (128+N).
    Not in a terminal's foreground, a SIGINT too can only have been sent to provtrace."""
    marker = _marker()
    argv, out = provtrace.argv(["sleep", marker])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: _process_with_arg(marker), WAIT_S, "the traced sleep to start")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        _stop(proc, marker)
    assert proc.returncode == 128 + sig, stderr
    assert _process_with_arg(marker) is None
    with open(out) as f:
        assert json.load(f)["run"]["exit_code"] == 128 + sig
