"""File versions for the exporters: which version of a file each access read, wrote or ended.

Exporters are pure functions of provtrace.run/1 documents, and a document
names paths, not versions. Which version of a path a read saw, and which
version a write or a rename made, is a question about the whole store
(another run may have written the path in between, or a change outside
tracing), answered by lineage/versions.Model. `versions_for` asks it once per
export for the data and temp files of the exported runs, and hands the
answers to the exporters as plain values keyed the way flows.Access and
flows.Flows.renames name an access, so every format numbers versions as
`provtrace lineage` does (`file:PATH@N`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..clock import us_to_iso
from ..lineage.graph import SHOWN_KINDS, content_fp
from ..lineage.versions import DELETE_BITS, READ_BITS, WRITE_BITS, Model, Version
from ..model.paths import display
from ..store import sqlite as S
from .flows import Access, Flows


@dataclass(frozen=True)
class FileVersion:
    """One version of a file, as exports show it."""

    path: str  # as documents show it (undecodable bytes as \\xNN)
    n: int  # 1, 2, ... in the path's history, as lineage numbers it
    how: str  # "write" | "rename" | "outside"
    sha256: str | None = None
    written: str | None = None  # when a traced process made it (ISO-8601)
    run: str | None = None  # the run that made it (None: no traced process)
    pid: int | None = None
    cell: str | None = None
    prev: FileVersion | None = None  # an update in place: the version it started from
    src: tuple[str, int] | None = None  # a rename: the version moved here

    @property
    def id(self) -> str:
        """The node id lineage gives this version."""
        return f"file:{self.path}@{self.n}"


@dataclass
class RunVersions:
    """One run's accesses -> versions. Keys: (pid, cell, path, ISO time) of an
    access, the time being its first access for a read and its last for a write
    or delete; renames by (pid, from, to, ISO time)."""

    read: dict[tuple, FileVersion] = field(default_factory=dict)
    wrote: dict[tuple, FileVersion] = field(default_factory=dict)
    ended: dict[tuple, FileVersion] = field(default_factory=dict)
    renamed: dict[tuple, tuple[FileVersion | None, FileVersion | None]] = field(default_factory=dict)


@dataclass
class Versions:
    """Per run id, its RunVersions; a run it does not know has none."""

    runs: dict[str, RunVersions] = field(default_factory=dict)

    def of(self, run_id: object) -> RunVersions:
        return self.runs.get(str(run_id)) or RunVersions()


def versions_for(store: S.Store, docs: list[dict], uid: int | None = None) -> Versions:
    """The versions the exported runs' data and temp file accesses touched.
    uid: versions as that uid's runs alone made them (the daemon's caller)."""
    model = Model(store, uid)
    out = Versions()
    for doc in docs:
        run_id = (doc.get("run") or {}).get("id")
        row = store.db.execute("SELECT rid FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is not None:
            out.runs[str(run_id)] = _run_versions(model, row[0])
    return out


def _run_versions(model: Model, rid: int) -> RunVersions:
    rv = RunVersions()
    seen: dict[int, FileVersion] = {}

    def fv(v: Version | None) -> FileVersion | None:
        if v is None:
            return None
        if id(v) not in seen:
            seen[id(v)] = _file_version(model, v, fv)
        return seen[id(v)]

    for f in model.run_files(rid):
        if f.kind not in SHOWN_KINDS:
            continue
        path = display(f.path)
        if f.bits & READ_BITS and (v := fv(model.read_version(f))):
            rv.read[(f.act.pid, f.act.cell, path, us_to_iso(f.first))] = v
        if f.bits & WRITE_BITS and (v := fv(model.written_version(f))):
            rv.wrote[(f.act.pid, f.act.cell, path, us_to_iso(f.last))] = v
        if f.bits & DELETE_BITS:
            gone = next((v for v in model.history(f.path).versions
                         if v.ended_by == f.act and v.end is not None and v.end[0] == f.last), None)
            if gone is not None:
                rv.ended[(f.act.pid, f.act.cell, path, us_to_iso(f.last))] = fv(gone)
    for src, dst, ev in model.renames_by(("run", rid, None)):
        made = model.history(dst).made_by_rename(ev.key)
        moved = model.history(src).moved_out.get(ev.key[:2])
        rv.renamed[(ev.act.pid, display(src), display(dst), us_to_iso(int(ev.t)))] = (fv(moved), fv(made))
    return rv


def _file_version(model: Model, v: Version, fv) -> FileVersion:
    act = v.act
    src = model.renamed_from(v)
    return FileVersion(
        path=display(v.path), n=v.n, how=v.how, sha256=(content_fp(model, v) or {}).get("sha256"),
        written=us_to_iso(v.t_us) if act is not None and v.t_us is not None else None,
        run=model.run_ids.get(act.rid) if act else None, pid=act.pid if act else None,
        cell=act.cell if act else None, prev=fv(v.prev),
        src=(display(src.path), src.n) if src is not None else None)


def content_derivations(fl: Flows, rv: RunVersions) -> list[tuple[Access, FileVersion | None,
                                                                   Access, FileVersion | None]]:
    """fl.content with versions: (write, version it made, read, version it saw);
    None where the version is not known. The renamed version derives from this
    one by the rename, a step of its own."""
    return [(w, rv.wrote.get((w.proc.pid, w.cell, w.path, w.last)),
             r, rv.read.get((r.proc.pid, r.cell, r.path, r.first))) for w, r in fl.content]
