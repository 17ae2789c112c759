"""`provtrace daemon`: the long-running service.

It owns one set of loaded probes and one store, serves provtrace.v1 on the
daemon socket (behind the SO_PEERCRED proxy), follows every Jupyter kernel
on the host cell by cell, and traces commands that non-root users hand to
it. SIGTERM or SIGINT stops it cleanly: live sessions and commands are
finished and written before it exits.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import resource
import signal
import sqlite3
import sys
import syslog
import threading
import time
import tracemalloc
from dataclasses import dataclass

from ..errors import CaptureUnavailable, TracerError
from ..store import sqlite as S

log = logging.getLogger(__name__)

SCAN_INTERVAL_S = 2.0
IOPUB_POLL_S = 2.0  # how often an idle watcher wakes to check its kernel is alive
WANT_NOFILE = 65536  # fds: each proxied connection holds 3, each followed kernel a few

# What a periodic loop survives (logged, counted): fds or disk exhausted, a
# broken invariant while live, a store error. Anything else ends its thread,
# and Health turns NOT_SERVING, naming it.
_LOOP_ERRORS = (OSError, sqlite3.Error, TracerError)


@dataclass(frozen=True)
class AnchorPolicy:
    """Where and how often the daemon writes its head (store/anchor.py)."""
    log_path: str | None = None
    syslog: bool = False
    every_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.log_path or self.syslog)


@dataclass(frozen=True)
class OpenLineagePolicy:
    """Whether the daemon sends OpenLineage events, where, how often (export/openlineage_push.py).
    url None: the transport openlineage.yml or OPENLINEAGE_URL configure."""
    enabled: bool = False
    url: str | None = None
    every_s: float = 30.0


class Daemon:
    def __init__(self, socket_path: str, db_path: str, scan_interval_s: float = SCAN_INTERVAL_S,
                 follow_kernels: bool = True, limits=None, anchors: AnchorPolicy | None = None,
                 openlineage: OpenLineagePolicy | None = None,
                 ship: tuple[str, str, float] | None = None) -> None:
        self.anchors = anchors or AnchorPolicy()
        self.openlineage = openlineage or OpenLineagePolicy()
        self._ol_thread: threading.Thread | None = None
        self.ship = ship  # (central URL, host id, seconds between rounds), or None
        self._ship_thread: threading.Thread | None = None
        self._last_anchor: tuple[str, int] | None = None
        self._anchor_thread: threading.Thread | None = None
        self.socket_path = socket_path
        self.limits = limits  # api.proxy.ConnectionLimits, or None for the defaults
        self.db_path = db_path
        self.scan_interval_s = scan_interval_s
        self.follow_kernels = follow_kernels
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self._follower_thread: threading.Thread | None = None
        self._watch_thread: threading.Thread | None = None

    def run(self) -> int:
        from ..serve.events import EventHub  # noqa: PLC0415
        from ..serve.proxy import prepare_socket_dir  # noqa: PLC0415
        from .ingest import StoreSink  # noqa: PLC0415
        from ..serve.server import ApiServer  # noqa: PLC0415
        from .sessions import TracingStore  # noqa: PLC0415
        from .watch import WATCH_INTERVAL_S, InputWatcher  # noqa: PLC0415
        from ..capture.base import open_capture  # noqa: PLC0415
        from ..correlate.follower import KernelFollower  # noqa: PLC0415

        if os.geteuid() != 0:
            raise CaptureUnavailable("the daemon traces with eBPF and must run as root "
                                     "(see 'provtrace doctor')")
        raise_fd_limit()
        prepare_socket_dir(self.socket_path)  # a refused path fails now, not after seconds of loading
        emitter = self._emitter()  # a bad OpenLineage configuration fails now, in one line
        store = S.Store(self.db_path)
        recover_open_runs(store)
        capture, _ = open_capture("ebpf", root=True)  # the daemon traces with eBPF only
        capture.calibrate_created_bit()
        shed_compiler_memory()
        hub = EventHub()
        tracing = TracingStore(store, capture, hub)
        server = ApiServer(tracing, self.socket_path, hub=hub, limits=self.limits)
        reaper_alive = threading.Event()
        follower = (KernelFollower(StoreSink(tracing), poll_interval_s=IOPUB_POLL_S)
                    if self.follow_kernels else None)
        try:
            server.start()  # fails clearly when another daemon holds the socket
            tracing.start()
            components = server.servicer.components
            components["capture router"] = lambda: tracing.router.alive or self.stop_requested.is_set()
            components["kernel reaper"] = reaper_alive.is_set
            # The store's last write failed (a full disk): commands still run, untraced
            # or with records lost, and Health says so until a write succeeds again.
            components["store writes"] = lambda: store.write_error is None
            if follower is not None:
                self._follower_thread = threading.Thread(
                    target=self._follow, args=(follower,), name="provtrace-follower", daemon=True)
                self._follower_thread.start()
                thread = self._follower_thread
                components["kernel follower"] = lambda: thread.is_alive() or self.stop_requested.is_set()
            # the inputs of live notebook sessions: a change is pushed as a "stale" event
            watcher = InputWatcher(tracing, hub)
            watch = threading.Thread(target=guarded_loop, args=("input watcher", watcher.step,
                                                                self.stop_requested, WATCH_INTERVAL_S),
                                     name="provtrace-watch", daemon=True)
            self._watch_thread = watch
            watch.start()
            components["input watcher"] = lambda: watch.is_alive() or self.stop_requested.is_set()
            if self.anchors.enabled:
                anchor = threading.Thread(target=self._anchor, args=(store,), name="provtrace-anchor", daemon=True)
                self._anchor_thread = anchor
                anchor.start()
                components["anchor writer"] = lambda: anchor.is_alive() or self.stop_requested.is_set()
            if emitter is not None:
                ol = threading.Thread(target=self._emit, args=(emitter,), name="provtrace-openlineage", daemon=True)
                self._ol_thread = ol
                ol.start()
                components["openlineage emitter"] = lambda: ol.is_alive() or self.stop_requested.is_set()
            if self.ship is not None:
                shipper = threading.Thread(target=self._ship, name="provtrace-shipper", daemon=True)
                self._ship_thread = shipper
                shipper.start()
                components["fleet shipper"] = lambda: shipper.is_alive() or self.stop_requested.is_set()
            log.info("event=daemon-ready socket=%s db=%s", self.socket_path, self.db_path)
            self.ready.set()
            reaper_alive.set()
            try:
                trimmer = IdleTrimmer()
                guarded_loop("kernel reaper", lambda: (tracing.reap(), trimmer.step(bool(tracing.live_runs()))),
                             self.stop_requested, self.scan_interval_s)
            finally:
                reaper_alive.clear()
        finally:
            self.stop_requested.set()
            if self._follower_thread is not None:
                self._follower_thread.join()  # _follow closes its watchers: sessions end
            if self._watch_thread is not None:
                self._watch_thread.join()
            tracing.close()
            if self._ship_thread is not None:
                self._ship_thread.join()
            if self._anchor_thread is not None:
                self._anchor_thread.join()
                try:
                    self._write_anchor(store)  # the head as the daemon leaves the store
                except _LOOP_ERRORS as exc:
                    log.error("event=anchor-failed error=%r", str(exc))
            if self._ol_thread is not None:
                self._ol_thread.join()  # its last tick sends what ended as the daemon stops
            server.stop()
            capture.close()
            store.close()
            log.info("event=daemon-stopped")
        return 0

    def stop(self) -> None:
        self.stop_requested.set()

    def _emitter(self):
        if not self.openlineage.enabled:
            return None
        from ..export.openlineage_push import Emitter  # noqa: PLC0415

        return Emitter(self.db_path, self.openlineage.url)

    def _emit(self, emitter) -> None:
        """Ticks on a read-only connection of its own, so it never reads inside the writer's transaction."""
        reader = S.Store(self.db_path, readonly=True)
        try:
            guarded_loop("openlineage emitter", lambda: emitter.tick(reader), self.stop_requested,
                         self.openlineage.every_s)
            try:
                emitter.tick(reader)  # what ended while the daemon stopped
            except _LOOP_ERRORS as exc:
                log.error("event=openlineage-failed error=%r", str(exc))
        finally:
            emitter.close()
            reader.close()

    def _anchor(self, store) -> None:
        guarded_loop("anchor writer", lambda: self._write_anchor(store), self.stop_requested,
                     self.anchors.every_s)

    def _write_anchor(self, store) -> None:
        """One anchor line for the store's head, unless the head is unchanged since the last."""
        from ..store.anchor import anchor_line, append_anchor  # noqa: PLC0415

        head, seq = store.head_seq()
        if self._last_anchor == (head, seq):
            return
        line = anchor_line(head, seq, store.path)
        if self.anchors.log_path:
            append_anchor(self.anchors.log_path, line)
        if self.anchors.syslog:
            syslog.openlog("provtrace", 0, syslog.LOG_AUTH)
            syslog.syslog(syslog.LOG_NOTICE, line)
        self._last_anchor = (head, seq)

    def _ship(self) -> None:
        """Ship committed records to the central store every few seconds. Its own
        read-only connection to the store: the writer never waits on it, and a
        database that is away only grows the backlog (logged), never tracing."""
        from ..fleet.ship import Shipper, ShipLoop  # noqa: PLC0415

        url, host, every_s = self.ship
        loop = ShipLoop(Shipper(self.db_path, url, host))
        try:
            guarded_loop("fleet shipper", loop.step, self.stop_requested, every_s)
        finally:
            loop.shipper.close()

    def _follow(self, follower) -> None:
        try:
            guarded_loop("kernel follower", follower.scan_once, self.stop_requested, self.scan_interval_s)
        finally:
            follower.close()  # its watchers stop: their sessions end


