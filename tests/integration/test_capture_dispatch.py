"""The raw-syscall dispatch on the real kernel: every program reads its arguments right.

The syscall programs take their arguments from the saved user registers at
sys_exit (probes/dispatch.bpf.c), one program per argument layout. Each
syscall provtrace handles is made here by number, with arguments chosen so
that a register read from the wrong position shows in the decoded event.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest

from provtrace.tracer.capture import layouts as L
from provtrace.tracer.capture import syscalls as S
from provtrace.tracer.capture.decode import Decoder
from provtrace.tracer.capture.ebpf import EbpfCapture
from provtrace.tracer.model import events as E
from provtrace.tracer.pipeline.command import TracedCommand
from provtrace.tracer.store import queries as Q
from provtrace.tracer.store import sqlite as St

from .helpers import PY, accesses

pytestmark = pytest.mark.privileged

AT_FDCWD = -100
AT_REMOVEDIR = 0x200
RENAME_NOREPLACE = 1
TAG = 0x5EED

# Waits for one byte on stdin (so it is traced before it starts), makes the
# syscalls by number where libc or Python would pick another one, and prints
# the fds it got as JSON.
CHILD = r"""
import ctypes, fcntl, json, mmap, os, socket, sys
sys.stdin.buffer.read(1)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def sc(*args):
    r = libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if r < 0:
        raise OSError(ctypes.get_errno(), f"syscall {args[0]}")
    return r

class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def iov(buf):  # one iovec over a create_string_buffer, its trailing NUL left out
    return ctypes.byref(Iov(ctypes.cast(buf, ctypes.c_void_p), len(buf) - 1))

