"""`provtrace notebook run`: execute a notebook headlessly under eBPF tracing,
with every event attributed to the cell execution that caused it.

The driver is the pipeline (pipeline.py) with one notebook Run. Threads: the
main thread drives nbclient (NotebookRunner) and turns its cell hooks into
windows; a consumer thread steps the pipeline, which owns the Tracker. They
meet in KernelCells (locked) and the Store (locked).

The kernel is added to tracing as soon as it has started (nbclient's
start_new_kernel returns after kernel_info): its start-up is not traced and
belongs to no cell, as the contract says. What it had mapped by then is read
from /proc/PID/maps, so the run's libraries are complete.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..capture.base import Capture, calibrated
from ..capture.procusage import proc_usage, usage_delta
from ..clock import Clock, iso_utc
from ..correlate.notebook import CellExecution, CellStart, NotebookResult, NotebookRunner
from ..correlate.policy import KernelCells, attach_kernel
from ..correlate.windows import CellWindow
from ..errors import StoreWriteError, TracerError
from ..model.events import Usage
from ..store import sqlite as S
from ..store.writer import stdio_files
from .pipeline import POLL_MS, Pipeline
from .run import Run, gpu_sample, header, new_run_id, user_name

log = logging.getLogger(__name__)

KERNEL_EXIT_WAIT_S = 5.0


def cell_key(index: int, cell_id: str | None) -> str:
    """A cell's id in records: nbformat's cell id, else its position (nbformat < 4.5)."""
    return cell_id or f"index-{index}"


class _Consumer(threading.Thread):
    """Steps the pipeline until told to stop."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(name="provtrace-consumer", daemon=True)
        self.pipeline = pipeline
        self.stop_requested = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        store_failed = False
        try:
            while not self.stop_requested.is_set():
                self.pipeline.step(POLL_MS)
                if self.pipeline.flush_due():
                    try:
                        self.pipeline.flush()
                    except StoreWriteError as e:  # a full disk: counted as lost, the notebook goes on
                        if not store_failed:  # once: the end record says how much was lost
                            log.warning("event=store-write-failed error=%r", str(e))
                        store_failed = True
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises
            log.exception("event=consumer-failed")
            self.error = e