def guarded_loop(name: str, step, stop: threading.Event, interval_s: float) -> None:
    """Runs step() every interval_s until stop is set, surviving the errors a live host throws.

    One log line per error kind a minute (a flood of EMFILE must not flood the
    log); anything not in _LOOP_ERRORS propagates and ends the loop.
    """
    last_logged: dict[str, float] = {}
    errors = 0
    while True:
        try:
            step()
        except _LOOP_ERRORS as exc:
            errors += 1
            kind = type(exc).__name__ + str(getattr(exc, "errno", ""))
            now = time.monotonic()
            if now - last_logged.get(kind, -60.0) >= 60.0:
                last_logged[kind] = now
                log.error("event=loop-error loop=%r count=%d error=%r", name, errors, str(exc))
        if stop.wait(interval_s):
            return


def recover_open_runs(store: S.Store) -> None:
    """Runs a previous daemon (or a standalone run) left open when it died are
    closed now, incomplete, with the reason. A full store only delays it."""
    from ..store.recover import close_abandoned  # noqa: PLC0415

    try:
        closed = close_abandoned(store)
    except (TracerError, sqlite3.Error, OSError) as exc:
        log.error("event=recovery-failed error=%r", str(exc))
        return
    if closed:
        log.warning("event=recovery closed=%d runs=%s", len(closed), ",".join(closed[:20]))


