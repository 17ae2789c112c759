"""Backend parity: the probes and ptrace give the same provtrace.run/1 JSON for the same program.

docs/ptrace.md promises that the backend name is the only difference. Every
scenario of the shared list (test_ptrace.SHARED, the semantic traps of
test_capture_semantics.py) runs once under the loaded probes and once under
ptrace, each in a fresh folder; the documents its trace() calls return are
compared whole, after normalising only what differs between any two runs of
one program: pids (named by argv and start order), times, run ids, the
backend name, the folder, and the values (not the presence) of resource figures. A 32-bit executable is one more scenario.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import re
import shutil
import subprocess

import pytest

from provtrace.tracer.capture.ptrace import PtraceCapture

from . import helpers
from . import test_capture_semantics as SEM
from .helpers import accesses
from .test_ptrace import SHARED

pytestmark = pytest.mark.privileged

_TIME_KEYS = frozenset({"started", "ended", "first", "last", "time", "ts", "at"})
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
# What the kernel or the program picks afresh each run: a pipe's inode, an
# ephemeral port, the random part of a temporary name (sed -i's sedXXXXXX).
_PID_KEYS = frozenset({"pid", "ppid", "readers", "writers"})
# Peak RSS of a process of a few pages: the probes read the mm's folded
# counters, which per-CPU deltas have not reached yet, and then report null
# (docs/resources.md); ptrace reads /proc's VmHWM, which sums them.
_MAY_BE_UNKNOWN = frozenset({"peak_rss_bytes"})
_RANDOM_NAMES = re.compile(r"/sed[A-Za-z0-9]{6}\b")


def _ephemeral_ports() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
    return range(low, high + 1)


def _record_docs(monkeypatch) -> list[dict]:
    """Every document the scenario's trace() calls return, in order."""
    docs: list[dict] = []
    real = helpers.trace

    def recording(*args, **kw):
        code, doc = real(*args, **kw)
        docs.append(doc)
        return code, doc

    monkeypatch.setattr(helpers, "trace", recording)  # trace_py calls it through the module
    monkeypatch.setattr(SEM, "trace", recording)
    return docs


def _run(scenario, cap, base, monkeypatch) -> list[dict]:
    base.mkdir()
    work = base / "w"
    work.mkdir()
    docs = _record_docs(monkeypatch)
    kwargs = {"tmp_path": base} if "tmp_path" in inspect.signature(scenario).parameters else {}
    scenario(cap, work, **kwargs)
    monkeypatch.undo()
    return docs


