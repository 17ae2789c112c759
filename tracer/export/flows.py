"""Flows: what one provtrace.run/1 document says moved where, for the exporters.

Every exporter needs the same reading of a run: which process is which (a
pid can be reused inside a long run), which data files each process read and
wrote, where temporary names were renamed to, which writes derive from which
reads, and who fed whom through pipes. It is computed here once, as plain
sorted tuples, so PROV, OpenLineage and the graph formats agree and stay
deterministic.

Times in the document are ISO-8601 UTC strings of one fixed width
(microseconds, 'Z'), so they compare correctly as strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.paths import DATA, classify

# Kinds that are lineage: data files, and temp files (a temp name is how a
# write reaches its final name through a rename).
LINEAGE_KINDS = ("data", "temp")
WRITE_ACCESS = frozenset({"write", "create", "truncate"})
USE_ACCESS = frozenset({"read", "exec", "map"})


@dataclass(frozen=True)
class ProcKey:
    """A process inside one run: pid plus its ordinal among processes with that pid."""

    pid: int
    nth: int = 1

    @property
    def local(self) -> str:
        return str(self.pid) if self.nth == 1 else f"{self.pid}.{self.nth}"


@dataclass(frozen=True)
class Access:
    proc: ProcKey
    path: str
    path_b64: str | None
    kind: str
    access: tuple[str, ...]
    bytes_read: int
    bytes_written: int
    first: str | None
    last: str | None
    cell: str | None


@dataclass
class Flows:
    procs: dict[ProcKey, dict] = field(default_factory=dict)
    parent: dict[ProcKey, ProcKey] = field(default_factory=dict)
    accesses: list[Access] = field(default_factory=list)
    renames: list[tuple[ProcKey, str, str, str | None]] = field(default_factory=list)
    pipes: list[tuple[ProcKey, ProcKey]] = field(default_factory=list)  # (writer, reader)
    content: list[tuple[Access, Access]] = field(default_factory=list)  # (write, read before it)
    b64: dict[str, str] = field(default_factory=dict)  # escaped path -> raw bytes as base64

    def reads(self) -> list[Access]:
        return [a for a in self.accesses if USE_ACCESS & set(a.access)]

    def writes(self) -> list[Access]:
        return [a for a in self.accesses if WRITE_ACCESS & set(a.access)]


def flows_of(doc: dict) -> Flows:
    fl = Flows()
    by_pid = _key_processes(doc.get("processes") or [], fl)
    owner = _owner(by_pid)
    for f in doc.get("files") or []:
        if f.get("kind") not in LINEAGE_KINDS:
            continue
        if f.get("path_b64"):
            fl.b64[f["path"]] = f["path_b64"]
        fl.accesses.append(Access(
            owner(f.get("pid"), f.get("first")), f["path"], f.get("path_b64"), f["kind"],
            tuple(f.get("access") or ()), f.get("bytes_read") or 0, f.get("bytes_written") or 0,
            f.get("first"), f.get("last"), f.get("cell")))
    fl.accesses.sort(key=lambda a: (a.path, a.proc.pid, a.proc.nth))
    for r in sorted(doc.get("renames") or [], key=lambda r: (r.get("time") or "", r["from"], r["to"])):
        fl.renames.append((owner(r.get("pid"), r.get("time")), r["from"], r["to"], r.get("time")))
    for p in doc.get("pipes") or []:
        for w in p.get("writers") or []:
            for r in p.get("readers") or []:
                if w != r:
                    fl.pipes.append((owner(w, None), owner(r, None)))
    fl.pipes = sorted(set(fl.pipes), key=lambda wr: (wr[0].pid, wr[0].nth, wr[1].pid, wr[1].nth))
    fl.content = _content(fl)
    return fl


def _key_processes(processes: list[dict], fl: Flows) -> dict[int, list[tuple[str, ProcKey]]]:
    """Give each process a ProcKey; pids seen twice are told apart by start time."""
    by_pid: dict[int, list[tuple[str, ProcKey]]] = {}
    for p in sorted(processes, key=lambda p: (p["pid"], p.get("started") or "")):
        seen = by_pid.setdefault(p["pid"], [])
        key = ProcKey(p["pid"], len(seen) + 1)
        seen.append((p.get("started") or "", key))
        fl.procs[key] = p
    owner = _owner(by_pid)
    for key, p in fl.procs.items():
        ppid = p.get("ppid")
        if ppid in by_pid:
            parent = owner(ppid, p.get("started"))
            if parent != key:
                fl.parent[key] = parent
    return by_pid


def _owner(by_pid: dict[int, list[tuple[str, ProcKey]]]):
    """pid + time -> the process with that pid that had started by then (else the first)."""
    def owner(pid: int, when: str | None) -> ProcKey:
        cands = by_pid.get(pid)
        if not cands:
            return ProcKey(pid)  # a record whose process record is missing: keep the pid
        best = cands[0][1]
        for started, key in cands:
            if when is not None and started <= when:
                best = key
        return best
    return owner


def final_name(path: str, renames: list[tuple[ProcKey, str, str, str | None]], after: str | None) -> str:
    """Follow renames (in time order) from path, starting at a time."""
    t = after or ""
    for _proc, src, dst, when in renames:
        if src == path and (when or "") >= t:
            path, t = dst, when or t
    return path


def _content(fl: Flows) -> list[tuple[Access, Access]]:
    """(write, read): a process wrote a file after it read a data file.

    A process's inputs are the data files it read, plus, through pipes, the
    inputs of the processes that wrote into its stdin (transitively). A read
    counts only if it began before the process finished that write. Renames are
    a step of their own (fl.renames): the renamed file derives from the name
    it was written as.
    """
    own: dict[ProcKey, set[Access]] = {}
    for a in fl.reads():
        if a.kind == "data" and "read" in a.access:
            own.setdefault(a.proc, set()).add(a)
    inputs = through_pipes(own, fl.pipes)
    out = []
    for w in fl.writes():
        for r in sorted(inputs.get(w.proc, ()), key=lambda r: (r.path, r.first or "", r.proc.pid, r.proc.nth)):
            if r.path != w.path and (not w.last or (r.first or "") <= w.last):
                out.append((w, r))
    return out


def through_pipes(own: dict[ProcKey, set], pipes: list[tuple[ProcKey, ProcKey]]) -> dict[ProcKey, set]:
    feeders: dict[ProcKey, set[ProcKey]] = {}
    for w, r in pipes:
        feeders.setdefault(r, set()).add(w)
    result: dict[ProcKey, set] = {}
    for proc in set(own) | set(feeders):
        acc, stack, seen = set(), [proc], {proc}
        while stack:
            p = stack.pop()
            acc |= own.get(p, set())
            for w in feeders.get(p, ()):
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        result[proc] = acc
    return result


def run_io(fl: Flows) -> tuple[list[str], list[tuple[str, str]]]:
    """A run's data inputs and outputs, for dataset-level formats (OpenLineage).

    Inputs: data files read before the run first wrote them (a file the run
    made and then read back is an output, not an input). Outputs: data files
    written, under their final names, as (final, name written). A data file the
    run only renamed (one it did not make) is both: its old name an input, its
    final name an output renamed from it.
    """
    first_write: dict[str, str] = {}
    for w in fl.writes():
        t = w.first or ""
        first_write[w.path] = min(first_write.get(w.path, t), t)
    for _proc, _src, dst, when in fl.renames:  # a rename onto a name makes that file too
        first_write[dst] = min(first_write.get(dst, when or ""), when or "")
    inputs = {a.path for a in fl.reads() if a.kind == "data" and "read" in a.access
              and (a.path not in first_write or (a.first or "") < first_write[a.path])}
    outputs = {(final_name(w.path, fl.renames, w.first), w.path) for w in fl.writes()
               if w.kind in LINEAGE_KINDS}
    # a file the run only moved (mv report.md final.md): the old name in, the final name out
    for _proc, src, dst, when in fl.renames:
        made = first_write.get(src)
        if (made is None or made > (when or "")) and classify(src) == DATA:
            inputs.add(src)
            outputs.add((final_name(dst, fl.renames, when), src))
    inputs, outputs = sorted(inputs), sorted(outputs)
    # a temp name that never reached a final data name is no output of the run
    temp = {a.path for a in fl.accesses if a.kind == "temp"}
    outputs = [(dst, src) for dst, src in outputs if dst not in temp]
    return inputs, outputs
