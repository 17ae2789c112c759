"""Attribution of process events to cell windows.

Rules (the order in which they are tried):

1. Identity. A process is (pid, start_ns), never pid alone: an event of pid P
   at time T belongs to the instance of P with the latest start_ns <= T.
2. Kernel events. An event of a kernel process belongs to the window of that
   kernel that contains it (closed interval). Outside every window -- kernel
   start-up included -- it belongs to no cell.
3. Threads. A kernel thread (tid != pid) started during a window belongs to
   that window for its whole life, like a child process. A window that names
   its executing thread (CellWindow.tid) owns that thread's events while open.
4. Concurrent windows (ipykernel 7 subshells). When several windows of one
   kernel are open at once: a window whose tid is the event's thread wins;
   else the main thread (tid == pid) goes to the one main-shell window
   (subshell_id None); another thread goes to the one open subshell window
   when there is exactly one (marked ambiguous: it may also be a thread the
   cell started earlier, or a kernel helper thread); else the
   earliest-started open window, marked ambiguous. (Python 3.11 threads have
   no OS names, so a subshell's thread id is only known when a reporter
   sets CellWindow.tid.)
5. Children. A child process belongs to the cell its parent was in when it
   was forked (start_ns), decided with the forking thread (parent_tid) by
   rules 2-4. It keeps that cell after the window ends, and grandchildren
   inherit it. Exiting before exec changes nothing.

Everything here is pure: it depends on the records added, not on the order
in which they arrived. An event whose process is not known yet attributes as
"unknown-process"; attribute it again once the record arrives.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from .windows import CellWindow


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    ppid: int
    start_ns: int
    exit_ns: int | None = None
    parent_tid: int | None = None  # thread of the parent that forked it


@dataclass(frozen=True)
class ThreadRecord:
    tid: int
    pid: int
    start_ns: int


@dataclass(frozen=True)
class Attribution:
    window: CellWindow | None
    reason: str
    ambiguous: bool = False

    @property
    def cell(self) -> str | None:
        return self.window.key if self.window else None


_NONE_IDLE = Attribution(None, "kernel-idle")
_NONE_UNKNOWN = Attribution(None, "unknown-process")
_NONE_OUTSIDE = Attribution(None, "not-kernel-descendant")


class CellAttributor:
    """Holds process, thread, kernel and window records; answers which cell an event is in."""

    def __init__(self) -> None:
        self._procs: dict[int, list[ProcessRecord]] = defaultdict(list)
        self._threads: dict[int, list[ThreadRecord]] = defaultdict(list)
        self._kernels: set[tuple[int, int]] = set()
        self._windows: dict[tuple[int, str], CellWindow] = {}
        self._memo: dict[tuple[int, int], Attribution] = {}

    # -- records -------------------------------------------------------------
    def add_kernel(self, pid: int, start_ns: int) -> None:
        self._kernels.add((pid, start_ns))
        self._memo.clear()

    def add_process(self, rec: ProcessRecord) -> None:
        insts = self._procs[rec.pid]
        insts[:] = [p for p in insts if p.start_ns != rec.start_ns] + [rec]
        insts.sort(key=lambda p: p.start_ns)
        self._memo.clear()

    def add_thread(self, rec: ThreadRecord) -> None:
        insts = self._threads[rec.tid]
        insts[:] = [t for t in insts if t.start_ns != rec.start_ns] + [rec]
        insts.sort(key=lambda t: t.start_ns)

    def add_window(self, window: CellWindow) -> None:
        """Adds or replaces (same kernel pid and msg_id) a window."""
        self._windows[(window.kernel_pid, window.msg_id)] = window
        self._memo.clear()

    def add_windows(self, windows: Iterable[CellWindow]) -> None:
        for w in windows:
            self.add_window(w)

    # -- queries -------------------------------------------------------------
    def attribute(self, pid: int, tid: int | None, ts_ns: int) -> Attribution:
        """The cell of an event by thread tid of process pid at ts_ns."""
        ident = self._identity(pid, ts_ns)
        if ident is None:
            return _NONE_UNKNOWN
        if ident in self._kernels:
            return self._kernel_event(ident, tid, ts_ns)
        return self.cell_of_process(*ident)

    def cell_of_process(self, pid: int, start_ns: int) -> Attribution:
        """The cell a (non-kernel) process belongs to, by its fork time and ancestry."""
        chain: list[tuple[int, int]] = []
        ident: tuple[int, int] | None = (pid, start_ns)
        result = _NONE_OUTSIDE
        from_kernel = False
        while ident is not None:
            if ident in self._memo:
                result = self._memo[ident]
                break
            if ident in chain:  # a cycle means bad records; stop rather than loop
                break
            rec = self._record(ident)
            if rec is None:
                result = _NONE_UNKNOWN
                break
            chain.append(ident)
            parent = self._identity(rec.ppid, rec.start_ns)
            if parent is None:
                result = _NONE_OUTSIDE
                break
            if parent in self._kernels:
                hit = self._kernel_event(parent, rec.parent_tid, rec.start_ns)
                result = Attribution(hit.window, "fork-time", hit.ambiguous) if hit.window else hit
                from_kernel = True
                break
            ident = parent
        for i, member in enumerate(chain):
            direct = from_kernel and i == len(chain) - 1
            if result.window is None or direct:
                self._memo[member] = result
            else:
                self._memo[member] = Attribution(result.window, "inherited", result.ambiguous)
        return self._memo.get((pid, start_ns), result)

    def windows(self) -> list[CellWindow]:
        return sorted(self._windows.values(), key=lambda w: (w.start_ns, w.msg_id))

    # -- internals -----------------------------------------------------------
    def _identity(self, pid: int, ts_ns: int) -> tuple[int, int] | None:
        best: int | None = None
        for rec in self._procs.get(pid, ()):
            if rec.start_ns <= ts_ns:
                best = rec.start_ns
        for kpid, kstart in self._kernels:
            if kpid == pid and kstart <= ts_ns and (best is None or kstart > best):
                best = kstart
        return None if best is None else (pid, best)

    def _record(self, ident: tuple[int, int]) -> ProcessRecord | None:
        for rec in self._procs.get(ident[0], ()):
            if rec.start_ns == ident[1]:
                return rec
        return None

    def _kernel_windows(self, kernel: tuple[int, int]) -> list[CellWindow]:
        """Windows of this kernel instance (not of an earlier process with its pid)."""
        pid, start_ns = kernel
        later = [s for p, s in self._kernels if p == pid and s > start_ns]
        limit = min(later) if later else None
        return [
            w for (kpid, _), w in self._windows.items()
            if kpid == pid and w.start_ns >= start_ns and (limit is None or w.start_ns < limit)
        ]

    def _kernel_event(self, kernel: tuple[int, int], tid: int | None, ts_ns: int) -> Attribution:
        windows = self._kernel_windows(kernel)
        open_now = [w for w in windows if w.contains(ts_ns)]
        if tid is not None:
            for w in open_now:
                if w.tid == tid:
                    return Attribution(w, "kernel-thread")
            if tid != kernel[0]:
                born = self._thread_window(kernel, tid, ts_ns, windows)
                if born is not None:
                    return born
        if not open_now:
            return _NONE_IDLE
        if len(open_now) == 1:
            return Attribution(open_now[0], "kernel-window")
        if tid is None or tid == kernel[0]:
            main = [w for w in open_now if w.subshell_id is None and w.tid in (None, kernel[0])]
            if len(main) == 1:
                return Attribution(main[0], "kernel-main-shell")
        else:
            subs = [w for w in open_now if w.subshell_id is not None and w.tid is None]
            if len(subs) == 1:
                return Attribution(subs[0], "kernel-subshell", ambiguous=True)
        first = min(open_now, key=lambda w: (w.start_ns, w.msg_id))
        return Attribution(first, "kernel-window", ambiguous=True)

    def _thread_window(
        self, kernel: tuple[int, int], tid: int, ts_ns: int, windows: list[CellWindow]
    ) -> Attribution | None:
        thread = None
        for rec in self._threads.get(tid, ()):
            if rec.pid == kernel[0] and kernel[1] <= rec.start_ns <= ts_ns:
                thread = rec
        if thread is None:
            return None
        born_in = [w for w in windows if w.contains(thread.start_ns)]
        if not born_in:
            return None
        if len(born_in) == 1:
            return Attribution(born_in[0], "thread-start")
        first = min(born_in, key=lambda w: (w.start_ns, w.msg_id))
        return Attribution(first, "thread-start", ambiguous=True)
