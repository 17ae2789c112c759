"""The ptrace backend on real processes: the probes' scenarios, then what only ptrace must get right.

The semantic scenarios of test_capture_semantics.py run here unchanged with a
PtraceCapture in place of the loaded probes (same helpers, same assertions),
in both modes: with the seccomp-bpf filter (the default) and stepping every
syscall (the fallback when seccomp is refused). No root is needed for most of
this file; the test as a real non-root user needs root to create that user.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from provtrace.tracer.capture.ptrace import PtraceCapture
from provtrace.tracer.model import events as E
from provtrace.tracer.pipeline.command import TracedCommand
from provtrace.tracer.store import sqlite as S

from . import test_capture_semantics as SEM
from .helpers import PY, accesses, entries, trace, trace_py

SHARED = [
    SEM.test_relative_paths_follow_chdir,
    SEM.test_at_calls_resolve_against_dirfd_and_fchdir,
    SEM.test_access_is_what_was_done_not_open_flags,
    SEM.test_create_versus_overwrite,
    SEM.test_dup_fcntl_and_inheritance_across_fork,
    SEM.test_close_on_exec_drops_fd_but_inherited_fd_survives,
    SEM.test_rename_variants_and_atomic_saves,
    SEM.test_unlink_and_truncate,
    SEM.test_exec_scripts_with_shebang_and_execveat,
    SEM.test_argv_is_what_the_new_image_runs_with,
    SEM.test_close_and_reopen_in_two_threads_keep_exact_counts,
    SEM.test_shared_libraries_are_mapped,
    SEM.test_threads_fold_and_fork_vfork_children_have_parents,
    SEM.test_sockets_inet_inet6_unix,
    SEM.test_pipes_link_processes_in_lineage,
    SEM.test_non_utf8_names_are_kept,
    SEM.test_exit_codes_and_signals,
    SEM.test_first_syscalls_are_seen,
    SEM.test_big_sequential_read_is_one_record,
    SEM.test_deleted_cwd_does_not_break_the_run,
    SEM.test_path_at_path_max,
    SEM.test_missing_command_is_a_clear_error,
]


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    return d


@pytest.fixture(params=["seccomp", "stepping"])
def ptrace_capture(request):
    return PtraceCapture(seccomp=request.param == "seccomp")


@pytest.mark.parametrize("scenario", SHARED, ids=[f.__name__[5:] for f in SHARED])
def test_probe_scenario_under_ptrace(scenario, ptrace_capture, work, tmp_path):
    kwargs = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(scenario).parameters else {}
    scenario(ptrace_capture, work, **kwargs)
    if ptrace_capture.use_seccomp and ptrace_capture.stops:  # (a missing command never starts)
        assert ptrace_capture.seccomp_active, "the filter was installed, so only traced syscalls stopped"


def _data_view(doc):
    """What both backends must agree on: processes, data files, renames, sockets (by argv, not pid)."""
    argv = {p["pid"]: " ".join(p["argv"]) for p in doc["processes"]}
    procs = sorted((argv[p["pid"]], p["exe"], p["exit_code"], argv.get(p["ppid"])) for p in doc["processes"])
    files = sorted((argv[f["pid"]], f["path"], tuple(f["access"]), f["bytes_read"], f["bytes_written"])
                   for f in doc["files"] if f["kind"] in ("data", "temp") and "/bash_jobs" not in f["path"])
    renames = sorted((argv[r["pid"]], r["from"], r["to"]) for r in doc["renames"])
    net = sorted((argv[n["pid"]], n["op"], n["family"]) for n in doc["network"])
    return procs, files, renames, net


@pytest.mark.privileged
def test_same_records_as_ebpf(capture, tmp_path):
    """One workload, traced by the probes and by ptrace: the same processes, files, renames, sockets."""
    script = ("cat in.csv | sort > sorted.csv && cut -d, -f1 sorted.csv > k.tmp && mv k.tmp k.txt && "
              f"{PY} -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); "
              "open('py.txt', 'w').write('p')\" && rm sorted.csv && exit 3")
    views = []
    for n, cap in enumerate((capture, PtraceCapture())):
        work = tmp_path / f"w{n}"
        work.mkdir()
        (work / "in.csv").write_text("b,2\na,1\n")
        code, doc = trace(cap, ["sh", "-c", script], cwd=work, db=str(tmp_path / "s.db"))
        assert code == 3
        views.append(_data_view(json.loads(json.dumps(doc).replace(str(work), "W"))))
    assert views[0] == views[1]
    procs, files, renames, net = views[1]
    assert [p[0] for p in procs if p[0].startswith("mv ")] == ["mv k.tmp k.txt"]
    assert ("mv k.tmp k.txt", "W/k.tmp", "W/k.txt") in renames
    assert any(f[1] == "W/sorted.csv" and "delete" in f[2] for f in files)
    assert [n[1:] for n in net] == [("bind", "inet")]


def test_run_records_backend_and_exit_code(work):
    code, doc = trace(PtraceCapture(), ["sh", "-c", "echo x > made.txt; exit 5"], cwd=work)
    assert code == 5
    assert doc["run"]["backend"] == "ptrace" and doc["run"]["exit_code"] == 5
    assert doc["run"]["complete"] is True and doc["run"]["lost_events"] == 0
    assert accesses(doc, work / "made.txt") == {"create", "write"}


def test_deaths_by_signal_are_exit_codes(work):
    code, doc = trace_py(PtraceCapture(), """
        import os, signal
        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGSEGV)
        os.waitpid(pid, 0)
        os.kill(os.getpid(), signal.SIGTERM)
    """, cwd=work)
    assert code == 128 + signal.SIGTERM
    by_exit = sorted(p["exit_code"] for p in doc["processes"])
    assert by_exit == [128 + signal.SIGSEGV, 128 + signal.SIGTERM]


def test_signals_reach_their_handlers(work):
    """Signals are delivered (re-injected), not swallowed by the tracer."""
    code, doc = trace_py(PtraceCapture(), """
        import os, signal, time
        got = []
        signal.signal(signal.SIGUSR1, lambda *_: got.append("usr1"))
        os.kill(os.getpid(), signal.SIGUSR1)
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, lambda *_: (open("child_term.txt", "w").write("t"), os._exit(9)))
            os.write(ready_w, b"r")
            while True:
                time.sleep(0.01)
        os.read(ready_r, 1)
        os.kill(pid, signal.SIGTERM)
        _, st = os.waitpid(pid, 0)
        open("parent.txt", "w").write(",".join(got) + f" {os.waitstatus_to_exitcode(st)}")
    """, cwd=work)
    assert code == 0
    assert (work / "parent.txt").read_text() == "usr1 9"
    assert "create" in accesses(doc, work / "child_term.txt")


def test_job_control_stop_and_continue(work):
    """A traced child that stops itself is seen stopped by its parent, continues on SIGCONT;
    another is killed while stopped."""
    code, doc = trace_py(PtraceCapture(), """
        import os, signal
        signal.alarm(60)  # a hang fails the run instead of the suite
        kids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                os.kill(os.getpid(), signal.SIGSTOP)
                open(f"resumed-{os.getpid()}.txt", "w").write("r")
                os._exit(0)
            _, st = os.waitpid(pid, os.WUNTRACED)
            assert os.WIFSTOPPED(st) and os.WSTOPSIG(st) == signal.SIGSTOP, st
            kids.append(pid)
        os.kill(kids[0], signal.SIGCONT)
        os.kill(kids[1], signal.SIGKILL)
        st0 = os.waitpid(kids[0], 0)[1]
        st1 = os.waitpid(kids[1], 0)[1]
        assert os.WIFEXITED(st0) and os.WEXITSTATUS(st0) == 0, st0
        assert os.WIFSIGNALED(st1) and os.WTERMSIG(st1) == signal.SIGKILL, st1
        open("kids.txt", "w").write(f"{kids[0]} {kids[1]}")
    """, cwd=work)
    assert code == 0
    first, second = map(int, (work / "kids.txt").read_text().split())
    assert (work / f"resumed-{first}.txt").exists() and not (work / f"resumed-{second}.txt").exists()
    exits = {p["pid"]: p["exit_code"] for p in doc["processes"]}
    assert exits[first] == 0 and exits[second] == 128 + signal.SIGKILL


def test_threads_and_exec_from_a_non_leader_thread(work):
    (work / "in.txt").write_text("i" * 1000)
    code, doc = trace_py(PtraceCapture(), f"""
        import os, threading
        def reader(i):
            with open("in.txt", "rb", buffering=0) as f:
                f.read(100 * (i + 1))
            with open(f"th{{i}}.txt", "w") as f:
                f.write("t" * (i + 1))
        ts = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        def execer():
            os.execv("/bin/sh", ["sh", "-c", "echo done > after_exec.txt"])
        threading.Thread(target=execer).start()
        threading.Event().wait(30)
    """, cwd=work)
    assert code == 0
    py = [p for p in doc["processes"] if p["argv"][:2] == ["sh", "-c"]]
    assert len(py) == 1, doc["processes"]
    pid = py[0]["pid"]
    assert py[0]["exe"] == "/bin/sh" and {p["pid"] for p in doc["processes"]} == {pid}
    reads = [f for f in entries(doc, work / "in.txt")]
    assert [(f["pid"], f["bytes_read"]) for f in reads] == [(pid, 100 + 200 + 300 + 400)]
    assert {f["pid"] for i in range(4) for f in entries(doc, work / f"th{i}.txt")} == {pid}
    assert "create" in accesses(doc, work / "after_exec.txt", pid=pid)


def test_hundred_fork_loop(work):
    code, doc = trace_py(PtraceCapture(), """
        import os
        for i in range(100):
            pid = os.fork()
            if pid == 0:
                os._exit(i % 7)
            os.waitpid(pid, 0)
    """, cwd=work)
    assert code == 0
    root = [p for p in doc["processes"] if p["ppid"] not in {q["pid"] for q in doc["processes"]}]
    assert len(root) == 1
    kids = [p for p in doc["processes"] if p["ppid"] == root[0]["pid"]]
    assert len(kids) == 100 and len(doc["processes"]) == 101
    assert sorted(p["exit_code"] for p in kids) == sorted(i % 7 for i in range(100))


def test_background_process_is_followed_to_its_end(work):
    """ptrace follows descendants that outlive the command (a filter cannot be detached)."""
    code, doc = trace(PtraceCapture(), ["sh", "-c", "(sleep 0.3; echo late > late.txt) & exit 2"],
                      cwd=work)
    assert code == 2
    assert {"create", "write"} <= accesses(doc, work / "late.txt")


def test_non_utf8_argv_and_cwd(work):
    odd = work / os.fsdecode(b"dir-\xff")
    odd.mkdir()
    code, doc = trace(PtraceCapture(), ["sh", "-c", "cd \"$1\" && echo x > f.txt", "sh",
                                        os.fsdecode(b"dir-\xff")], cwd=work)
    assert code == 0
    made = [f for f in doc["files"] if f.get("path_b64")
            and base64.b64decode(f["path_b64"]) == os.fsencode(odd / "f.txt")]
    assert made and "create" in made[0]["access"], [f["path"] for f in doc["files"]]
    assert any("\\xff" in a for p in doc["processes"] for a in p["argv"])


def test_cli_backend_ptrace_and_doctor(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "provtrace")
    out = tmp_path / "run.json"
    r = subprocess.run([exe, "run", "--backend", "ptrace", "--db", str(tmp_path / "c.db"),
                        "--json-out", str(out), "--", "sh", "-c", "echo y > y.txt; exit 6"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 6, r.stderr
    doc = json.loads(out.read_text())
    assert doc["run"]["backend"] == "ptrace"
    assert accesses(doc, tmp_path / "y.txt") == {"create", "write"}
    rep = json.loads(subprocess.run([exe, "doctor", "--json", "--no-load"], capture_output=True,
                                    text=True, timeout=120).stdout)
    check = [c for c in rep["checks"] if c["check"] == "ptrace backend"][0]
    assert check["ok"] and "ptrace" in rep["usable_backends"], check


@pytest.mark.privileged
def test_fallback_as_a_real_non_root_user(test_user):
    """`provtrace run` without root and without a daemon traces with ptrace."""
    user = test_user
    base = tempfile.mkdtemp(prefix="provtrace-ptrace-", dir="/tmp")  # pytest's tmp is root-only
    os.chmod(base, 0o755)
    home = Path(base) / "home"
    home.mkdir()
    (home / "in.txt").write_text("data\n")
    os.chown(home, user.pw_uid, user.pw_gid)
    exe = os.path.join(os.path.dirname(sys.executable), "provtrace")
    r = subprocess.run([exe, "run", "--json-out", str(home / "run.json"), "--",
                        "sh", "-c", "sort in.txt > out.txt && mv out.txt final.txt; exit 3"],
                       cwd=home, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                       env={"PATH": "/usr/bin:/bin", "HOME": str(home),
                            "PROVTRACE_SOCKET": str(home / "no-daemon.sock")},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    doc = json.loads((home / "run.json").read_text())
    assert doc["run"]["backend"] == "ptrace" and doc["run"]["user"] == user.pw_name
    assert {p["uid"] for p in doc["processes"]} == {user.pw_uid}
    assert "read" in accesses(doc, home / "in.txt")
    assert {"create", "write"} <= accesses(doc, home / "out.txt")
    assert [(r_["from"], r_["to"]) for r_ in doc["renames"]] == [(str(home / "out.txt"), str(home / "final.txt"))]
    assert os.path.exists(home / ".local/share/provtrace/provtrace.db"), "the user's own store"
    shutil.rmtree(base)


def _deny_ptrace():
    """preexec_fn: a seccomp filter that makes ptrace(2) fail with EPERM, as a strict container would."""
    import struct

    from provtrace.tracer.capture import ptrace_kernel as K

    ld_nr, jeq, ret = (0x20, 0, 0, 0), (0x15, 0, 1, 101), 0x06  # 101: ptrace on x86_64
    prog = [ld_nr, jeq, (ret, 0, 0, 0x00050000 | 1), (ret, 0, 0, K.SECCOMP_RET_ALLOW)]
    assert K.install_seccomp(b"".join(struct.pack("<HBBI", *i) for i in prog)) == 0


def test_where_ptrace_is_forbidden_the_error_is_one_line(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "provtrace")
    r = subprocess.run([exe, "run", "--backend", "ptrace", "--db", str(tmp_path / "d.db"), "--", "true"],
                       preexec_fn=_deny_ptrace, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "ptrace is not allowed here" in r.stderr, r.stderr
    rep = json.loads(subprocess.run([exe, "doctor", "--json", "--no-load"], preexec_fn=_deny_ptrace,
                                    capture_output=True, text=True, timeout=120).stdout)
    check = [c for c in rep["checks"] if c["check"] == "ptrace backend"][0]
    assert not check["ok"] and check["fix"] and "ptrace" not in rep["usable_backends"]


def test_32bit_syscalls_are_counted_as_lost(ptrace_capture, work):
    """An i386 `int 0x80` from a 64-bit program is not decoded: it is lost, the run incomplete."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the test program")
    (work / "c32.c").write_text(
        '#include <stdio.h>\n'
        'int main(void) {\n'
        '    long ret;\n'
        '    __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(20) : "memory"); /* i386 getpid */\n'
        '    FILE *f = fopen("after.txt", "w"); fputs("x", f); fclose(f);\n'
        '    return 0;\n'
        '}\n')
    subprocess.run(["gcc", "-O0", "-o", str(work / "c32"), str(work / "c32.c")], check=True)
    code, doc = trace(ptrace_capture, [str(work / "c32")], cwd=work)
    assert code == 0
    assert doc["run"]["lost_by_reason"] == {"ringbuf": 0, "agg_map": 0, "compat_syscalls": 1,
                                            "traced_map": 0}, "the probes' reasons, as eBPF gives them"
    assert doc["run"]["lost_events"] == 1 and doc["run"]["complete"] is False
    assert {"create", "write"} <= accesses(doc, work / "after.txt"), "64-bit syscalls after it are seen"


def test_a_consumer_error_kills_the_traced_tree_instead_of_leaving_it_stopped(work, tmp_path):
    """The command driver's consumer fails mid-run (here: its store's sink raises on
    one event): the stopped tracees must not wait forever for it."""
    from provtrace.tracer.model.processes import Tracker

    handle_all = Tracker.handle_all

    def failing(self, events):
        if any(isinstance(ev, E.Open) and ev.path.endswith("marker.txt") for ev in events):
            raise RuntimeError("a bug in the consumer")
        handle_all(self, events)

    store = S.Store(str(tmp_path / "s.db"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Tracker, "handle_all", failing)
            tc = TracedCommand(["/bin/sh", "-c", "sleep 61.234 & echo x > marker.txt; wait"],
                               store=store, cwd=str(work), capture=PtraceCapture())
            with pytest.raises(RuntimeError, match="a bug in the consumer"):
                tc.run()
    finally:
        store.close()
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"61.234" in f.read():
                    alive.append(pid)
        except OSError:
            continue
    assert alive == [], "the background child of the traced shell was killed and reaped"
