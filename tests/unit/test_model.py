"""Tracker correlation edge cases, on synthetic events and a recording sink.

All pids are above any real pid_max (4_000_000+), so the /proc seeding that
the Tracker tries for an unseen pid finds nothing and records a gap.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import struct

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.model import events as E
from provtrace.tracer.model.processes import AT_FDCWD, Sink, Tracker, parse_sockaddr

CREATED = 0x100000  # FMODE_CREATED on current kernels; the tests only need one bit
O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_CLOEXEC = 0o1, 0o2, 0o100, 0o1000, 0o2000000
REG, DIR, FIFO = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFIFO | 0o600
P, C, C2 = 4_000_000, 4_000_001, 4_000_002


class Rec(Sink):
    def __init__(self) -> None:
        self.procs, self.renames, self.nets, self.pipes = [], [], [], []

    def on_process(self, proc):
        self.procs.append(proc)

    def on_rename(self, rec):
        self.renames.append(rec)

    def on_net(self, rec):
        self.nets.append(rec)

    def on_pipe(self, key, writers, readers):
        self.pipes.append((key, set(writers), set(readers)))

    def by_pid(self, pid):
        return [p for p in self.procs if p.pid == pid]


class T:
    """Tracker + sink + an advancing clock, with terse event builders."""

    def __init__(self) -> None:
        self.sink = Rec()
        self.tr = Tracker(self.sink, CREATED)
        self.ts = 1_000_000_000

    def _t(self):
        self.ts += 1000
        return self.ts

    def fork(self, parent, child, thread=False):
        self.tr.handle(E.Fork(self._t(), parent, parent, 1, child, child, 1000, thread))

    def exec(self, pid, filename, argv=None):
        if argv is not None:
            self.tr.handle(E.Argv(self._t(), pid, pid, 1, tuple(argv), False))
        self.tr.handle(E.Exec(self._t(), pid, pid, 1, pid, 1000, filename))

    def exit(self, pid, status=0):
        self.tr.handle(E.Exit(self._t(), pid, pid, 1, status, 3))

    def open(self, pid, fd, path, ino=0, flags=0, fmode=0, imode=REG, dirfd=AT_FDCWD, dev=8):
        self.tr.handle(E.Open(self._t(), pid, pid, 1, fd, dirfd, flags, fmode, ino, dev, imode, path))

    def io(self, pid, fd, ino=0, r=0, w=0, reason=L.FLUSH_CLOSE, imode=REG, dev=8, prot=0, flags=0):
        t = self._t()
        self.tr.handle(E.FdIO(t, pid, pid, 1, fd, reason, r, w, int(r > 0), int(w > 0), ino, dev,
                              imode, prot, flags, t - 500))

    def fdop(self, pid, op, oldfd, newfd, cloexec=False):
        self.tr.handle(E.FdOp(self._t(), pid, pid, 1, op, oldfd, newfd, cloexec))

    def chdir(self, pid, path=None, fd=AT_FDCWD):
        self.tr.handle(E.Chdir(self._t(), pid, pid, 1, fd, path))

    def rename(self, pid, old, new, olddirfd=AT_FDCWD, newdirfd=AT_FDCWD):
        self.tr.handle(E.Rename(self._t(), pid, pid, 1, olddirfd, newdirfd, 0, old, new))

    def net(self, pid, op, addr, fd=5, ret=0):
        self.tr.handle(E.Net(self._t(), pid, pid, 1, op, fd, ret, addr))

    def done(self):
        self.tr.finish_all(self._t())
        return self.sink


@pytest.fixture
def t():
    return T()


# -- unseen processes, exit before exec, pid reuse, ordering --------------------

def test_pid_never_seen_forking_is_seeded_with_a_gap(t):
    t.open(P, 3, "/data/in.csv", ino=11)
    t.io(P, 3, ino=11, r=100)
    sink = t.done()
    assert t.tr.gaps.get("process_gone_before_seen") == 1
    (p,) = sink.by_pid(P)
    assert p.seeded_from_proc and p.ppid is None
    assert p.files["/data/in.csv"].access == {"read"}
    assert p.files["/data/in.csv"].bytes_read == 100


def test_exit_before_exec(t):
    t.exec(P, "/nonexistent/bin/tool", ["tool", "-x"])
    t.fork(P, C)
    t.exit(C, status=3 << 8)
    t.tr.finish_exited()
    (c,) = t.sink.by_pid(C)
    assert c.ppid == P and c.exe == "/nonexistent/bin/tool" and c.argv == ["tool", "-x"]
    assert c.end_ns is not None and c.exit_code == 3 and c.signal is None
    assert not t.sink.by_pid(P)  # the parent lives on


def test_exit_of_unknown_process_is_a_gap(t):
    t.exit(C2)
    assert t.tr.gaps == {"exit_of_unknown_process": 1}
    assert t.done().procs == []


def test_late_flush_after_exit_reaches_the_exited_process(t):
    t.fork(P, C)
    t.open(C, 70, "/data/big.bin", ino=5)
    t.exit(C)
    t.io(C, 70, ino=5, w=4096, reason=L.FLUSH_SWEEP)
    sink = t.done()
    (c,) = sink.by_pid(C)
    assert c.files["/data/big.bin"].access == {"write"}
    assert c.files["/data/big.bin"].bytes_written == 4096


def test_pid_reuse_while_still_live_finishes_the_old_process(t):
    t.fork(P, C)
    t.exec(C, "/nonexistent/old")
    t.open(C, 3, "/data/old.txt", ino=1)
    t.fork(P, C)  # the exit of the first C was lost: its pid is reused
    t.open(C, 3, "/data/new.txt", ino=2)
    sink = t.done()
    old, new = sorted(sink.by_pid(C), key=lambda p: p.start_ns)
    assert old.start_ns < new.start_ns
    assert set(old.files) == {"/nonexistent/old", "/data/old.txt"}
    assert set(new.files) == {"/data/new.txt"}
    assert new.exe is None and old.exe == "/nonexistent/old"


def test_pid_reuse_after_exit_keeps_two_processes(t):
    t.fork(P, C)
    t.exit(C, status=0)
    t.fork(P, C)
    t.exit(C, status=9)
    sink = t.done()
    codes = sorted(p.exit_code for p in sink.by_pid(C))
    assert codes == [0, 137]


def test_event_of_child_before_its_fork_is_not_lost(t):
    t.open(C, 3, "/data/early.txt", ino=1)  # out of order: the fork arrives after
    t.fork(P, C)
    sink = t.done()
    procs = sink.by_pid(C)
    assert any("/data/early.txt" in p.files for p in procs)
    assert any(p.ppid == P for p in procs)


def test_fdio_before_its_open_is_a_gap_not_a_misattribution(t):
    t.io(P, 3, ino=11, r=10, reason=L.FLUSH_EXEC)  # the open is reported later
    t.open(P, 3, "/data/in.csv", ino=11)
    t.io(P, 3, ino=11, r=20)
    sink = t.done()
    (p,) = sink.by_pid(P)
    assert t.tr.gaps.get("io_on_unknown_fd") == 1
    assert p.files["/data/in.csv"].bytes_read == 20
    assert set(p.files) == {"/data/in.csv"}


def test_thread_events_fold_into_the_process(t):
    t.fork(P, P + 50, thread=True)
    tid = P + 50
    t.tr.handle(E.Open(t._t(), P, tid, 1, 3, AT_FDCWD, 0, 0, 1, 8, REG, "/data/t.txt"))
    t.tr.handle(E.FdIO(t._t(), P, tid, 1, 3, L.FLUSH_CLOSE, 5, 0, 1, 0, 1, 8, REG, 0, 0, 0))
    sink = t.done()
    assert [p.pid for p in sink.procs] == [P]
    assert sink.procs[0].files["/data/t.txt"].bytes_read == 5


# -- fd tables -------------------------------------------------------------------

def test_dup2_then_read_via_new_fd(t):
    t.open(P, 3, "/data/in.csv", ino=11)
    t.fdop(P, L.FDOP_DUP, 3, 0)
    t.io(P, 0, ino=11, r=64)
    sink = t.done()
    assert sink.by_pid(P)[0].files["/data/in.csv"].access == {"read"}


def test_cloexec_fd_dropped_at_exec_other_survives(t):
    t.open(P, 3, "/data/secret.txt", ino=1, flags=O_CLOEXEC)
    t.open(P, 4, "/data/keep.txt", ino=2, flags=O_WRONLY)
    t.open(P, 5, "/data/setfd.txt", ino=3)
    t.fdop(P, L.FDOP_SETFD, 5, 0, cloexec=True)
    t.exec(P, "/nonexistent/next")
    assert set(t.tr.live[P].fds) == {4}
    t.io(P, 4, ino=2, w=7)
    t.io(P, 3, ino=1, r=7)
    sink = t.done()
    files = sink.by_pid(P)[0].files
    assert files["/data/keep.txt"].access == {"write"}
    assert files["/data/secret.txt"].access == set()
    assert t.tr.gaps.get("io_on_unknown_fd") == 1


def test_close_range_and_cloexec_range(t):
    for fd in (3, 4, 5, 9):
        t.open(P, fd, f"/data/{fd}", ino=fd)
    t.fdop(P, L.FDOP_CLOSE_RANGE, 3, 4)
    t.fdop(P, L.FDOP_CLOEXEC_RANGE, 5, 2**31 - 1)
    assert set(t.tr.live[P].fds) == {5, 9}
    t.exec(P, "/nonexistent/x")
    assert t.tr.live[P].fds == {}


def test_fork_copies_the_fd_table(t):
    t.open(P, 3, "/data/in.csv", ino=11)
    t.fork(P, C)
    t.io(C, 3, ino=11, r=42)
    sink = t.done()
    (child,) = sink.by_pid(C)
    (parent,) = sink.by_pid(P)
    assert child.files["/data/in.csv"].access == {"read"}
    assert child.files["/data/in.csv"].bytes_read == 42
    assert parent.files["/data/in.csv"].access == set()
    assert 3 in parent.fds  # closing in the child does not touch the parent


def test_chdir_then_relative_open(t):
    t.chdir(P, "/work/proj")
    t.chdir(P, "../proj/./sub")
    t.open(P, 3, "data/../x.csv", ino=1)
    sink = t.done()
    assert set(sink.by_pid(P)[0].files) == {"/work/proj/sub/x.csv"}


def test_relative_open_without_cwd_is_a_gap(t):
    t.open(P, 3, "rel.txt", ino=1)
    assert t.tr.gaps.get("unresolved_relative_path") == 1
    assert t.done().by_pid(P)[0].files == {}


def test_fchdir_and_openat_with_dirfd(t):
    t.open(P, 5, "/srv/d", ino=100, imode=DIR)
    t.open(P, 6, "sub/f.txt", ino=101, dirfd=5)
    t.chdir(P, None, fd=5)
    t.open(P, 7, "g.txt", ino=102)
    sink = t.done()
    p = sink.by_pid(P)[0]
    assert set(p.files) == {"/srv/d/sub/f.txt", "/srv/d/g.txt"}  # the dir itself is no access
    assert p.cwd == "/srv/d"


def test_rename_updates_open_fd_entries(t):
    t.fork(P, C)
    t.open(P, 3, "/out/res.part", ino=1, flags=O_WRONLY | O_CREAT, fmode=CREATED)
    t.open(C, 4, "/out/dir/inner.txt", ino=2)
    t.open(C, 6, "/out/dirx/other.txt", ino=3)
    t.rename(P, "/out/res.part", "/out/res.csv")
    t.rename(C, "/out/dir", "/out/dir2")
    t.io(P, 3, ino=1, w=10)
    t.io(C, 4, ino=2, r=1)
    t.io(C, 6, ino=3, r=1)
    sink = t.done()
    assert [(r.src, r.dst) for r in sink.renames] == [("/out/res.part", "/out/res.csv"),
                                                      ("/out/dir", "/out/dir2")]
    pf = sink.by_pid(P)[0].files
    assert pf["/out/res.part"].access == {"create"}
    assert pf["/out/res.csv"].access == {"write"}
    cf = sink.by_pid(C)[0].files
    assert "read" in cf["/out/dir2/inner.txt"].access
    assert "read" in cf["/out/dirx/other.txt"].access


def test_stale_fd_entry_is_a_gap_and_not_attributed(t):
    t.open(P, 3, "/data/a.txt", ino=11)
    t.io(P, 3, ino=99, r=5)  # the table is out of date: fd 3 is another file now
    sink = t.done()
    fa = sink.by_pid(P)[0].files["/data/a.txt"]
    assert "read" not in fa.access and fa.bytes_read == 0
    assert t.tr.gaps.get("stale_fd_entry") == 1


def test_same_ino_other_dev_is_stale(t):
    t.open(P, 3, "/data/a.txt", ino=11, dev=8)
    t.io(P, 3, ino=11, dev=9, r=5)
    assert t.tr.gaps.get("stale_fd_entry") == 1


@pytest.mark.parametrize("flags,fmode,want", [
    (O_WRONLY | O_CREAT | O_TRUNC, CREATED, {"create"}),
    (O_WRONLY | O_CREAT | O_TRUNC, 0, {"truncate"}),
    (O_RDWR | O_TRUNC, 0, {"truncate"}),
    (O_TRUNC, 0, set()),  # O_RDONLY|O_TRUNC: Linux leaves the file alone here
    (O_WRONLY | O_CREAT, 0, set()),
    (0, CREATED >> 1, set()),  # only the calibrated bit means created
])
def test_created_vs_truncated(t, flags, fmode, want):
    t.open(P, 3, "/data/out.txt", ino=1, flags=flags, fmode=fmode)
    assert t.done().by_pid(P)[0].files["/data/out.txt"].access == want


def test_truncate_of_a_device_is_not_a_truncation(t):
    t.open(P, 3, "/dev/null", ino=1, flags=O_WRONLY | O_TRUNC, imode=stat.S_IFCHR | 0o666)
    assert t.done().by_pid(P)[0].files["/dev/null"].access == set()


def test_mmap_exec_and_shared_write(t):
    t.open(P, 3, "/usr/lib/libx.so", ino=1)
    t.io(P, 3, ino=1, prot=0x5)  # PROT_READ|PROT_EXEC
    t.open(P, 4, "/data/m.bin", ino=2, flags=O_RDWR)
    t.io(P, 4, ino=2, prot=0x3, flags=L.FDIO_MAP_SHARED)
    files = t.done().by_pid(P)[0].files
    assert files["/usr/lib/libx.so"].mapped_exec and files["/usr/lib/libx.so"].access == {"map"}
    assert files["/data/m.bin"].access == {"map", "write"}


# -- pipes, sockets, exit status --------------------------------------------------

def test_pipe_writer_and_reader(t):
    t.fork(P, C)
    t.fork(P, C2)
    t.io(C, 1, ino=777, dev=13, w=100, imode=FIFO)
    t.io(C2, 0, ino=777, dev=13, r=100, imode=FIFO)
    t.io(C2, 5, ino=888, dev=13, r=1, imode=FIFO)  # no writer seen: no edge
    sink = t.done()
    assert sink.pipes == [((13, 777), {C}, {C2})]


def _inet(port, ip):
    return struct.pack("<H", 2) + struct.pack(">H", port) + bytes(ip) + b"\0" * 8


def _inet6(port, packed):
    return struct.pack("<H", 10) + struct.pack(">H", port) + b"\0" * 4 + packed + b"\0" * 4


@pytest.mark.parametrize("raw,want", [
    (_inet(8080, [10, 0, 0, 1]), ("inet", "10.0.0.1", 8080)),
    (_inet6(443, b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01"), ("inet6", "2001:db8::1", 443)),
    (struct.pack("<H", 1) + b"/run/x.sock\0\0\0", ("unix", "/run/x.sock", None)),
    (struct.pack("<H", 1) + b"\0my-abstract", ("unix", "@my-abstract", None)),
    (struct.pack("<H", 1), ("unix", "", None)),  # unnamed (autobind) socket
    (struct.pack("<H", 2) + b"\0\0", (None, "", None)),  # too short for AF_INET
    (struct.pack("<H", 16) + b"\0" * 10, (None, "", None)),  # AF_NETLINK: not parsed
    (b"", (None, "", None)),
], ids=["inet", "inet6", "unix-path", "unix-abstract", "unix-unnamed", "inet-short", "netlink", "empty"])
def test_parse_sockaddr(raw, want):
    assert parse_sockaddr(raw) == want


def test_inet6_v4_mapped():
    # the text form of a v4-mapped address differs across Python versions: compare values
    fam, addr, port = parse_sockaddr(_inet6(53, b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])))
    assert (fam, port) == ("inet6", 53)
    assert ipaddress.IPv6Address(addr).ipv4_mapped == ipaddress.IPv4Address("127.0.0.1")


def test_unix_path_non_utf8_round_trips():
    fam, addr, _ = parse_sockaddr(struct.pack("<H", 1) + b"/run/caf\xe9\0")
    assert fam == "unix" and os.fsencode(addr) == b"/run/caf\xe9"


def test_net_events_reach_the_sink(t):
    t.net(P, L.NET_CONNECT, _inet(443, [1, 2, 3, 4]), ret=-115)
    t.net(P, L.NET_BIND, _inet(9000, [0, 0, 0, 0]), fd=7)
    t.net(P, L.NET_ACCEPT, b"", fd=7, ret=8)  # accept with no peer address: family of the bind
    t.net(P, L.NET_CONNECT, struct.pack("<H", 16) + b"\0" * 10)
    sink = t.done()
    got = [(n.op, n.family, n.address, n.port) for n in sink.nets]
    assert got == [("connect", "inet", "1.2.3.4", 443), ("bind", "inet", "0.0.0.0", 9000),
                   ("accept", "inet", "", None)]
    assert t.tr.gaps == {"process_gone_before_seen": 1, "unparsed_sockaddr": 1}


@pytest.mark.parametrize("status,code,sig", [
    (0, 0, None), (1 << 8, 1, None), (255 << 8, 255, None),
    (9, 137, 9), (15, 143, 15), (0x80 | 11, 139, 11),  # SIGSEGV with core dump
])
def test_exit_status_to_exit_code(t, status, code, sig):
    t.fork(P, C)
    t.exit(C, status)
    t.tr.finish_exited()
    (c,) = t.sink.by_pid(C)
    assert (c.status, c.exit_code, c.signal) == (status, code, sig)


def test_exec_of_script_records_interpreter(t, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh -e\necho hi\n")
    t.chdir(P, str(tmp_path))
    t.exec(P, "./run.sh", ["./run.sh"])
    p = t.done().by_pid(P)[0]
    assert p.exe == "/bin/sh"
    assert p.files[str(script)].access == {"exec"} and p.files["/bin/sh"].access == {"exec"}
    assert p.argv == ["./run.sh"]


def test_unknown_event_type_is_a_gap(t):
    t.tr.handle(E.Event(1, P, P, 1))
    assert t.tr.gaps == {"unknown_event": 1}


# -- issue 13, reads: directory listings, failed opens, io_uring ---------------------


def test_getdents_on_a_directory_fd_is_a_read_of_the_directory(t):
    t.open(P, 3, "/data", ino=50, imode=DIR, flags=0o200000)
    t.io(P, 3, ino=50, r=4096, imode=DIR)
    t.exit(P)
    [p] = t.done().by_pid(P)
    assert p.files["/data"].access == {"read"} and p.files["/data"].bytes_read == 4096
    assert p.files["/data"].directory


def test_failed_opens_are_attempts_one_per_path_and_errno(t):
    t.chdir(P, "/w")
    for _ in range(3):
        t.open(P, -2, "missing.csv", imode=0)
    t.open(P, -13, "/w/secret", imode=0)
    t.open(P, -2, "out/x.csv", flags=O_WRONLY | O_CREAT, imode=0)
    t.exit(P)
    [p] = t.done().by_pid(P)
    assert p.files == {}, "an attempt is not an access"
    got = sorted((a.path, a.errno, a.write) for a in p.attempts.values())
    assert got == [("/w/missing.csv", 2, False), ("/w/out/x.csv", 2, True), ("/w/secret", 13, False)]


def test_io_uring_setup_is_a_gap_naming_the_process(t):
    t.tr.handle(E.IoUring(t._t(), P, P, 1, 5, 0))  # P unseen: seeded, with its own gap
    assert t.tr.gaps.get(f"io_uring used by pid {P}: its file I/O was not traced") == 1


# -- repeated opens folded in the kernel (issue 15) ---------------------------------

def test_folded_io_lands_on_the_inode_path_and_leaves_the_fd_table_alone(t):
    t.open(P, 3, "/data/hot", ino=11)
    t.io(P, 3, ino=11, r=3)  # the first open's own fd
    t.open(P, 3, "/data/other", ino=12)  # fd 3 now names another file
    # 999 more opens of /data/hot, folded: fd is their count, not an fd
    t.io(P, 999, ino=11, r=2997, reason=L.FLUSH_FOLDED, flags=L.FDIO_FOLDED | L.FDIO_SEEN_OPEN)
    # a folded fd whose entry was gone at its close: sent alone, still FDIO_FOLDED
    t.io(P, 3, ino=11, w=5, flags=L.FDIO_FOLDED | L.FDIO_SEEN_OPEN)
    t.io(P, 3, ino=12, r=1)
    sink = t.done()
    (p,) = sink.by_pid(P)
    assert (p.files["/data/hot"].bytes_read, p.files["/data/hot"].bytes_written) == (3000, 5)
    assert p.files["/data/hot"].access == {"read", "write"}
    assert p.files["/data/other"].bytes_read == 1
    assert "io_on_unknown_fd" not in t.tr.gaps and "stale_fd_entry" not in t.tr.gaps


def test_folded_io_of_an_inode_never_opened_is_a_gap(t):
    t.io(P, 7, ino=99, r=10, reason=L.FLUSH_FOLDED, flags=L.FDIO_FOLDED)
    sink = t.done()
    (p,) = sink.by_pid(P)
    assert not p.files
    assert t.tr.gaps.get("io_on_unknown_fd") == 1


def test_names_for_folded_io_are_bounded_newest_kept(t):
    from provtrace.tracer.model import processes  # noqa: PLC0415

    t.open(P, 3, "/data/first", ino=1)
    for i in range(processes._FOLDED_NAMES):
        t.open(P, 4, f"/data/f{i}", ino=100 + i)
    t.open(P, 5, "/data/recent", ino=2)
    (p,) = [p for p in t.tr.live.values() if p.pid == P]
    assert len(p.paths_by_inode) == processes._FOLDED_NAMES
    assert (8, 1) not in p.paths_by_inode and p.paths_by_inode[(8, 2)] == "/data/recent"
