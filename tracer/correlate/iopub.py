"""Follows one kernel's IOPub channel and turns it into cell windows.

The watcher runs in its own thread. On start it subscribes to IOPub, then
proves the subscription is live: a subscriber misses everything sent before
it joined, so it sends kernel_info_request on shell until the IOPub status
for one of those requests arrives (language-agnostic: IRkernel, for one,
does not answer kernel_info on control). A wrong key shows up here, as no
answer, or later as messages whose signature does not verify (a gap).
Beware: IRkernel *exits* when a shell message's signature does not verify
("identical(signature, expected_signature) is not TRUE"), so only probe a
kernel with a connection file known to be its own (named on its command
line, or all five ports held by that pid).

The kernel's death (pid gone, or a new process behind the same pid) closes
every open window with status error, reason "died".
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil
import zmq
from jupyter_client.blocking.client import BlockingKernelClient

from ..errors import TracerError
from ..clock import Clock, default_clock
from .connection import ConnectionInfo
from .tracker import WindowTracker
from .windows import CellWindow

log = logging.getLogger(__name__)

WindowCallback = Callable[[CellWindow], None]


class IOPubError(TracerError):
    """A kernel's IOPub channel cannot be followed; the message says why."""

    def __init__(self, pid: int, path: str, reason: str) -> None:
        self.pid = pid
        super().__init__(f"kernel pid {pid} ({path}): {reason}")


@dataclass(frozen=True)
class WatchGap:
    kernel_pid: int
    reason: str


class IOPubWatcher:
    """Build with the kernel's connection and pid, start(), then read windows()."""

    def __init__(
        self,
        connection: ConnectionInfo,
        kernel_pid: int,
        on_window: WindowCallback | None = None,
        clock: Clock | None = None,
        poll_interval_s: float = 0.5,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self.connection = connection
        self.kernel_pid = kernel_pid
        self.on_window = on_window
        self.poll_interval_s = poll_interval_s
        self._clock = clock or default_clock()
        self._tracker = WindowTracker(kernel_pid, self._clock)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._ready_error: IOPubError | None = None
        self._thread: threading.Thread | None = None
        self._proc = _process(kernel_pid)
        self.gaps: list[WatchGap] = []
        self.died = False

    # -- public --------------------------------------------------------------
    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Subscribes and waits until IOPub is proven live; raises IOPubError otherwise."""
        if self._proc is None:
            raise IOPubError(self.kernel_pid, self.connection.path, "no such process")
        self._thread = threading.Thread(
            target=self._run, args=(ready_timeout_s,), name=f"iopub-{self.kernel_pid}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._ready_error is not None:
            self._thread.join()
            raise self._ready_error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def windows(self) -> list[CellWindow]:
        """Closed and open windows, by start time."""
        with self._lock:
            every = self._tracker.closed_windows + self._tracker.open_windows
        return sorted(every, key=lambda w: (w.start_ns, w.msg_id))

    def wait_for(self, predicate: Callable[[list[CellWindow]], bool], timeout_s: float) -> bool:
        """Blocks until predicate(windows()) holds or the timeout passes."""
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate(self._tracker.closed_windows + self._tracker.open_windows), timeout_s
            )

    # -- thread --------------------------------------------------------------
    def _run(self, ready_timeout_s: float) -> None:
        client = BlockingKernelClient()
        client.load_connection_info(self.connection.as_jupyter_dict())
        try:
            client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
            if not self._await_ready(client, ready_timeout_s):
                return
            client.shell_channel.stop()  # only the readiness check used it
            self._follow(client)
        except zmq.ZMQError as exc:
            self._fail_or_gap(f"zmq error: {exc}")
        except OSError as exc:  # fds exhausted, and the like: a gap, never a dead thread's traceback
            self._fail_or_gap(f"os error: {exc}")
        finally:
            client.stop_channels()
            self._ready.set()

    def _await_ready(self, client: BlockingKernelClient, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        sent: set[str] = set()
        while time.monotonic() < deadline and not self._stop.is_set():
            if not self._alive():
                self._fail_or_gap(
                    "kernel exited while being probed with kernel_info_request (IRkernel exits on a "
                    "message signed with a wrong key: check the connection file's key)"
                    if sent else "kernel exited before IOPub was ready")
                return False
            sent.add(client.kernel_info())
            for msg in self._drain(client, max(0.0, min(1.0, deadline - time.monotonic()))):
                if (msg.get("parent_header") or {}).get("msg_id") in sent:
                    log.info("event=iopub-ready kernel_pid=%d", self.kernel_pid)
                    self._ready.set()
                    return True
        reason = "stopped" if self._stop.is_set() else (
            f"no IOPub status for kernel_info_request within {timeout_s:g}s "
            "(wrong key in the connection file, or the kernel is hung)"
        )
        self._fail_or_gap(reason)
        return False

    def _follow(self, client: BlockingKernelClient) -> None:
        while not self._stop.is_set():
            self._drain(client, self.poll_interval_s)
            if not self._alive():
                self._drain(client, 0)  # what it sent before dying still counts
                with self._changed:
                    closed = self._tracker.on_kernel_died(self._clock.now_mono_ns())
                    self.died = True
                    self._changed.notify_all()
                log.info("event=kernel-died kernel_pid=%d open_windows=%d", self.kernel_pid, len(closed))
                for window in closed:
                    self._emit(window)
                return

    def _drain(self, client: BlockingKernelClient, timeout_s: float) -> list[dict]:
        """Reads every message ready within timeout_s, feeding each to the tracker."""
        got: list[dict] = []
        wait = timeout_s
        while True:
            try:
                msg = client.iopub_channel.get_msg(timeout=wait)
            except queue.Empty:
                return got
            except (ValueError, KeyError, TypeError) as exc:
                # Bad signature (wrong key) or a malformed frame: count it, keep going.
                self._gap(f"undecodable IOPub message: {exc}")
                wait = 0
                continue
            recv_ns = self._clock.now_mono_ns()
            got.append(msg)
            with self._changed:
                window = self._tracker.on_message(msg, recv_ns)
                self._changed.notify_all()
            if window is not None:
                self._emit(window)
            wait = 0

    def _emit(self, window: CellWindow) -> None:
        if self.on_window is None:
            return
        try:
            self.on_window(window)
        except Exception as exc:  # noqa: BLE001 - thread boundary: a consumer bug must not end the watch
            log.exception("event=on-window-failed kernel_pid=%d msg_id=%s", self.kernel_pid, window.msg_id)
            self._gap(f"on_window failed: {exc!r}")

    def _alive(self) -> bool:
        try:
            return self._proc is not None and self._proc.is_running() and \
                self._proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _gap(self, reason: str) -> None:
        log.warning("event=iopub-gap kernel_pid=%d reason=%r", self.kernel_pid, reason)
        self.gaps.append(WatchGap(self.kernel_pid, reason))

    def _fail_or_gap(self, reason: str) -> None:
        if self._ready.is_set():
            self._gap(reason)
        else:
            self._ready_error = IOPubError(self.kernel_pid, self.connection.path, reason)
            self._ready.set()


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
