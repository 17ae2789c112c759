"""Headless notebook execution (nbclient) with per-cell windows.

The kernel starts with its cwd set to the notebook's folder, as in Jupyter.
Execution goes on through failing cells (allow_errors), so a result always
comes back; a kernel that dies or a cell that times out ends the run early,
and the cell that was running is recorded as an error ("died"/"timeout").

on_kernel_started(pid) runs right after the kernel process starts and
before any cell: the place to add the kernel to tracing. The kernel process
itself has started before it (its start-up belongs to no cell anyway).

Failures are NotebookError, one line each: an unknown kernel when the runner
is built (before anything starts), a kernel that dies or does not answer
kernel_info within the start-up timeout when run() starts it (the kernel is
shut down first). jupyter's own log lines about them show only when debugging.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from ..atomic import atomic_write
from ..errors import TracerError
from ..clock import Clock, default_clock, parse_iso
from .windows import DIED, ERROR, OK, CellWindow

log = logging.getLogger(__name__)


class NotebookError(TracerError):
    """A notebook cannot be read or run; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        super().__init__(f"notebook {self.path}: {reason}")


@dataclass(frozen=True)
class CellStart:
    index: int
    cell_id: str | None
    code_sha256: str
    started: dt.datetime


@dataclass(frozen=True)
class CellExecution:
    index: int
    cell_id: str | None
    msg_id: str | None
    execution_count: int | None
    code_sha256: str
    started: dt.datetime  # busy on IOPub (the kernel's own time), else when sent
    ended: dt.datetime | None
    status: str  # "ok" | "error"
    end_reason: str | None = None  # "died" | "timeout"
    error_name: str | None = None

    def window(self, kernel_pid: int, clock: Clock | None = None) -> CellWindow:
        clock = clock or default_clock()
        return CellWindow(
            kernel_pid=kernel_pid, msg_id=self.msg_id or f"index-{self.index}",
            start_ns=clock.utc_to_mono_ns(self.started),
            end_ns=clock.utc_to_mono_ns(self.ended) if self.ended else None,
            cell_id=self.cell_id, execution_count=self.execution_count,
            code_sha256=self.code_sha256, status=self.status, end_reason=self.end_reason,
            error_name=self.error_name,
        )