class TracedNotebook:
    """One notebook run into one store. Call run(); it returns the exit code."""

    def __init__(self, path: str, *, store: S.Store, kernel_name: str | None = None,
                 label: str | None = None, capture: Capture | None = None, timeout_s: int | None = 600,
                 startup_timeout_s: int = 60) -> None:
        self.store = store
        self.label = label
        self.capture = capture
        self.cells = KernelCells()
        self.clock = Clock()
        self.runner = NotebookRunner(  # reads and validates the notebook now
            path, kernel_name=kernel_name, timeout_s=timeout_s, startup_timeout_s=startup_timeout_s,
            on_kernel_started=self._kernel_started, on_cell_start=self._cell_start,
            on_cell_end=self._cell_end)
        self.path = str(self.runner.path)
        self.run_id = new_run_id()
        self.rid: int | None = None
        self.result: NotebookResult | None = None
        self.lost: dict[str, int] = {}
        self._kernel_pid: int | None = None
        self._samples: dict[str, list] = {}
        # the kernel's own /proc figures at a cell's start, then its share of the cell
        self._kernel_at_start: dict[str, Usage | None] = {}
        self._kernel_usage: dict[str, list[int]] = {}
        self._run: Run | None = None
        self._pipeline: Pipeline | None = None

    # -- hooks (main thread) ------------------------------------------------------
    def _kernel_started(self, pid: int) -> None:
        self._kernel_pid = pid
        self.cells.add_kernel(pid, Clock.now_mono_ns())
        run = self._run
        attach_kernel(run.tracker, pid, run.tag)  # seeded before the pipeline owns it
        self._pipeline.add(run)
        self.capture.trace(pid, run.tag)
        log.info("event=kernel-traced pid=%d run=%s", pid, self.run_id)

    def _cell_start(self, start: CellStart) -> None:
        key = cell_key(start.index, start.cell_id)
        self.cells.set_window(CellWindow(
            kernel_pid=self._kernel_pid or 0, msg_id=key, cell_id=key, code_sha256=start.code_sha256,
            start_ns=self.clock.utc_to_mono_ns(start.started)))
        self._samples[key] = [gpu_sample(self._kernel_pids())]
        if self._kernel_pid is not None:
            self._kernel_at_start[key] = proc_usage(self._kernel_pid)

    def _cell_end(self, done: CellExecution) -> None:
        key = cell_key(done.index, done.cell_id)
        start_ns = self.clock.utc_to_mono_ns(done.started)
        end_ns = self.clock.utc_to_mono_ns(done.ended) if done.ended else Clock.now_mono_ns()
        self.cells.set_window(CellWindow(
            kernel_pid=self._kernel_pid or 0, msg_id=key, cell_id=key, start_ns=start_ns,
            end_ns=max(end_ns, start_ns), execution_count=done.execution_count,
            code_sha256=done.code_sha256, status=done.status, end_reason=done.end_reason,
            error_name=done.error_name))
        self._samples.setdefault(key, []).append(gpu_sample(self._kernel_pids()))
        if self._kernel_pid is not None:
            d = usage_delta(self._kernel_at_start.pop(key, None), proc_usage(self._kernel_pid))
            if d is not None:
                self._kernel_usage[key] = [d.utime_ns, d.stime_ns, d.maxrss_bytes, d.rchar_bytes,
                                           d.wchar_bytes]
        self.store.append(self.rid, S.CELL, {
            "id": key, "index": done.index, "execution_count": done.execution_count,
            "code_sha256": done.code_sha256, "started": iso_utc(done.started),
            "ended": iso_utc(done.ended) if done.ended else None, "status": done.status,
            "msg_id": done.msg_id, "error_name": done.error_name, "end_reason": done.end_reason})

    def _kernel_pids(self) -> list[int]:
        """The kernel and its live descendants (read from /proc: the Tracker is not ours)."""
        if self._kernel_pid is None:
            return []
        try:
            import psutil  # noqa: PLC0415

            kernel = psutil.Process(self._kernel_pid)
            return [self._kernel_pid, *(c.pid for c in kernel.children(recursive=True))]
        except psutil.Error:
            return [self._kernel_pid]

    # -- the run --------------------------------------------------------------------
    def run(self) -> int:
        self.capture = cap = calibrated(self.capture)
        uid = os.getuid()
        hdr = header(self.run_id, "notebook", cap.name, label=self.label,
                     argv=["provtrace", "notebook", "run", self.path], cwd=os.path.dirname(self.path),
                     user=user_name(uid), uid=uid, started_us=time.time_ns() // 1000,
                     notebook=self.path, kernel_name=self.runner.kernel_name)
        # the kernel inherits our stdout and stderr: files there are a log, not data
        self._run = run = Run.open(self.store, cap, hdr, self.cells, clock=self.clock, stdio=stdio_files())
        self.rid = run.rid
        run.env = dict(os.environ)
        run.more_context = self._cell_contexts
        self._pipeline = pipeline = Pipeline(cap, self.store)
        consumer = _Consumer(pipeline)
        consumer.start()
        gaps: dict[str, int] = {}
        failure: BaseException | None = None
        try:
            self.result = self.runner.run()
        except (TracerError, KeyboardInterrupt) as e:
            failure = e
            gaps["notebook_failed" if isinstance(e, TracerError) else "interrupted"] = 1
        finally:
            self._wait_kernel_exit()
            consumer.stop_requested.set()
            consumer.join()
        if consumer.error is not None:
            raise consumer.error
        pipeline.finish(run)  # drained; what outlived the kernel untraced, swept, finished
        self._finish(run, pipeline, gaps, failure)
        if failure is not None:
            raise failure
        return 1 if self.result is None or self.result.failed else 0

    def _wait_kernel_exit(self) -> None:
        """nbclient has shut the kernel down; give its exit event time to arrive."""
        pid = self._kernel_pid
        deadline = time.monotonic() + KERNEL_EXIT_WAIT_S
        while pid is not None and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)

    def _finish(self, run: Run, pipeline: Pipeline, gaps: dict[str, int],
                failure: BaseException | None) -> None:
        self.lost = run.lost_since_open(self.capture)
        lost_total = sum(self.lost.values())
        gaps.update(run.tracker.gaps)
        if pipeline.decoder.bad:
            gaps["undecodable_records"] = pipeline.decoder.bad
        result = self.result
        if result is not None and result.stopped_early:
            gaps["stopped_early"] = 1
        run.gpu_samples = [s for samples in self._samples.values() for s in samples]
        failed = result is None or result.failed
        # fingerprints at run end, like a command's; per-cell records would hash the same bytes again
        run.complete(self.store, {
            "exit_code": 1 if failed else 0, "signal": None, "lost_events": lost_total,
            "lost_by_reason": self.lost, "complete": lost_total == 0 and failure is None, "gaps": gaps,
            "stopped_early": result.stopped_early if result else str(failure),
            "kernel_pid": self._kernel_pid, "language": result.language if result else None})

    def _cell_contexts(self, run: Run, store: S.Store) -> None:
        """After the run's context: each cell's (what it touched, its GPU samples, the kernel's usage)."""
        from ..context.collect import collect_cell_context  # noqa: PLC0415

        writer = run.writer
        for key, (touched, mapped, execd) in sorted(writer.by_cell.items()):
            try:
                cell_ctx = collect_cell_context(touched_paths=sorted(touched), mapped_paths=sorted(mapped),
                                                exec_paths=sorted(execd), env=run.env)
            except TracerError as e:
                cell_ctx = {"error": str(e)}
            cell_ctx["gpu_samples"] = [s for s in self._samples.get(key, []) if s]
            if key in self._kernel_usage:
                cell_ctx["kernel_usage"] = self._kernel_usage[key]
            store.append(run.rid, S.CELL_CONTEXT, {"cell": key, **cell_ctx})
        for key in sorted(set(self._samples) - set(writer.by_cell)):  # cells that touched nothing
            store.append(run.rid, S.CELL_CONTEXT, {
                "cell": key, "libraries": [], "packages": [], "interpreters": [],
                "gpu_samples": [s for s in self._samples[key] if s],
                **({"kernel_usage": self._kernel_usage[key]} if key in self._kernel_usage else {})})