def normalised(doc: dict, base: str) -> dict:
    """doc with pids named by (argv, start order), times, ids, backend and folder taken out."""
    doc = json.loads(_RANDOM_NAMES.sub("/sedXXXXXX", json.dumps(doc).replace(base, "BASE")))
    order = sorted(doc["processes"], key=lambda p: (p["started"] or "", p["pid"]))
    seen: dict[str, int] = {}
    names: dict[int, str] = {}
    for p in order:
        argv = " ".join(p["argv"])
        seen[argv] = seen.get(argv, 0) + 1
        names[p["pid"]] = f"{argv}#{seen[argv]}"
    doc["run"].pop("id")
    doc["run"].pop("backend")
    # Counts a table entry the model found stale and corrected from the I/O record's inode:
    # the eBPF path reads /proc for an fd it does not know (a pipe: pipe2 is not traced)
    # up to one poll later, when the process may have reused the number; ptrace reads it
    # with the tracee stopped. The records are the same; only this count differs.
    doc["run"]["gaps"].pop("stale_fd_entry", None)
    ephemeral = _ephemeral_ports()

    def pids(x):
        return [pids(y) for y in x] if isinstance(x, list) else names.get(x, "other")

    def walk(v):
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k in _TIME_KEYS or k.endswith("_ns") or k.endswith("_us"):
                    continue
                if k in _PID_KEYS:
                    out[k] = sorted(pids(x)) if isinstance(x, list) else pids(x)
                elif k == "resources" and isinstance(x, dict):
                    # measurements (CPU, peak RSS, wall, bytes): both backends must give the
                    # same figures, or both none; their values differ between any two runs
                    out[k] = {m: ("MEASURED" if isinstance(n, (int, float)) or m in _MAY_BE_UNKNOWN else n)
                              for m, n in x.items()}
                elif k == "inode" or (k == "port" and x in ephemeral):
                    out[k] = "KERNEL"
                elif k == "path_b64":
                    raw = base64.b64decode(x).replace(os.fsencode(base), b"BASE")
                    out[k] = base64.b64encode(raw).decode()
                else:
                    out[k] = walk(x)
            return out
        if isinstance(v, list):
            return sorted((walk(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
        if isinstance(v, str):
            return _ISO.sub("TIME", v)
        return v

    return walk(doc)


def _differences(a: dict, b: dict, where: str = "") -> list[str]:
    """Paths where two normalised documents differ, with both values (short)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: ebpf={json.dumps(a)[-150:]} ptrace={json.dumps(b)[-150:]}"]


def assert_same_json(capture, scenario, tmp_path, monkeypatch) -> None:
    views = []
    for name, cap in (("a", capture), ("b", PtraceCapture())):  # same length: paths cut alike
        base = tmp_path / name
        docs = _run(scenario, cap, base, monkeypatch)
        views.append([normalised(d, str(base)) for d in docs])
    ebpf, ptrace = views
    assert len(ebpf) == len(ptrace)
    diffs = [d for a, b in zip(ebpf, ptrace) for d in _differences(a, b)]
    assert not diffs, "\n".join(diffs[:40])


@pytest.mark.parametrize("scenario", SHARED, ids=[f.__name__[5:] for f in SHARED])
def test_same_json_on_both_backends(scenario, capture, tmp_path, monkeypatch):
    assert_same_json(capture, scenario, tmp_path, monkeypatch)


_I386_PROGRAM = """\
# A static i386 program: creates out32.txt, writes 3 bytes, exits 7.
    .globl _start
    .text
_start:
    movl $5, %eax          # open(path, O_WRONLY|O_CREAT|O_TRUNC, 0644)
    movl $path, %ebx
    movl $0x241, %ecx
    movl $0644, %edx
    int $0x80
    movl %eax, %ebx        # write(fd, msg, 3)
    movl $4, %eax
    movl $msg, %ecx
    movl $3, %edx
    int $0x80
    movl $6, %eax          # close(fd)
    int $0x80
    movl $1, %eax          # exit(7)
    movl $7, %ebx
    int $0x80
    .data
path: .asciz "out32.txt"
msg:  .ascii "32\\n"
"""


def scenario_32bit_executable(capture, work):
    """A 32-bit image's syscalls are not decoded: both backends count the same ones as lost."""
    src, obj, exe = work.parent / "p32.S", work.parent / "p32.o", work.parent / "p32"
    src.write_text(_I386_PROGRAM)
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-o", str(exe), str(obj)], check=True)
    code, doc = helpers.trace(capture, [str(exe)], cwd=work)
    assert code == 7 and (work / "out32.txt").read_text() == "32\n"
    run = doc["run"]
    assert run["lost_by_reason"]["compat_syscalls"] == 3, "open, write, close (not the exec, not exit)"
    assert run["complete"] is False
    assert [p["exe"] for p in doc["processes"]] == [str(exe)]
    assert accesses(doc, work / "out32.txt") == set(), "not decoded: the loss says so"


def test_32bit_executable_same_json_on_both_backends(tmp_path, monkeypatch):
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("needs binutils (as, ld) to build the i386 program")
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    from provtrace.tracer.capture.ebpf import EbpfCapture

    # Probes of its own: the session's keep counting lost events for their whole life, and
    # other tests check that their workloads lost none.
    own = EbpfCapture()
    try:
        own.calibrate_created_bit()
        assert_same_json(own, scenario_32bit_executable, tmp_path, monkeypatch)
    finally:
        own.close()


def scenario_commands_named_every_way(capture, work):
    """A #! script given as ./s.sh that runs a symlink by relative path, a PATH search past
    missing directories, a missing command and an exec: the same exe and argv on both."""
    (work / "tlink").symlink_to(shutil.which("true"))
    script = work / "s.sh"
    script.write_text("#!/bin/sh\n./tlink\nenv PATH=/nonexistent:/usr/local/bin:/usr/bin:/bin true\n"
                      "no_such_command_here 2>/dev/null\nsh -c 'exec true'\nexit 4\n")
    script.chmod(0o755)
    code, doc = helpers.trace(capture, ["./s.sh"], cwd=work)
    assert code == 4
    by_argv = {tuple(p["argv"]): p["exe"] for p in doc["processes"]}
    assert by_argv[("/bin/sh", "./s.sh")] == "/bin/sh", "the script's $0 is the path as given"
    assert by_argv[("./tlink",)] == str(work / "tlink")


def test_commands_named_every_way_same_json_on_both_backends(capture, tmp_path, monkeypatch):
    assert_same_json(capture, scenario_commands_named_every_way, tmp_path, monkeypatch)