@dataclass
class NotebookResult:
    path: str
    kernel_name: str
    language: str | None
    kernel_pid: int | None
    started: dt.datetime
    ended: dt.datetime | None = None
    cells: list[CellExecution] = field(default_factory=list)
    notebook: Any = None  # the executed nbformat.NotebookNode
    stopped_early: str | None = None  # why execution ended before the last cell

    @property
    def failed(self) -> bool:
        return self.stopped_early is not None or any(c.status != OK for c in self.cells)

    def windows(self, clock: Clock | None = None) -> list[CellWindow]:
        return [c.window(self.kernel_pid or 0, clock) for c in self.cells]

    def write_notebook(self, out: str | os.PathLike[str]) -> None:
        """The executed notebook, written as nbformat.write would, but atomically and
        never through a symlink planted at out (atomic.py)."""
        text = nbformat.writes(self.notebook)
        atomic_write(os.fspath(out), (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """Reads and validates an nbformat v4 notebook; raises NotebookError."""
    try:
        nb = nbformat.read(os.fspath(path), as_version=4)
        nbformat.validate(nb)
    except OSError as exc:
        raise NotebookError(path, f"cannot read ({exc.strerror or exc})") from exc
    except (ValueError, AttributeError, KeyError, TypeError, nbformat.ValidationError) as exc:
        # json errors are ValueErrors; wrong shapes surface as the others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotebookError(path, f"not a valid notebook (nbformat v4): {first}") from exc
    return nb


class NotebookRunner:
    """Runs one notebook. Build it with the options, then call run()."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        kernel_name: str | None = None,
        timeout_s: int | None = 600,
        startup_timeout_s: int = 60,
        on_kernel_started: Callable[[int], None] | None = None,
        on_cell_start: Callable[[CellStart], None] | None = None,
        on_cell_end: Callable[[CellExecution], None] | None = None,
    ) -> None:
        self.path = Path(path).resolve()
        self.nb = read_notebook(self.path)
        spec = self.nb.metadata.get("kernelspec", {}) or {}
        self.kernel_name = kernel_name or spec.get("name") or "python3"
        try:  # an unknown kernel fails here, before the caller creates a run for it
            KernelSpecManager().get_kernel_spec(self.kernel_name)
        except NoSuchKernel:
            raise NotebookError(self.path, f"no kernel named {self.kernel_name!r} "
                                "(list them with: jupyter kernelspec list)") from None
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.on_kernel_started = on_kernel_started
        self.on_cell_start = on_cell_start
        self.on_cell_end = on_cell_end
        self._sent: dict[int, dt.datetime] = {}

    def run(self) -> NotebookResult:
        client = NotebookClient(
            self.nb, timeout=self.timeout_s, startup_timeout=self.startup_timeout_s,
            kernel_name=self.kernel_name, allow_errors=True, record_timing=True,
            resources={"metadata": {"path": str(self.path.parent)}},
            on_cell_execute=self._cell_execute, on_cell_executed=self._cell_executed,
            log=_jupyter_log(),
        )
        result = NotebookResult(
            path=str(self.path), kernel_name=self.kernel_name, language=None,
            kernel_pid=None, started=_now(),
        )
        self._result = result
        client.km = client.create_kernel_manager()
        client.km.log = client.log
        try:
            client.start_new_kernel(cwd=str(self.path.parent))
        except NoSuchKernel as exc:
            raise NotebookError(self.path, f"no kernel named {self.kernel_name!r} "
                                "(list them with: jupyter kernelspec list)") from exc
        except (OSError, RuntimeError) as exc:
            raise NotebookError(self.path, f"kernel {self.kernel_name!r} failed to start: {_first_line(exc)}") from exc
        result.kernel_pid = _kernel_pid(client)
        log.info("event=kernel-started notebook=%s kernel=%s pid=%s", self.path, self.kernel_name, result.kernel_pid)
        try:
            if self.on_kernel_started is not None and result.kernel_pid is not None:
                self.on_kernel_started(result.kernel_pid)
            self._connect(client)
            client.execute()
        except DeadKernelError as exc:
            self._stop_early(client, DIED, str(exc))
        except CellTimeoutError as exc:
            self._stop_early(client, "timeout", str(exc).strip().splitlines()[0])
        finally:
            if client.km is not None and client.km.has_kernel:
                client._cleanup_kernel()  # when execute() did not: a hook failed, or no client started
        result.notebook = self.nb
        result.language = (self.nb.metadata.get("language_info") or {}).get("name")
        result.ended = _now()
        return result

    def _connect(self, client: NotebookClient) -> None:
        """Waits for the kernel's kernel_info reply. Done here, not inside execute():
        there nbclient leaves an atexit hook behind when the kernel never answers."""
        try:
            client.start_new_kernel_client()
        except (RuntimeError, TimeoutError, OSError) as exc:  # nbclient has shut the kernel down
            raise NotebookError(self.path, f"kernel {self.kernel_name!r} did not start: {_first_line(exc)} "
                                f"(start-up timeout {self.startup_timeout_s} s)") from exc

    # -- nbclient hooks --------------------------------------------------------
    def _cell_execute(self, cell: Any, cell_index: int) -> None:
        started = _now()
        self._sent[cell_index] = started
        if self.on_cell_start is not None:
            self.on_cell_start(CellStart(cell_index, cell.get("id"), _sha256(cell.source), started))

    def _cell_executed(self, cell: Any, cell_index: int, execute_reply: dict | None) -> None:
        reply = execute_reply or {}
        content = reply.get("content") or {}
        error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
        status = ERROR if error is not None or content.get("status") == "error" else OK
        ename = (error or {}).get("ename") or content.get("ename")
        self._record(cell, cell_index, (reply.get("parent_header") or {}).get("msg_id"), status, None, ename)

    def _record(self, cell: Any, index: int, msg_id: str | None, status: str,
                reason: str | None, ename: str | None) -> None:
        timing = cell.get("metadata", {}).get("execution", {}) or {}
        started = _time(timing.get("iopub.status.busy")) or self._sent.get(index) or _now()
        ended = _time(timing.get("iopub.status.idle")) or _time(timing.get("shell.execute_reply"))
        if ended is None and reason is not None:
            ended = _now()
        count = cell.get("execution_count")
        execution = CellExecution(
            index=index, cell_id=cell.get("id"), msg_id=msg_id,
            execution_count=count if isinstance(count, int) else None,
            code_sha256=_sha256(cell.source), started=started, ended=ended,
            status=status, end_reason=reason, error_name=ename,
        )
        self._result.cells.append(execution)
        if self.on_cell_end is not None:
            self.on_cell_end(execution)

    def _stop_early(self, client: NotebookClient, reason: str, detail: str) -> None:
        self._result.stopped_early = f"{reason}: {detail}"
        log.warning("event=notebook-stopped notebook=%s reason=%s detail=%r", self.path, reason, detail)
        done = {c.index for c in self._result.cells}
        running = [i for i in self._sent if i not in done]
        for index in running:
            self._record(self.nb.cells[index], index, None, ERROR, reason, None)


def run_notebook(path: str | os.PathLike[str], **options: Any) -> NotebookResult:
    """Shorthand: NotebookRunner(path, **options).run()."""
    return NotebookRunner(path, **options).run()


def _jupyter_log() -> logging.Logger:
    """nbclient's and jupyter_client's logger: their errors repeat what NotebookError
    says in one line, with a traceback, so they show only when debugging."""
    quiet = logging.getLogger(__name__ + ".jupyter")
    quiet.setLevel(logging.NOTSET if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL)
    return quiet


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _kernel_pid(client: NotebookClient) -> int | None:
    provisioner = getattr(client.km, "provisioner", None)
    process = getattr(provisioner, "process", None)
    pid = getattr(process, "pid", None)
    return pid if isinstance(pid, int) else None


def _sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def _time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_iso(text)
    except ValueError:
        return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
