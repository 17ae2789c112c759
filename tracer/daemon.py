"""`provtrace daemon`: the long-running service.

It owns one set of loaded probes and one store, serves provtrace.v1 on the
daemon socket (behind the SO_PEERCRED proxy), follows every Jupyter kernel
on the host cell by cell, and traces commands that non-root users hand to
it. SIGTERM or SIGINT stops it cleanly: live sessions and commands are
finished and written before it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from .errors import CaptureUnavailable
from .store import sqlite as S

log = logging.getLogger(__name__)

SCAN_INTERVAL_S = 2.0
IOPUB_POLL_S = 2.0  # how often an idle watcher wakes to check its kernel is alive


class Daemon:
    def __init__(self, socket_path: str, db_path: str, scan_interval_s: float = SCAN_INTERVAL_S,
                 follow_kernels: bool = True) -> None:
        self.socket_path = socket_path
        self.db_path = db_path
        self.scan_interval_s = scan_interval_s
        self.follow_kernels = follow_kernels
        self.stop_requested = threading.Event()
        self.ready = threading.Event()
        self._follower_thread: threading.Thread | None = None

    def run(self) -> int:
        from .api.events import EventHub  # noqa: PLC0415
        from .api.proxy import prepare_socket_dir  # noqa: PLC0415
        from .api.ingest import StoreSink  # noqa: PLC0415
        from .api.server import ApiServer  # noqa: PLC0415
        from .api.tracing_store import TracingStore  # noqa: PLC0415
        from .capture.ebpf import EbpfCapture  # noqa: PLC0415
        from .correlate.follower import KernelFollower  # noqa: PLC0415

        if os.geteuid() != 0:
            raise CaptureUnavailable("the daemon traces with eBPF and must run as root "
                                     "(see 'provtrace doctor')")
        prepare_socket_dir(self.socket_path)  # a refused path fails now, not after seconds of loading
        store = S.Store(self.db_path)
        capture = EbpfCapture()
        capture.calibrate_created_bit()
        hub = EventHub()
        tracing = TracingStore(store, capture, hub)
        server = ApiServer(tracing, self.socket_path, hub=hub)
        follower = (KernelFollower(StoreSink(tracing), poll_interval_s=IOPUB_POLL_S)
                    if self.follow_kernels else None)
        try:
            server.start()  # fails clearly when another daemon holds the socket
            tracing.start()
            if follower is not None:
                self._follower_thread = threading.Thread(
                    target=follower.run, args=(self.stop_requested, self.scan_interval_s),
                    name="provtrace-follower", daemon=True)
                self._follower_thread.start()
            log.info("event=daemon-ready socket=%s db=%s", self.socket_path, self.db_path)
            self.ready.set()
            while not self.stop_requested.wait(self.scan_interval_s):
                tracing.reap_gone_kernels()
        finally:
            self.stop_requested.set()
            if self._follower_thread is not None:
                self._follower_thread.join()  # follower.run closes its watchers: sessions end
            tracing.close()
            server.stop()
            capture.close()
            store.close()
            log.info("event=daemon-stopped")
        return 0

    def stop(self) -> None:
        self.stop_requested.set()


def serve(socket_path: str, db_path: str) -> int:
    """The CLI's entry: run until SIGTERM/SIGINT."""
    daemon = Daemon(socket_path, db_path)

    def _stop(signum, _frame):
        log.info("event=signal signum=%d", signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    threading.Thread(target=_announce, args=(daemon,), daemon=True).start()
    return daemon.run()


def _announce(daemon: Daemon) -> None:
    if daemon.ready.wait(600):
        print(f"provtrace daemon: serving {daemon.socket_path}, store {daemon.db_path}; "
              "following Jupyter kernels (SIGTERM or ^C stops)", file=sys.stderr, flush=True)