N = dict(NR)
fds = {}
fds["open"] = sc(N["open"], b"legacy.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fds["open"], b"abc")
fds["creat"] = c = sc(N["creat"], b"creat.txt", 0o644)
os.writev(c, [b"12", b"345"])
os.pwritev(c, [b"6"], 5)
sc(N["pwritev2"], c, iov(ctypes.create_string_buffer(b"wxyz")), 1, 6, 0, 0)
how = (ctypes.c_uint64 * 3)(os.O_RDONLY | os.O_CLOEXEC, 0, 0)
fds["openat2"] = r = sc(N["openat2"], AT_FDCWD, b"creat.txt", ctypes.byref(how), 24)
os.readv(r, [bytearray(2)])
os.preadv(r, [bytearray(3)], 0)
sc(N["preadv2"], r, iov(ctypes.create_string_buffer(5)), 1, 0, 0, 0)
fds["sendfile_out"] = o = os.open("sent.txt", os.O_WRONLY | os.O_CREAT, 0o644)
os.sendfile(o, r, 0, 3)
fds["copy_out"] = co = os.open("copied.txt", os.O_WRONLY | os.O_CREAT, 0o644)
os.copy_file_range(r, co, 4, 0)
pr, pw = os.pipe()
fds["splice_pipe"] = pw
os.splice(r, pw, 2, offset_src=0)
m = mmap.mmap(r, 0, mmap.MAP_SHARED, mmap.PROT_READ)
fds["dup"] = sc(N["dup"], r)
fds["dup2"] = sc(N["dup2"], r, 60)
fds["dup3"] = sc(N["dup3"], r, 61, os.O_CLOEXEC)
fds["dupfd_cloexec"] = os.dup(r)
fcntl.fcntl(60, fcntl.F_SETFD, 0)
os.set_inheritable(fds["dup"], True)   # CPython: ioctl(FIONCLEX)
os.set_inheritable(fds["dup"], False)  # ioctl(FIOCLEX)
sc(N["close_range"], 61, 61, 0)
sc(N["close_range"], 60, 60, 4)
os.truncate("legacy.txt", 1)
os.ftruncate(c, 2)
sc(N["rename"], b"sent.txt", b"sent2.txt")
sc(N["renameat"], AT_FDCWD, b"sent2.txt", AT_FDCWD, b"sent3.txt", 1)
sc(N["renameat2"], AT_FDCWD, b"sent3.txt", AT_FDCWD, b"sent4.txt", 1)
sc(N["unlink"], b"sent4.txt")
os.mkdir("d1"); os.mkdir("d2"); os.mkdir("sub")
sc(N["rmdir"], b"d1")
sc(N["unlinkat"], AT_FDCWD, b"d2", 0x200)
sc(N["unlinkat"], AT_FDCWD, b"copied.txt", 0)
sc(N["chdir"], b"sub")
fds["dirfd"] = d = os.open("..", os.O_RDONLY | os.O_DIRECTORY)
sc(N["fchdir"], d)
a, b = socket.socketpair()
fds["sock_a"], fds["sock_b"] = a.fileno(), b.fileno()
a.send(b"hi"); b.recv(2)
a.sendmsg([b"yo!"]); b.recvmsg(3)
m.close()
for fd in (r, c, o, co, pr, pw, fds["open"]):
    os.close(fd)
a.close(); b.close()
print(json.dumps(fds))
"""


def _trace_child(capture, cwd) -> tuple[dict, list[E.Event]]:
    """Run CHILD traced with tag TAG; return its fds and its decoded events."""
    src = "AT_FDCWD = -100\nNR = " + repr(sorted(S.NR_X86_64.items())) + "\n" + CHILD
    child = subprocess.Popen([PY, "-c", src], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    capture.trace(child.pid, TAG)
    out, err = child.communicate(b"g", timeout=60)
    assert child.returncode == 0, err.decode()
    records = capture.drain()
    for _ in range(50):  # the exit record is usually there already; bounded wait otherwise
        if any(E.Exit == type(e) and e.pid == child.pid for e in Decoder().decode_all(records)):
            break
        records += capture.poll(100)
    swept = capture.sweep({child.pid})  # model events already (FLUSH_SWEEP FdIO)
    evs = [e for e in Decoder().decode_all(records) + swept if e.pid == child.pid or e.tag == TAG]
    return json.loads(out), evs


@pytest.fixture(scope="module")
def dispatched(capture, tmp_path_factory):
    """fds and events of CHILD from its first open on (fd numbers of files
    Python read at start-up are reused by CHILD's own)."""
    cwd = tmp_path_factory.mktemp("dispatch")
    fds, evs = _trace_child(capture, cwd)
    first = min(e.ts_ns for e in evs if type(e) is E.Open and e.path == "legacy.txt")
    return cwd, fds, [e for e in evs if e.ts_ns >= first]


def _of(evs, cls, **match):
    return [e for e in evs if type(e) is cls and all(getattr(e, k) == v for k, v in match.items())]


def _io(evs, fd):
    """Sum of the I/O counters flushed for fd (an fd number may be reused)."""
    recs = _of(evs, E.FdIO, fd=fd)
    return (sum(r.bytes_read for r in recs), sum(r.bytes_written for r in recs),
            sum(r.nreads for r in recs), sum(r.nwrites for r in recs))


def test_every_slot_holds_its_program(capture):
    slots = capture.dispatch_slots()
    assert slots == {"exit": sorted(nr for _p, nr in S.slots(S.EXIT_PROGRAMS))}


def test_opens_take_dirfd_path_and_flags_from_the_right_registers(dispatched):
    _cwd, fds, evs = dispatched
    legacy = _of(evs, E.Open, path="legacy.txt")
    assert [(o.fd, o.dirfd, o.flags & 0o3777) for o in legacy] == [
        (fds["open"], AT_FDCWD, os.O_WRONLY | os.O_CREAT | os.O_EXCL)]
    creat = _of(evs, E.Open, fd=fds["creat"], path="creat.txt")
    assert [(o.dirfd, o.flags) for o in creat] == [(AT_FDCWD, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)]
    o2 = _of(evs, E.Open, fd=fds["openat2"], path="creat.txt")
    assert [(o.dirfd, o.flags) for o in o2] == [(AT_FDCWD, os.O_RDONLY | os.O_CLOEXEC)]


def test_read_and_write_families_count_on_the_right_fd(dispatched):
    _cwd, fds, evs = dispatched
    # writev 5 + pwritev 1 + pwritev2 4 bytes; then ftruncate
    assert _io(evs, fds["creat"])[1::2] == (10, 3)
    # readv 2 + preadv 3 + preadv2 4 read; sendfile 3, copy_file_range 4, splice 2 from it too
    read, _w, nreads, _nw = _io(evs, fds["openat2"])
    assert (read, nreads) == (2 + 3 + 4 + 3 + 4 + 2, 6)
    assert _io(evs, fds["sendfile_out"])[1] == 3
    assert _io(evs, fds["copy_out"])[1] == 4
    assert _io(evs, fds["splice_pipe"])[1] == 2
    # send (sendto) + sendmsg, recv (recvfrom) + recvmsg on a socketpair
    assert _io(evs, fds["sock_a"])[1] == 5
    assert _io(evs, fds["sock_b"])[0] == 5


def test_mmap_flags_and_prot_reach_the_fd(dispatched):
    _cwd, fds, evs = dispatched
    mapped = [r for r in _of(evs, E.FdIO, fd=fds["openat2"]) if r.map_prot]
    assert mapped and mapped[0].map_prot == 1  # PROT_READ
    assert mapped[0].flags & L.FDIO_MAP_SHARED


def test_fd_operations(dispatched):
    _cwd, fds, evs = dispatched
    r = fds["openat2"]
    dups = {(e.oldfd, e.newfd, e.cloexec) for e in _of(evs, E.FdOp, op=L.FDOP_DUP)}
    assert {(r, fds["dup"], False), (r, 60, False), (r, 61, True), (r, fds["dupfd_cloexec"], True)} <= dups
    setfd = [(e.oldfd, e.cloexec) for e in _of(evs, E.FdOp, op=L.FDOP_SETFD)]
    assert setfd == [(60, False), (fds["dup"], False), (fds["dup"], True)]
    assert _of(evs, E.FdOp, op=L.FDOP_CLOSE_RANGE, oldfd=61, newfd=61)
    assert _of(evs, E.FdOp, op=L.FDOP_CLOEXEC_RANGE, oldfd=60, newfd=60, cloexec=True)


def test_paths_lengths_and_flags(dispatched):
    _cwd, fds, evs = dispatched
    assert [(t.fd, t.length, t.path) for t in _of(evs, E.Truncate)] == [
        (AT_FDCWD, 1, "legacy.txt"), (fds["creat"], 2, None)]
    renames = [(r.olddirfd, r.old, r.newdirfd, r.new, r.flags) for r in _of(evs, E.Rename)]
    assert renames == [(AT_FDCWD, "sent.txt", AT_FDCWD, "sent2.txt", 0),
                       (AT_FDCWD, "sent2.txt", AT_FDCWD, "sent3.txt", 0),  # r8 held 1: not a flag
                       (AT_FDCWD, "sent3.txt", AT_FDCWD, "sent4.txt", RENAME_NOREPLACE)]
    unlinks = [(u.dirfd, u.path, u.flags) for u in _of(evs, E.Unlink)]
    assert unlinks == [(AT_FDCWD, "sent4.txt", 0), (AT_FDCWD, "d1", AT_REMOVEDIR),
                       (AT_FDCWD, "d2", AT_REMOVEDIR), (AT_FDCWD, "copied.txt", 0)]
    assert [(c.fd, c.path) for c in _of(evs, E.Chdir)] == [(AT_FDCWD, "sub"), (fds["dirfd"], None)]


def test_nothing_lost(dispatched, capture):
    assert sum(capture.lost().values()) == 0


# ia32 read(fd, buf, 4) through int $0x80 from a 64-bit process: the number 3
# is close in the x86_64 table, so a program that ignored TS_COMPAT would close
# the fd in the model and lose the 64-bit write that follows.
COMPAT_C = textwrap.dedent(r"""
    #include <fcntl.h>
    #include <sys/mman.h>
    #include <unistd.h>
    int main(int argc, char **argv)
    {
        int fd = open(argv[1], O_RDWR);
        char *buf = mmap(0, 4096, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
        long ret;

        if (fd < 0 || buf == MAP_FAILED)
            return 1;
        __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(3), "b"(fd), "c"(buf), "d"(4)
                          : "memory", "r8", "r9", "r10", "r11");
        if (ret != 4)
            return 2;
        if (write(fd, "zz", 2) != 2)
            return 3;
        return close(fd);
    }
""")


def test_ia32_syscalls_are_counted_not_misread(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the int 0x80 program (apt-get install gcc)")
    exe, data = tmp_path / "compat", tmp_path / "data.txt"
    (tmp_path / "compat.c").write_text(COMPAT_C)
    subprocess.run([gcc, "-O1", "-o", str(exe), str(tmp_path / "compat.c")], check=True)
    data.write_text("abcdefgh")
    # A capture of its own: lost counters live as long as the loaded probes,
    # and this run must lose events while the session's capture must not.
    cap = EbpfCapture(ringbuf_pages=64)
    store = St.Store(str(tmp_path / "store.db"))
    try:
        tc = TracedCommand([str(exe), str(data)], store=store, cwd=str(tmp_path), capture=cap)
        code = tc.run()
        doc = Q.load_run(store, tc.rid)
    finally:
        store.close()
        cap.close()
    assert code == 0, "int $0x80 failed: is ia32 emulation off (ia32_emulation=0)?"
    assert tc.lost["compat_syscalls"] > 0
    assert doc["run"]["complete"] is False
    assert accesses(doc, data) == {"write"}, "the ia32 read must be neither recorded nor taken for a close"
