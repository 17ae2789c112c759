"""Links and directories, folded into records (the Tracker's share of issue 13).

A mixin of model.processes.Tracker: it uses the Tracker's processes, fd tables,
path resolution and sink. What it makes true:

- an open that went through a symlink is an access of the file it reached
  (the probes' EV_RESOLVED, or ptrace's, comes just before its EV_OPEN), with
  the name used kept in `via`;
- link/linkat and symlink/symlinkat become LinkRec records, mkdir/mkdirat and
  rmdir DirRec records;
- an O_TMPFILE file has no name until linkat gives it one; from then on its
  fds name the final path, which the process created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import events as E
from .paths import resolve

if TYPE_CHECKING:  # the Tracker's own types; processes.py imports this module
    from .processes import FdEntry, Proc

O_TMPFILE = 0o20200000  # __O_TMPFILE | O_DIRECTORY: an unnamed file in a directory
AT_EMPTY_PATH = 0x1000


@dataclass(frozen=True, slots=True)
class LinkRec:
    """A new name for a file: op "link" (hard: the same file under dst) or
    "symlink" (dst points at src; target is the text written). src is None
    for an unnamed O_TMPFILE file linked into place."""

    pid: int
    op: str
    src: str | None
    dst: str
    ts_ns: int
    cell: str | None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class DirRec:
    pid: int
    op: str  # "mkdir" | "rmdir"
    path: str
    ts_ns: int
    cell: str | None


class LinkFolding:
    """Handlers for E.Resolved, E.Link, E.Mkdir and rmdir (an E.Unlink with
    AT_REMOVEDIR); mixed into Tracker, whose state they use."""

    def _link_handlers(self) -> dict:
        # tid -> (fd, path) of an EV_RESOLVED waiting for its open
        self._resolved: dict[int, tuple[int, str | None]] = {}
        return {E.Link: self._link, E.Mkdir: self._mkdir, E.Resolved: self._resolved_for}

    def _resolved_for(self, ev: E.Resolved) -> None:
        self._resolved[ev.tid] = (ev.fd, ev.path)

    def _through_link(self, ev: E.Open, path: str | None) -> tuple[str | None, str | None]:
        """(the path the open reached, the name it used) when an EV_RESOLVED for
        this open came before it; else (path, None)."""
        got = self._resolved.pop(ev.tid, None)
        if got is None or got[0] != ev.fd:
            return path, None
        if got[1] is None:
            self._gap("resolved_path_truncated")
            return path, None
        return got[1], (path if path != got[1] else None)

    def _link(self, ev: E.Link) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        dst = self._resolve_at(p, ev.newdirfd, ev.new)
        if dst is None:
            return
        cell = self.cells.action_cell(p, ev.tid, ev.ts_ns)
        if ev.op == E.LINK_SYMBOLIC:
            src = resolve(os.path.dirname(dst), ev.old) if ev.old else None
            self.sink.on_link(LinkRec(p.pid, "symlink", src, dst, ev.ts_ns, cell, ev.old))
            return
        entry = self._link_source(p, ev)
        if entry is not None and entry.kind == "tmpfile":
            self._name_tmpfile(p, entry, dst, ev)
            self.sink.on_link(LinkRec(p.pid, "link", None, dst, ev.ts_ns, cell))
            return
        src = entry.path if entry is not None else self._resolve_at(p, ev.olddirfd, ev.old)
        if src is not None:
            self.sink.on_link(LinkRec(p.pid, "link", src, dst, ev.ts_ns, cell))

    def _link_source(self, p: Proc, ev: E.Link) -> FdEntry | None:
        """The open file a linkat names by fd: linkat(fd, "", ..., AT_EMPTY_PATH)
        or linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW)."""
        if ev.flags & AT_EMPTY_PATH and not ev.old:
            return p.fds.get(ev.olddirfd)
        parts = ev.old.split("/")
        if len(parts) == 5 and parts[:2] == ["", "proc"] and parts[3] == "fd":
            owner = p if parts[2] in ("self", "thread-self", str(p.pid)) else self.live.get(_int(parts[2]))
            if owner is not None:
                return owner.fds.get(_int(parts[4]))
        return None

    def _name_tmpfile(self, p: Proc, entry: FdEntry, dst: str, ev: E.Event) -> None:
        """An O_TMPFILE file linked into place: from now on its fds name dst, and
        the process created dst (its writes, flushed at close, count there)."""
        for q in self.live.values():
            for fd, e in q.fds.items():
                if e.kind == "tmpfile" and e.ino == entry.ino and e.dev == entry.dev:
                    q.fds[fd] = e._replace(path=dst, kind="file")
        self._access(p, dst, ev).access.add("create")

    def _mkdir(self, ev: E.Mkdir) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        path = self._resolve_at(p, ev.dirfd, ev.path)
        if path is not None:
            self.sink.on_dir(DirRec(p.pid, "mkdir", path, ev.ts_ns, self.cells.action_cell(p, ev.tid, ev.ts_ns)))

    def _rmdir(self, ev: E.Unlink) -> None:
        p = self._proc(ev.pid, ev.tid, ev.ts_ns, ev.tag)
        path = self._resolve_at(p, ev.dirfd, ev.path)
        if path is not None:
            self.sink.on_dir(DirRec(p.pid, "rmdir", path, ev.ts_ns, self.cells.action_cell(p, ev.tid, ev.ts_ns)))



def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1
