"""Tracing configurations: how a workload command is wrapped, and what each tracer reports.

A configuration that cannot run here raises Unavailable from ``prepare``; its
rows then say why instead of holding numbers. Peers are located first and
installed only when allowed (``--no-install`` turns that off).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path

from bench import measure
from bench.workloads import Workload


class Unavailable(Exception):
    """A configuration cannot run on this machine; reason is the one line its rows print."""

    def __init__(self, config: str, reason: str):
        self.config = config
        self.reason = reason
        super().__init__(f"{config}: {reason}")


@dataclasses.dataclass
class Context:
    """What configurations share: scratch space, interpreter, provtrace entry point, policy."""

    workdir: Path
    python: str
    provtrace: str
    allow_install: bool
    probe_timeout_s: float = 180.0


@dataclasses.dataclass
class Records:
    """What a tracer says it captured in one run. None means the tracer does not report it."""

    emitted: int | None = None
    lost: int | None = None
    complete: bool | None = None
    detail: dict = dataclasses.field(default_factory=dict)


class Config:
    """Base: runs the workload command unchanged (the untraced baseline)."""

    name = "untraced"
    title = "no tracer"
    ebpf = False  # provtrace eBPF configurations are the ones the targets apply to
    env: dict[str, str] = {}  # added to the environment of its runs

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def prepare(self) -> None:
        """Locate/install/start what the configuration needs, or raise Unavailable."""

    def argv(self, wl: Workload, rundir: Path) -> list[str]:
        return wl.command()

    def daemon_pid(self) -> int | None:
        """pid of a tracer process that lives outside the launched tree, if any."""
        return None

    def before_run(self, rundir: Path) -> None:
        """Untimed: start a per-run tracer process."""

    def after_run(self, rundir: Path) -> Records:
        """Untimed: stop per-run tracers and read what was captured."""
        return Records()

    def close(self) -> None:
        """Stop anything prepare started."""


def _first_error_line(text: str) -> str:
    line = measure.last_line(text)
    return line[:300] if line else "no output"


def _locate(tool: str, ctx: Context) -> str | None:
    venv_bin = Path(ctx.python).parent / tool
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which(tool)


def _apt_install(package: str) -> str | None:
    """apt-get install package as root; returns None on success, else the reason."""
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    try:
        r = subprocess.run(["apt-get", "install", "-y", "-q", package], capture_output=True, text=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get install {package} failed: {e}"
    return None if r.returncode == 0 else f"apt-get install {package} failed: {_first_error_line(r.stderr)}"


def _pip_install(ctx: Context, package: str) -> str | None:
    try:
        r = subprocess.run([ctx.python, "-m", "pip", "install", "-q", package], capture_output=True,
                           text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"pip install {package} failed: {e}"
    return None if r.returncode == 0 else f"pip install {package} failed: {_first_error_line(r.stderr)}"


def _need_tool(ctx: Context, config: str, tool: str, apt_pkg: str) -> str:
    path = _locate(tool, ctx)
    if path is None and ctx.allow_install:
        reason = _apt_install(apt_pkg)
        if reason:
            raise Unavailable(config, reason)
        path = _locate(tool, ctx)
    if path is None:
        raise Unavailable(config, f"{tool} not found (apt-get install {apt_pkg})")
    return path


# ---------------------------------------------------------------- provtrace


def _iso_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _linked_tracepoints(pid: int) -> set[str]:
    """tp_name of the raw tracepoint links process pid holds (its fdinfo)."""
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return found
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^tp_name:\s*(\S+)", text, re.M)
        if m:
            found.add(m.group(1))
    return found


def root_span_s(processes: list[dict]) -> float | None:
    """exec-to-exit of the first traced process, from provtrace's own timestamps.

    This is the workload's wall time under tracing without the CLI's probe
    compile and drain, i.e. what the overhead targets are about.
    """
    timed = [(_iso_s(p.get("started")), _iso_s(p.get("ended"))) for p in processes]
    timed = [(a, b) for a, b in timed if a is not None and b is not None]
    if not timed:
        return None
    start, end = min(timed)
    return end - start


def provtrace_records(json_out: Path) -> Records:
    """Counts from a provtrace.run/1 document written by --json-out."""
    doc = json.loads(json_out.read_text())
    run = doc.get("run", {})
    counts = {k: len(doc.get(k) or []) for k in ("processes", "files", "renames", "network", "cells")}
    emitted = sum(v for k, v in counts.items() if k != "cells")  # cells are not events
    detail = dict(counts, span_s=root_span_s(doc.get("processes") or []))
    if run.get("lost_by_reason"):
        detail["lost_by_reason"] = run["lost_by_reason"]
    return Records(emitted=emitted, lost=run.get("lost_events"), complete=run.get("complete"),
                   detail=detail)


class _Provtrace(Config):
    backend_args: tuple[str, ...] = ()

    def _probe(self, argv: list[str], what: str) -> None:
        """Run `provtrace ... -- true` once; raise Unavailable with its error line if it fails."""
        probe_dir = self.ctx.workdir / f"probe-{self.name}"
        probe_dir.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run(argv, capture_output=True, text=True, cwd=probe_dir,
                               timeout=self.ctx.probe_timeout_s, env={**os.environ, **self.env})
        except subprocess.TimeoutExpired:
            raise Unavailable(self.name, f"{what} did not finish in {self.ctx.probe_timeout_s:.0f} s")
        except OSError as e:
            raise Unavailable(self.name, f"{what}: {e}")
        if r.returncode != 0:
            raise Unavailable(self.name, f"{what} exited {r.returncode}: {_first_error_line(r.stderr or r.stdout)}")

    def _store_args(self, rundir: Path) -> list[str]:
        return ["--db", str(rundir / "provtrace.db")]

    def argv(self, wl: Workload, rundir: Path) -> list[str]:
        pt = self.ctx.provtrace
        out = ["--json-out", str(rundir / "run.json")] if getattr(wl, "records", True) else []
        return [pt, "run", *self.backend_args, *self._store_args(rundir), *out, "--", *wl.command()]

    def after_run(self, rundir: Path) -> Records:
        path = rundir / "run.json"
        if not path.exists():
            return Records(detail={"error": "no --json-out file written"})
        try:
            return provtrace_records(path)
        except (ValueError, OSError) as e:
            return Records(detail={"error": f"unreadable --json-out: {e}"})


class ProvtraceEbpf(_Provtrace):
    name = "provtrace-ebpf"
    title = "provtrace run --backend ebpf (standalone: probe compile in the timed path)"
    ebpf = True
    backend_args = ("--backend", "ebpf")

    def prepare(self) -> None:
        if not Path(self.ctx.provtrace).exists() and not shutil.which(self.ctx.provtrace):
            raise Unavailable(self.name, f"{self.ctx.provtrace} not found (run setup.sh)")
        d = self.ctx.workdir / f"probe-{self.name}"
        self._probe([self.ctx.provtrace, "run", "--backend", "ebpf", "--db", str(d / "p.db"),
                     "--json-out", str(d / "p.json"), "--", "true"], "provtrace run --backend ebpf -- true")

    def argv(self, wl: Workload, rundir: Path) -> list[str]:
        if wl.notebook is None:
            return super().argv(wl, rundir)
        # The notebook path: provtrace executes it itself, with cell attribution.
        return [self.ctx.provtrace, "notebook", "run", str(wl.notebook), *self._store_args(rundir),
                "--json-out", str(rundir / "run.json"), "--output", str(rundir / "executed.ipynb")]


class ProvtraceEbpfBefore(ProvtraceEbpf):
    """provtrace-ebpf with the recording of issue 13 switched off: what failed opens
    and directory reads cost is provtrace-ebpf's ratio minus this one's, measured
    in the same run (report.reads_cost_checks)."""

    name = "provtrace-ebpf-before"
    title = "provtrace-ebpf, failed opens and directory reads off (PROVTRACE_CAPTURE_OFF)"
    ebpf = False  # a baseline for one comparison, not judged on the issue 5 targets
    env = {"PROVTRACE_CAPTURE_OFF": "failed-opens,dir-reads"}


class ProvtracePtrace(_Provtrace):
    name = "provtrace-ptrace"
    title = "provtrace run --backend ptrace"
    backend_args = ("--backend", "ptrace")

    def prepare(self) -> None:
        if not Path(self.ctx.provtrace).exists() and not shutil.which(self.ctx.provtrace):
            raise Unavailable(self.name, f"{self.ctx.provtrace} not found (run setup.sh)")
        d = self.ctx.workdir / f"probe-{self.name}"
        self._probe([self.ctx.provtrace, "run", "--backend", "ptrace", "--db", str(d / "p.db"),
                     "--json-out", str(d / "p.json"), "--", "true"],
                    "provtrace run --backend ptrace -- true")


class ProvtraceDaemon(_Provtrace):
    name = "provtrace-daemon"
    title = ("provtrace run --socket S (daemon started once; no probe compile in the timed path; "
             "the run read back from its store, untimed)")
    ebpf = True

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.daemon: measure.Background | None = None
        self.dir = ctx.workdir / "daemon"
        self.socket = self.dir / "provtrace.sock"
        self._label: str | None = None  # of the run argv() last built; after_run reads it back

    def _socket_ready(self) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(self.socket).st_mode)
        except OSError:
            return False

    def prepare(self) -> None:
        if not Path(self.ctx.provtrace).exists() and not shutil.which(self.ctx.provtrace):
            raise Unavailable(self.name, f"{self.ctx.provtrace} not found (run setup.sh)")
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [self.ctx.provtrace, "daemon", "--socket", str(self.socket), "--db", str(self.dir / "daemon.db")]
        self.daemon = measure.Background(argv, self.dir, self.dir / "daemon.log")
        if not self.daemon.wait_for(self._socket_ready, self.ctx.probe_timeout_s):
            why = ("exited " + str(self.daemon.proc.returncode)) if not self.daemon.alive() else "no socket"
            log = _first_error_line(self.daemon.log_text())
            self.close()
            raise Unavailable(self.name, f"provtrace daemon --socket S: {why}: {log}")
        try:
            self._probe([self.ctx.provtrace, "run", "--socket", str(self.socket), "--json-out",
                         str(self.dir / "p.json"), "--", "true"], "provtrace run --socket S -- true")
        except Unavailable:
            self.close()
            raise
        self.wait_detached()

    def _store_args(self, rundir: Path) -> list[str]:
        return ["--socket", str(self.socket)]

    def argv(self, wl: Workload, rundir: Path) -> list[str]:
        """`provtrace run --socket S --label L -- CMD`, as a user runs it: no --json-out.

        Exporting the run is a second round trip that a user's command does not
        wait for, so it stays out of the timed path: after_run reads the run
        back from the daemon's store, untimed, by its unique label.
        """
        self._label = f"bench:{rundir.name}:{time.time_ns()}" if getattr(wl, "records", True) else None
        label = ["--label", self._label] if self._label else []
        return [self.ctx.provtrace, "run", "--socket", str(self.socket), *label, "--", *wl.command()]

    def after_run(self, rundir: Path) -> Records:
        rec = self._read_back(rundir) if self._label else Records()
        self.wait_detached()
        return rec

    def _read_back(self, rundir: Path) -> Records:
        """Write the labelled run as rundir/run.json (provtrace show --json) and count it."""
        db, pt = str(self.dir / "daemon.db"), self.ctx.provtrace
        try:
            r = subprocess.run([pt, "runs", "--json", "--db", db], capture_output=True, text=True, timeout=300)
            ids = [run["id"] for run in json.loads(r.stdout or "[]") if run.get("label") == self._label]
            if not ids:
                return Records(detail={"error": f"run labelled {self._label} not in the daemon's store: "
                                                + _first_error_line(r.stderr)})
            # through the daemon, which answers once the run's completion (context,
            # fingerprints, end: written after the client returned) is stored
            r = subprocess.run([pt, "show", ids[-1], "--json", "--socket", str(self.socket)],
                               capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired, ValueError) as e:
            return Records(detail={"error": f"reading the run back from the daemon's store: {e}"})
        if r.returncode != 0:
            return Records(detail={"error": f"provtrace show --json exited {r.returncode}: "
                                            + _first_error_line(r.stderr)})
        (rundir / "run.json").write_text(r.stdout)
        return super().after_run(rundir)

    def wait_detached(self) -> bool:
        """Wait (untimed) until the idle daemon has let go of raw sys_exit.

        While its hook is attached every syscall on the machine pays for it, so
        the next configuration's run, or the untraced baseline, would be taxed.
        The daemon detaches it after IDLE_DETACH_S (2 s) with nothing traced.
        """
        pid = self.daemon_pid()
        deadline = time.monotonic() + 10.0
        while pid is not None and time.monotonic() < deadline:
            if "sys_exit" not in _linked_tracepoints(pid):
                return True
            time.sleep(0.2)
        return False

    def daemon_pid(self) -> int | None:
        return self.daemon.pid if self.daemon and self.daemon.alive() else None

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


# ---------------------------------------------------------------- peers


class Strace(Config):
    name = "strace"
    title = "strace -f -o /dev/null"
    extra: tuple[str, ...] = ()

    def prepare(self) -> None:
        self.bin = _need_tool(self.ctx, self.name, "strace", "strace")
        if self.extra:
            r = subprocess.run([self.bin, "-f", *self.extra, "-o", "/dev/null", "true"],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise Unavailable(self.name, f"strace {' '.join(self.extra)}: {_first_error_line(r.stderr)}")

    def argv(self, wl: Workload, rundir: Path) -> list[str]:
        return [self.bin, "-f", *self.extra, "-o", "/dev/null", "--", *wl.command()]


class StraceSeccomp(Strace):
    name = "strace-seccomp"
    title = "strace -f --seccomp-bpf -e trace=%file,%process,%network -o /dev/null"
    extra = ("--seccomp-bpf", "-e", "trace=%file,%process,%network")


class ReproZip(Config):
    name = "reprozip"
    title = "reprozip trace --dont-identify-packages (ptrace, C extension)"

    def prepare(self) -> None:
        path = _locate("reprozip", self.ctx)
        if path is None and self.ctx.allow_install:
            reason = _pip_install(self.ctx, "reprozip")
            if reason:
                raise Unavailable(self.name, reason)
            path = _locate("reprozip", self.ctx)
        if path is None:
            raise Unavailable(self.name, "reprozip not found (pip install reprozip)")
        self.bin = path
        d = self.ctx.workdir / "probe-reprozip"
        shutil.rmtree(d, ignore_errors=True)
        try:
            r = subprocess.run([self.bin, "trace", "-d", str(d), "--dont-identify-packages", "true"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(self.name, f"reprozip trace true: {e}")
        if r.returncode != 0 or not (d / "trace.sqlite3").exists():
            raise Unavailable(self.name, f"reprozip trace true: {_first_error_line(r.stderr)}")

    def argv(self, wl: Workload, rundir: Path) -> list[str]:
        # Package identification (dpkg -S per file) is packing work, not tracing: left out.
        return [self.bin, "trace", "-d", str(rundir / "rz"), "--dont-identify-packages", *wl.command()]

    def after_run(self, rundir: Path) -> Records:
        db = rundir / "rz" / "trace.sqlite3"
        if not db.exists():
            return Records(detail={"error": "no trace.sqlite3 written"})
        con = sqlite3.connect(db)
        try:
            detail = {}
            for table in ("processes", "opened_files", "executed_files", "connections"):
                try:
                    detail[table] = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                except sqlite3.Error:
                    pass
        finally:
            con.close()
        # ptrace stops the tracee per event, so it cannot drop any: lost is 0 by construction.
        return Records(emitted=sum(detail.values()), lost=0, complete=True, detail=detail)


BPFTRACE_SCRIPT = """\
// The floor: count the same tracepoints provtrace hooks, do nothing else.
BEGIN { printf("ready\\n"); }
tracepoint:syscalls:sys_enter_openat,
tracepoint:syscalls:sys_enter_read,
tracepoint:syscalls:sys_enter_write,
tracepoint:syscalls:sys_enter_close,
tracepoint:sched:sched_process_fork,
tracepoint:sched:sched_process_exec,
tracepoint:sched:sched_process_exit
{ @[probe] = count(); }
"""


class BpftraceFloor(Config):
    name = "bpftrace-floor"
    title = "bpftrace counting openat/read/write/close + sched fork/exec/exit (attached before the run)"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.proc: measure.Background | None = None

    def prepare(self) -> None:
        self.bin = _need_tool(self.ctx, self.name, "bpftrace", "bpftrace")
        self.script = self.ctx.workdir / "floor.bt"
        self.script.write_text(BPFTRACE_SCRIPT)
        d = self.ctx.workdir / "probe-bpftrace"
        d.mkdir(parents=True, exist_ok=True)
        try:
            self.before_run(d)
        except Unavailable:
            self.close()
            raise
        self.after_run(d)

    def before_run(self, rundir: Path) -> None:
        out = rundir / "bpftrace.out"
        # -B line: with -o or a file on stdout, bpftrace buffers fully and "ready"
        # would only show at exit.
        self.proc = measure.Background([self.bin, "-B", "line", str(self.script)], rundir,
                                       rundir / "bpftrace.log", stdout=out)

        def ready() -> bool:
            return out.exists() and b"ready" in out.read_bytes()

        if not self.proc.wait_for(ready, 60):
            log = [ln for ln in self.proc.log_text().splitlines() if "RLIMIT_MEMLOCK" not in ln]
            self.close()
            raise Unavailable(self.name, f"bpftrace did not attach: {_first_error_line(chr(10).join(log))}")

    def daemon_pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.alive() else None

    def after_run(self, rundir: Path) -> Records:
        self.close()
        counts = {}
        out = rundir / "bpftrace.out"
        if out.exists():
            for m in re.finditer(r"@\[(\S+)\]: (\d+)", out.read_text(errors="replace")):
                counts[m.group(1).split(":")[-1]] = int(m.group(2))
        # Counts are system-wide hook firings; an in-kernel map update cannot be lost.
        return Records(emitted=sum(counts.values()) if counts else None, lost=0, complete=True, detail=counts)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


HOOKFLOOR_SCRIPT = Path(__file__).resolve().with_name("hookfloor.py")


class HookFloor(Config):
    """Empty programs on provtrace's own raw tracepoints: what merely hooking costs a syscall."""

    name = "ebpf-hook-floor"
    title = ("empty eBPF programs on the raw tracepoints provtrace hooks (sys_exit, sched fork/exec/exit): "
             "the least any design like ours costs (attached before the run)")

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.proc: measure.Background | None = None

    def prepare(self) -> None:
        d = self.ctx.workdir / "probe-hookfloor"
        d.mkdir(parents=True, exist_ok=True)
        self.before_run(d)
        self.after_run(d)

    def before_run(self, rundir: Path) -> None:
        out = rundir / "hookfloor.out"
        self.proc = measure.Background([self.ctx.python, str(HOOKFLOOR_SCRIPT)], rundir,
                                       rundir / "hookfloor.log", stdout=out)

        def ready() -> bool:
            return out.exists() and b"ready" in out.read_bytes()

        if not self.proc.wait_for(ready, self.ctx.probe_timeout_s):
            self.close()  # closes the log, so the error line below is complete
            raise Unavailable(self.name, f"hookfloor.py did not attach: "
                                         f"{_first_error_line((rundir / 'hookfloor.log').read_text(errors='replace'))}")

    def daemon_pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.alive() else None

    def after_run(self, rundir: Path) -> Records:
        self.close()
        # It counts nothing; its programs have no maps, so nothing can be lost.
        return Records(emitted=None, lost=0, complete=True)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


ALL = (Config, ProvtraceEbpf, ProvtraceEbpfBefore, ProvtraceDaemon, ProvtracePtrace, Strace, StraceSeccomp, ReproZip, BpftraceFloor,
       HookFloor)
NAMES = tuple(c.name for c in ALL)


def build(names: list[str], ctx: Context) -> list[Config]:
    """Instantiate the named configurations in canonical order; untraced is always included."""
    by_name = {c.name: c for c in ALL}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    wanted = set(names) | {"untraced"}
    return [by_name[n](ctx) for n in NAMES if n in wanted]
