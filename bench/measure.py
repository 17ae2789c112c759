"""Measurement primitives: wait for a quiet machine, time a process tree, read a daemon's CPU and RSS.

CPU time of a launched command comes from wait4(2): the rusage of the child
includes every descendant it reaped, so a tracer that forks the workload
(strace, reprozip, ``provtrace run``) is charged together with it. A tracer
that runs as a separate long-lived process (the provtrace daemon, bpftrace)
is charged by reading utime+stime from /proc/PID/stat before and after.
Kernel-side probe cost lands in the traced task's system time, so it is
counted with the workload.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Quiet:
    """Outcome of a wait for quiet: how long it took and how busy the CPUs were at the end."""

    waited_s: float
    busy_fraction: float
    quiet: bool


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One timed execution of a command (and the process tree it reaped)."""

    argv: tuple[str, ...]
    exit_code: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kb: int
    root_hwm_kb: int
    timed_out: bool
    stderr_tail: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from the first line of /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice;
    # guest time is already included in user/nice, so leave it out of total.
    # iowait counts as busy: a disk still flushing the last run is not quiet.
    total = sum(fields[:8])
    idle = fields[3]
    return total - idle, total


def busy_fraction(interval_s: float) -> float:
    """Fraction of all CPUs' time that was busy over the next interval_s seconds."""
    b0, t0 = _cpu_times()
    time.sleep(interval_s)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(1, t1 - t0)


def wait_for_quiet(threshold: float = 0.15, window_s: float = 0.5, cap_s: float = 10.0) -> Quiet:
    """sync(2), then block until one window_s sample of /proc/stat is below threshold busy, or cap_s passes.

    The sync flushes what earlier runs left dirty (tracer stores, deleted
    churn files), which would otherwise be written back during the next run.
    """
    start = time.monotonic()
    os.sync()
    while True:
        busy = busy_fraction(window_s)
        waited = time.monotonic() - start
        if busy <= threshold:
            return Quiet(waited, busy, True)
        if waited >= cap_s:
            return Quiet(waited, busy, False)


def _tail(path: Path | None, n_bytes: int = 4000) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - n_bytes))
        return f.read().decode("utf-8", "replace")


def last_line(text: str) -> str:
    """The last non-empty line of text, which is where CLIs put their one-line error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by pid (the commands are started in their own session)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def run_timed(argv: list[str], cwd: Path, timeout_s: float, stdout: Path | None = None,
              stderr: Path | None = None, env: dict[str, str] | None = None) -> RunResult:
    """Run argv in its own session; return wall time and the wait4 rusage of its tree.

    ru_maxrss is the largest process of the tree (often the workload), so the
    peak RSS of the launched root itself (for a child-style tracer: the tracer)
    is sampled from /proc/PID/status VmHWM every 100 ms while it runs.
    On timeout the whole process group is killed and timed_out is set.
    """
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL
    err = open(stderr, "wb") if stderr else subprocess.DEVNULL
    timed_out = threading.Event()
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, start_new_session=True)

        def on_timeout() -> None:
            timed_out.set()
            kill_group(proc.pid)

        timer = threading.Timer(timeout_s, on_timeout)
        timer.start()
        done = threading.Event()
        hwm = [0]

        def sample_hwm() -> None:
            while not done.wait(0.1):
                hwm[0] = max(hwm[0], proc_mem_kb(proc.pid).get("VmHWM", 0))

        sampler = threading.Thread(target=sample_hwm, daemon=True)
        sampler.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            done.set()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        # Leftover daemons of the workload would skew the next run.
        kill_group(proc.pid)
    finally:
        for f in (out, err):
            if hasattr(f, "close"):
                f.close()
    sampler.join()
    return RunResult(tuple(argv), proc.returncode, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss,
                     hwm[0], timed_out.is_set(), _tail(stderr))


def proc_cpu_s(pid: int) -> float | None:
    """utime+stime of pid's threads plus its reaped children, in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is state (field 3); utime..cstime are fields 14..17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS (kB) of pid from /proc/PID/status; empty if it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants, from /proc/*/stat ppid links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of pid and its live descendants (a daemon may fork helpers)."""
    return sum(c for c in (proc_cpu_s(p) for p in tree_pids(pid)) if c is not None)


def tree_mem_kb(pid: int) -> dict[str, int]:
    """Summed VmHWM and VmRSS of pid and its live descendants."""
    total = {"VmHWM": 0, "VmRSS": 0}
    for p in tree_pids(pid):
        for k, v in proc_mem_kb(p).items():
            total[k] += v
    return total


class Background:
    """A long-lived tracer process (daemon, bpftrace) started in its own session."""

    def __init__(self, argv: list[str], cwd: Path, log: Path, stdout: Path | None = None,
                 env: dict[str, str] | None = None):
        """Start argv; stderr (and stdout, unless a stdout path is given) go to log."""
        self.argv = argv
        self.log = log
        self._log_f = open(log, "wb")
        self._out_f = open(stdout, "wb") if stdout else None
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=self._out_f or self._log_f,
                                     stderr=self._log_f if self._out_f else subprocess.STDOUT,
                                     env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        self._log_f.flush()
        return _tail(self.log)

    def wait_for(self, predicate, timeout_s: float) -> bool:
        """Poll predicate() every 50 ms while the process lives; True once it holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            if not self.alive():
                return False
            time.sleep(0.05)
        return False

    def stop(self, first: int = signal.SIGINT, grace_s: float = 10.0) -> int | None:
        """SIGINT (so tools print their summaries), then SIGTERM, then SIGKILL the group."""
        for sig, wait in ((first, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        kill_group(self.proc.pid)
        self._log_f.close()
        if self._out_f:
            self._out_f.close()
        return self.proc.returncode