# Loaded once, the probes never need their compiler again in this process: the
# code of LLVM and clang that compiling them touched (~70 MB) and the heap they
# freed stay resident for nothing (docs/daemon.md, Memory).
_COMPILER_LIBS = ("libLLVM", "libclang")
_MADV_DONTNEED = 4


def shed_compiler_memory() -> None:
    """Gives the compiler's pages back to the kernel, with one log line.

    Its executable mappings are dropped from this process (MADV_DONTNEED):
    they are clean pages of the library file, read back from it should they
    ever run again, so nothing is lost. Writable and read-only data mappings
    are left alone (relocated data is this process's own). Then glibc returns
    the free heap (malloc_trim). Both are best effort: elsewhere, nothing."""
    import ctypes  # noqa: PLC0415

    try:
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    dropped = 0
    for start, end in _compiler_code_mappings():
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            dropped += end - start
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    log.info("event=compiler-memory-shed code_mapped_mb=%d", dropped >> 20)


class IdleTrimmer:
    """Returns glibc's free heap to the kernel (malloc_trim) each time the daemon
    turns idle, no run being traced: what runs allocated and freed stays out of
    an idle daemon's resident set, and a busy one pays nothing."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._trimmed = True  # just started: shed_compiler_memory trimmed

    def step(self, busy: bool) -> None:
        if busy:
            self._trimmed = False
        elif not self._trimmed and self._trim is not None:
            self._trim(0)
            self._trimmed = True


def _malloc_trim():
    """glibc's malloc_trim, or None (another libc)."""
    import ctypes  # noqa: PLC0415

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _compiler_code_mappings(maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of the executable, private, file-backed mappings of LLVM and clang."""
    out = []
    try:
        with open(maps) as fh:
            for line in fh:
                fields = line.split(None, 5)
                if (len(fields) == 6 and fields[1] == "r-xp"
                        and os.path.basename(fields[5].strip()).startswith(_COMPILER_LIBS)):
                    start, end = fields[0].split("-")
                    out.append((int(start, 16), int(end, 16)))
    except OSError:
        pass
    return out


def raise_fd_limit(want: int = WANT_NOFILE) -> None:
    """Lifts RLIMIT_NOFILE (soft, and hard where root may) to `want`, with one log line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
    new_soft = want if new_hard == resource.RLIM_INFINITY else min(want, new_hard)
    if new_soft <= soft:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE for the hard limit: take what is allowed
        new_soft = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    log.info("event=nofile-raised soft=%d->%d", soft, new_soft)


def serve(socket_path: str, db_path: str, limits=None, anchors: AnchorPolicy | None = None,
          openlineage: OpenLineagePolicy | None = None,
          ship: tuple[str, str, float] | None = None) -> int:
    """The CLI's entry: run until SIGTERM/SIGINT."""
    daemon = Daemon(socket_path, db_path, limits=limits, anchors=anchors, openlineage=openlineage,
                    ship=ship)

    def _stop(signum, _frame):
        log.info("event=signal signum=%d", signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    faulthandler.enable()  # a fatal signal (an abort in a C library) leaves every stack in the log
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack
    signal.signal(signal.SIGUSR2, _memory_report)  # `kill -USR2 PID`: where Python memory grows
    if os.environ.get("PROVTRACE_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["PROVTRACE_TRACEMALLOC"]))
    threading.Thread(target=_announce, args=(daemon,), daemon=True).start()
    return daemon.run()


_last_snapshot: list = []  # the snapshot of the previous SIGUSR2, for the next one's difference


def _memory_report(_signum, _frame) -> None:
    """SIGUSR2: the first starts tracemalloc (PROVTRACE_TRACEMALLOC=FRAMES starts
    it with the daemon); each later one writes to the log the Python allocations
    that grew most since the one before, and the largest overall. A debugging
    aid for growth (docs/daemon.md); tracing allocations costs CPU while on."""
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("PROVTRACE_TRACEMALLOC") or 1))
        print("provtrace daemon: memory: tracemalloc started; send SIGUSR2 again for a report",
              file=sys.stderr, flush=True)
        return
    snap = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    key = "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB"]
    if _last_snapshot:
        lines.append("grew most since the last report:")
        lines += [f"  {d}" for d in snap.compare_to(_last_snapshot[0], key)[:15]]
    lines.append("largest:")
    lines += [f"  {st}" for st in snap.statistics(key)[:15]]
    _last_snapshot[:] = [snap]
    print("\n".join(f"provtrace daemon: memory: {ln}" for ln in lines), file=sys.stderr, flush=True)


def _announce(daemon: Daemon) -> None:
    if daemon.ready.wait(600):
        print(f"provtrace daemon: serving {daemon.socket_path}, store {daemon.db_path}; "
              "following Jupyter kernels (SIGTERM or ^C stops)", file=sys.stderr, flush=True)
