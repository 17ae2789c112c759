"""The classic traps of syscall provenance, each against the real kernel and probes."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from .helpers import PY, accesses, entries, proc_by_argv, trace, trace_py

pytestmark = pytest.mark.privileged


def test_relative_paths_follow_chdir(capture, work):
    (work / "sub").mkdir()
    (work / "a.txt").write_text("a\n")
    code, doc = trace(capture, ["sh", "-c", "cd sub && cat ../a.txt > b.txt"], cwd=work)
    assert code == 0
    assert "read" in accesses(doc, work / "a.txt")
    assert {"create", "write"} <= accesses(doc, work / "sub" / "b.txt")
    assert doc["run"]["complete"] is True and doc["run"]["lost_events"] == 0


def test_at_calls_resolve_against_dirfd_and_fchdir(capture, work):
    (work / "d").mkdir()
    (work / "d" / "in.txt").write_text("x")
    code, doc = trace_py(capture, """
        import os
        d = os.open("d", os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open("in.txt", os.O_RDONLY, dir_fd=d)
        os.read(fd, 10)
        os.fchdir(d)
        with open("out.txt", "w") as f:
            f.write("y")
    """, cwd=work)
    assert code == 0
    assert "read" in accesses(doc, work / "d" / "in.txt")
    assert "write" in accesses(doc, work / "d" / "out.txt")


def test_access_is_what_was_done_not_open_flags(capture, work):
    p = work / "rw.txt"
    p.write_text("data")
    code, doc = trace_py(capture, f"""
        with open({str(p)!r}, "r+") as f:
            f.read()
    """, cwd=work)
    assert accesses(doc, p) == {"read"}


def test_create_versus_overwrite(capture, work):
    old = work / "old.txt"
    old.write_text("previous")
    code, doc = trace(capture, ["sh", "-c", "echo 1 > old.txt; echo 2 > new.txt"], cwd=work)
    assert accesses(doc, old) == {"truncate", "write"}
    assert accesses(doc, work / "new.txt") == {"create", "write"}


def test_dup_fcntl_and_inheritance_across_fork(capture, work):
    p = work / "in.txt"
    p.write_text("0123456789" * 100)
    code, doc = trace_py(capture, f"""
        import os, fcntl
        fd = os.open({str(p)!r}, os.O_RDONLY)
        os.dup2(fd, 7)
        os.read(7, 5)
        fd2 = fcntl.fcntl(fd, fcntl.F_DUPFD, 20)
        os.read(fd2, 5)
        pid = os.fork()
        if pid == 0:
            os.read(fd, 50)
            os._exit(0)
        os.waitpid(pid, 0)
    """, cwd=work)
    assert code == 0
    by_pid = {f["pid"]: f for f in entries(doc, p)}
    assert len(by_pid) == 2, by_pid
    parent = [p_ for p_ in doc["processes"] if p_["pid"] in by_pid and p_["ppid"] not in by_pid][0]
    child = [p_ for p_ in doc["processes"] if p_["ppid"] == parent["pid"]][0]
    assert by_pid[parent["pid"]]["bytes_read"] == 10
    assert by_pid[child["pid"]]["bytes_read"] == 50
    assert by_pid[child["pid"]]["access"] == ["read"]


def test_close_on_exec_drops_fd_but_inherited_fd_survives(capture, work):
    a, b = work / "cloexec.txt", work / "kept.txt"
    a.write_text("A" * 10)
    b.write_text("B" * 10)
    code, doc = trace_py(capture, f"""
        import os, sys
        fa = os.open({str(a)!r}, os.O_RDONLY | os.O_CLOEXEC)
        fb = os.open({str(b)!r}, os.O_RDONLY)
        os.set_inheritable(fb, True)
        os.dup2(fa, 40)  # dup2 clears cloexec: 40 survives exec, pointing at {a.name}
        os.set_inheritable(40, False)  # ...and fcntl(F_SETFD) sets it again
        os.execv({PY!r}, [{PY!r}, "-c",
                 "import os; os.read(%d, 4)\\ntry:\\n os.read(40, 1)\\nexcept OSError: pass" % fb])
    """, cwd=work)
    assert code == 0
    assert "read" in accesses(doc, b)
    assert "read" not in accesses(doc, a)


def test_rename_variants_and_atomic_saves(capture, work):
    (work / "t.txt").write_text("hello\n")
    (work / "m1").write_text("m")
    code, doc = trace_py(capture, """
        import os, subprocess
        os.rename("m1", "m2")                                   # rename/renameat
        d = os.open(".", os.O_RDONLY)
        os.rename("m2", "m3", src_dir_fd=d, dst_dir_fd=d)     # renameat with dirfds
        subprocess.run(["mv", "m3", "m4"], check=True)          # coreutils: renameat2
        subprocess.run(["sed", "-i", "s/hello/bye/", "t.txt"], check=True)
        with open("save.tmp", "w") as f:                        # atomic save
            f.write("new")
        os.replace("save.tmp", "save.txt")
    """, cwd=work)
    assert code == 0
    pairs = {(os.path.basename(r["from"]), os.path.basename(r["to"])) for r in doc["renames"]}
    assert {("m1", "m2"), ("m2", "m3"), ("m3", "m4"), ("save.tmp", "save.txt")} <= pairs
    sed_renames = [r for r in doc["renames"] if r["to"] == str(work / "t.txt")]
    assert sed_renames, "sed -i must show as a rename onto its target"
    tmp = [f for f in doc["files"] if f["path"] == sed_renames[0]["from"]]
    assert tmp and tmp[0]["kind"] == "temp" and "write" in tmp[0]["access"]


def test_unlink_and_truncate(capture, work):
    for n in ("gone1", "gone2", "cut1", "cut2"):
        (work / n).write_text("content")
    code, doc = trace_py(capture, """
        import os
        os.unlink("gone1")
        d = os.open(".", os.O_RDONLY)
        os.unlink("gone2", dir_fd=d)
        os.truncate("cut1", 2)
        fd = os.open("cut2", os.O_WRONLY)
        os.ftruncate(fd, 1)
    """, cwd=work)
    assert "delete" in accesses(doc, work / "gone1")
    assert "delete" in accesses(doc, work / "gone2")
    assert "truncate" in accesses(doc, work / "cut1")
    assert "truncate" in accesses(doc, work / "cut2")


def test_exec_scripts_with_shebang_and_execveat(capture, work):
    script = work / "hello.sh"
    script.write_text("#!/bin/sh\necho hi > out.txt\n")
    script.chmod(0o755)
    program = f"""
        import os, subprocess, sys
        subprocess.run([{str(script)!r}], check=True)
        fd = os.open("/usr/bin/true", os.O_RDONLY)
        pid = os.fork()
        if pid == 0:
            try:
                os.execve(fd, ["true"], {{}})   # fexecve -> execveat(fd, "", AT_EMPTY_PATH)
            except OSError as e:
                os._exit(100 + e.errno)
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    # What the kernel does untraced decides what must be recorded: Debian's 5.10 guest
    # refuses this execveat with ENOENT untraced too (docs/kernels.md), and then the
    # child stays Python, traced or not.
    untraced = subprocess.run([PY, "-c", textwrap.dedent(program)], cwd=work).returncode
    code, doc = trace_py(capture, program, cwd=work)
    assert code == untraced, "traced, the program must end as it does untraced"
    assert "exec" in accesses(doc, script)
    assert "exec" in accesses(doc, "/bin/sh")
    sh = [p for p in doc["processes"] if p["exe"] == "/bin/sh"]
    assert sh and str(script) in sh[0]["argv"][-1]
    assert any(p["exe"] == "/usr/bin/true" for p in doc["processes"]) == (untraced == 0)


def test_argv_is_what_the_new_image_runs_with(capture, work):
    """argv is read from the exec'd image, as /proc/PID/cmdline shows it: for a
    #! script the interpreter's argv; empty arguments kept; cut at 4,096 bytes."""
    script = work / "args.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    long_args = [f"{i:03d}" + "y" * 96 for i in range(60)]  # 60 x 100 bytes + NULs > 4,096
    code, doc = trace_py(capture, f"""
        import subprocess
        subprocess.run([{str(script)!r}, "a b", ""], check=True)
        subprocess.run(["/bin/true", "x", "", "z"], check=True)
        subprocess.run(["/bin/true"] + {long_args!r}, check=True)
    """, cwd=work)
    assert code == 0
    by_first = {}
    for p in doc["processes"]:
        if p["argv"]:
            by_first.setdefault(p["argv"][0], []).append(p["argv"])
    assert by_first["/bin/sh"] == [["/bin/sh", str(script), "a b", ""]]
    trues = by_first["/bin/true"]
    assert ["/bin/true", "x", "", "z"] in trues
    cut = [a for a in trues if len(a) > 4][0]
    kept = len(cut) - 1
    assert 30 < kept < 60 and cut[1:kept] == long_args[:kept - 1]
    assert sum(len(a) + 1 for a in cut) - 1 == 4096, "the last argument is kept up to the cut"
    assert long_args[kept - 1].startswith(cut[-1]) and cut[-1] != long_args[kept - 1]
    assert doc["run"]["gaps"].get("argv_truncated")


def test_close_and_reopen_in_two_threads_keep_exact_counts(capture, work):
    """Two threads open, read and close their own file 300 times: fd numbers are
    reused across threads all the time, and every byte lands on its own file."""
    code, doc = trace_py(capture, """
        import os, threading
        open("a", "wb").write(b"a" * 64)
        open("b", "wb").write(b"b" * 64)
        def loop(name, n):
            for _ in range(300):
                fd = os.open(name, os.O_RDONLY)
                os.read(fd, n)
                os.close(fd)
        ts = [threading.Thread(target=loop, args=a) for a in (("a", 3), ("b", 5))]
        [t.start() for t in ts]
        [t.join() for t in ts]
    """, cwd=work)
    assert code == 0
    assert sum(f["bytes_read"] for f in entries(doc, work / "a")) == 900
    assert sum(f["bytes_read"] for f in entries(doc, work / "b")) == 1500
    assert doc["run"]["lost_events"] == 0


def test_shared_libraries_are_mapped(capture, work):
    code, doc = trace(capture, ["cat", "/dev/null"], cwd=work)
    libc = [f for f in doc["files"] if os.path.basename(f["path"]).startswith("libc.so")]
    assert libc and "map" in libc[0]["access"] and libc[0]["kind"] == "library"


def test_threads_fold_and_fork_vfork_children_have_parents(capture, work):
    code, doc = trace_py(capture, """
        import os, threading, subprocess
        def w(i):
            with open(f"t{i}.txt", "w") as f:
                f.write("x")
        ts = [threading.Thread(target=w, args=(i,)) for i in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        subprocess.run(["true"])                  # vfork (posix_spawn) in CPython
        pid = os.fork()
        if pid == 0:
            open("child.txt", "w").write("c"); os._exit(0)
        os.waitpid(pid, 0)
    """, cwd=work)
    root = doc["processes"]
    py = [p for p in root if p["argv"][:2] == [PY, "-c"]]
    assert len(py) >= 1
    py_pids = {p["pid"] for p in py}
    top = [p for p in py if p["ppid"] not in py_pids][0]  # a fork child keeps its parent's argv
    writers = {f["pid"] for i in range(4) for f in entries(doc, work / f"t{i}.txt")}
    assert writers == {top["pid"]}, "threads fold into their process"
    kids = [p for p in root if p["ppid"] == top["pid"]]
    assert any(p["exe"] and p["exe"].endswith("/true") for p in kids)
    assert {f["pid"] for f in entries(doc, work / "child.txt")} & {p["pid"] for p in kids}


def test_sockets_inet_inet6_unix(capture, work):
    code, doc = trace_py(capture, """
        import socket, os
        for fam, addr in ((socket.AF_INET, ("127.0.0.1", 0)), (socket.AF_INET6, ("::1", 0)),
                          (socket.AF_UNIX, "sock")):
            srv = socket.socket(fam, socket.SOCK_STREAM)
            srv.bind(addr); srv.listen(1)
            cli = socket.socket(fam, socket.SOCK_STREAM)
            cli.connect(srv.getsockname())
            conn, _ = srv.accept()
            cli.sendall(b"ping"); conn.recv(4)
            for s in (cli, conn, srv): s.close()
    """, cwd=work)
    assert code == 0
    seen = {(n["op"], n["family"]) for n in doc["network"]}
    for fam in ("inet", "inet6", "unix"):
        for op in ("bind", "connect", "accept"):
            assert (op, fam) in seen, (op, fam, seen)
    inet = [n for n in doc["network"] if n["family"] == "inet" and n["op"] == "connect"][0]
    assert inet["address"] == "127.0.0.1" and inet["port"] > 0
    unix = [n for n in doc["network"] if n["family"] == "unix" and n["op"] == "bind"][0]
    assert unix["address"] == "sock"


def test_pipes_link_processes_in_lineage(capture, work, tmp_path):
    from provtrace.tracer.lineage.graph import lineage
    from provtrace.tracer.store import sqlite as S

    (work / "a").write_text("3\n1\n2\n")
    db = str(tmp_path / "pipe.db")
    code, doc = trace(capture, ["sh", "-c", "cat a | sort > b"], cwd=work, db=db)
    assert doc["pipes"], "the pipe between cat and sort is recorded"
    store = S.Store(db)
    res = lineage(store, str(work / "b"), "upstream", 10)
    files = {n["path"] for n in res["nodes"] if n["kind"] == "file"}
    assert str(work / "a") in files, "b links to a through the pipe"
    store.close()


def test_non_utf8_names_are_kept(capture, work):
    name = b"caf\xe9-\xff.txt"
    code, doc = trace_py(capture, f"""
        import os
        fd = os.open({bytes(work) + b'/' + name!r}, os.O_CREAT | os.O_WRONLY)
        os.write(fd, b"x")
    """, cwd=work)
    import base64
    hits = [f for f in doc["files"] if f.get("path_b64")]
    assert hits, "a non-UTF-8 name must carry path_b64"
    assert base64.b64decode(hits[0]["path_b64"]) == bytes(work) + b"/" + name
    assert "\\xe9" in hits[0]["path"]


def test_exit_codes_and_signals(capture, work):
    assert trace(capture, ["sh", "-c", "exit 7"], cwd=work)[0] == 7
    code, doc = trace(capture, ["sh", "-c", "kill -9 $$"], cwd=work)
    assert code == 137
    assert doc["run"]["exit_code"] == 137


def test_first_syscalls_are_seen(capture, work):
    """The exec of CMD itself and the loader's first opens are recorded."""
    code, doc = trace(capture, ["true"], cwd=work)
    assert "exec" in accesses(doc, shutil.which("true"))
    assert any(f["path"] == "/etc/ld.so.cache" for f in doc["files"])


def test_big_sequential_read_is_one_record(capture, work):
    big = work / "big.bin"
    with open(big, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    code, doc = trace_py(capture, f"""
        with open({str(big)!r}, "rb", buffering=0) as f:
            while f.read(4096):
                pass
    """, cwd=work)
    recs = entries(doc, big)
    assert len(recs) == 1
    assert recs[0]["bytes_read"] == 32 * 1024 * 1024
    assert doc["run"]["lost_events"] == 0


def test_preexisting_process_seeded_from_proc(capture, work):
    """A process running before tracing: its open fds and cwd come from /proc."""
    import subprocess
    import time

    from provtrace.tracer.capture.decode import Decoder
    from provtrace.tracer.model.processes import Sink, Tracker

    data = work / "pre.txt"
    data.write_text("z" * 100)
    proc = subprocess.Popen([PY, "-c", f"""
import os, sys
fd = os.open({str(data)!r}, os.O_RDONLY)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
os.read(fd, 100)
open("after.txt", "w").write("a")
"""], cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"

    class Rec(Sink):
        def __init__(self):
            self.procs = []

        def on_process(self, p):
            self.procs.append(p)

    sink = Rec()
    tracker = Tracker(sink, capture.created_mask)
    tracker.attach(proc.pid, tag=99)
    capture.trace(proc.pid, 99)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
    time.sleep(0.05)
    dec = Decoder()
    for ev in dec.decode_all(capture.drain()):
        if ev.tag == 99:
            tracker.handle(ev)
    tracker.finish_all(0)
    p = [p for p in sink.procs if p.pid == proc.pid][0]
    assert p.seeded_from_proc
    assert p.files[str(data)].bytes_read == 100
    assert str(work / "after.txt") in p.files


def test_deleted_cwd_does_not_break_the_run(capture, work):
    code, doc = trace(capture, ["sh", "-c", "mkdir d && cd d && rmdir ../d && cat /etc/hostname > /dev/null; echo $?"], cwd=work)
    assert code == 0
    assert doc["run"]["complete"] is True


@pytest.mark.slow
def test_ten_thousand_forks(capture, work):
    code, doc = trace_py(capture, """
        import os
        for _ in range(10000):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
    """, cwd=work)
    assert code == 0
    assert len(doc["processes"]) == 10001
    assert doc["run"]["lost_events"] == 0


def test_path_at_path_max(capture, work):
    # Build a directory chain whose full path is PATH_MAX - 1 (4095) bytes.
    base = str(work)
    parts, total = [], len(base)
    while total < 4095 - 300:
        parts.append("d" * 200)
        total += 201
    last = "f" * (4095 - total - 1)
    deep = os.path.join(base, *parts)
    os.makedirs(deep)
    target = os.path.join(deep, last)
    assert len(target) == 4095
    code, doc = trace_py(capture, f"open({target!r}, 'w').write('x')", cwd=work)
    assert code == 0
    assert "create" in accesses(doc, target)


def test_missing_command_is_a_clear_error(capture, work):
    from provtrace.tracer.errors import CommandNotFound

    with pytest.raises(CommandNotFound, match="no-such-command-xyz"):
        trace(capture, ["no-such-command-xyz"], cwd=work)
