"""W3C PROV: provtrace.run/1 documents as one ProvDocument (PROV-JSON, PROV-N, PROV-XML).

The model, in PROV terms:
  - Activities: the run, each process, each notebook cell. A process
    wasStartedBy its parent (the root process by the run); a cell wasStartedBy
    the run. A pipe reader wasInformedBy its writer.
  - Entities: a file's path (`provtrace:File`), and one entity per version of
    its content (`provtrace:FileVersion`, numbered as `provtrace lineage`
    numbers them) that is prov:specializationOf the path; libraries as
    `provtrace:Library` entities named by build-id, and the execution context
    the run `used`: host, interpreters, packages, libraries, GPUs.
  - used binds to the version the access read; wasGeneratedBy to the version
    a write or rename made, once per version (PROV-CONSTRAINTS' generation
    uniqueness), by the process, or by the notebook cell the access ran in;
    wasInvalidatedBy (delete, rename away) ends the version it ended.
    wasDerivedFrom for content (a version written after reading another,
    pipes followed), for renames (prov:type provtrace:Rename) and for updates
    in place (prov:Revision).
  - Agent: the user (host + uid) the run wasAssociatedWith.
  - Every entity, activity and agent has a prov:label; a notebook cell
    wasInformedBy the cell run before it (prov:type provtrace:KernelState).

Identifiers are valid XML NCNames in their local part (PROV-XML's ids are
xs:QName): every character but ASCII letters, digits and '-' is written as
`_XX` per UTF-8 byte (a path's raw bytes when it is not UTF-8), parts are
joined with '.', and a version adds `.vN`. So ids are stable and
deterministic, and the path itself is in `provtrace:path` and prov:label.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from urllib.parse import quote

from prov.constants import PROV
from prov.model import PROV_LABEL, PROV_TYPE, ProvDocument, ProvElement

from .flows import USE_ACCESS, WRITE_ACCESS, Flows, ProcKey, flows_of
from .versioned import FileVersion, RunVersions, Versions, content_derivations

PT_URI = "urn:provtrace:"
PROV_PERSON = PROV["Person"]
_NC_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def prov_document(docs: list[dict], versions: Versions | None = None) -> ProvDocument:
    """versions: which file version each access touched (versioned.versions_for);
    without them (documents that come from no store) accesses bind to the path."""
    b = _Builder()
    for doc in docs:
        b.add_run(doc, (versions or Versions()).of((doc.get("run") or {}).get("id")))
    _label_all(b.d)
    return b.d


# the attribute that names a node best, in order (issue 14: prov:label on every node)
_LABEL_FROM = ("label", "path", "argv", "exe", "name", "cell", "user", "id")


def _label_all(d: ProvDocument) -> None:
    """prov:label on every entity, activity and agent: its label, path, command
    line, name, cell or user as recorded, else its identifier's local part."""
    for rec in d.get_records(ProvElement):
        if rec.get_attribute(PROV_LABEL):
            continue
        attrs = {str(k).split(":", 1)[-1]: v for k, v in rec.extra_attributes}
        value = next((attrs[k] for k in _LABEL_FROM if attrs.get(k) not in (None, "")), None)
        if isinstance(value, str) and value.startswith("["):  # argv, stored as JSON text
            try:
                value = " ".join(str(a) for a in json.loads(value))
            except ValueError:
                pass
        if rec.get_type() == PROV["Activity"] and "cell" in attrs and "label" not in attrs:
            value = f"cell {attrs.get('index', attrs['cell'])}"
        elif attrs.get("name") and attrs.get("version") and value == attrs["name"]:
            value = f"{attrs['name']} {attrs['version']}"  # a package or interpreter
        rec.add_attributes({PROV_LABEL: str(value if value is not None else rec.identifier.localpart)})


def serialize(docs: list[dict], fmt: str, versions: Versions | None = None) -> bytes:
    """fmt: json | provn | xml (the prov library's names)."""
    text = prov_document(docs, versions).serialize(format=fmt, **({"indent": 2} if fmt == "json" else {}))
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _nc(raw: bytes) -> str:
    """One part of an identifier: ASCII letters, digits and '-' kept, every other byte as _XX."""
    return "".join(chr(b) if b in _NC_KEEP else f"_{b:02X}" for b in raw) or "_"


def _local(*parts: object) -> str:
    """A local name that is an NCName (and a PROV-N PN_LOCAL): parts escaped
    (_nc), joined with '.'; a first character that is not a letter is escaped too."""
    out = ".".join(_nc(p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogateescape"))
                   for p in parts)
    return out if out[0].isalpha() or out[0] == "_" else f"_{ord(out[0]):02X}{out[1:]}"


def _path_raw(path: str, b64: str | None) -> bytes:
    return base64.b64decode(b64) if b64 else path.encode("utf-8", "surrogateescape")


def _dt(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def _attrs(prefix: str = "provtrace", **kw: object) -> dict:
    """Attributes with None dropped; lists and dicts as canonical JSON text."""
    out = {}
    for k, v in sorted(kw.items()):
        if v is None or v == [] or v == {}:
            continue
        if isinstance(v, (list, dict)):
            v = json.dumps(v, sort_keys=True, ensure_ascii=False)
        out[f"{prefix}:{k}"] = v
    return out


class _Builder:
    def __init__(self) -> None:
        self.d = ProvDocument()
        self.pt = self.d.add_namespace("provtrace", PT_URI)
        self.hosts: dict[str, object] = {}
        self.seen: set[str] = set()
        self.generated: set[str] = set()  # version entities with their generation

    # --- identifiers -------------------------------------------------------

    def _host_ns(self, host: str | None):
        host = host or "unknown-host"
        if host not in self.hosts:
            prefix = "f_" + re.sub(r"[^A-Za-z0-9_-]", "_", host)
            while prefix in {ns.prefix for ns in self.hosts.values()}:
                prefix += "_"
            # not file://HOST: local names are escaped paths, not URI paths
            self.hosts[host] = self.d.add_namespace(prefix, f"{PT_URI}file:{quote(host, safe='')}:")
        return self.hosts[host]

    def _once(self, qn) -> bool:
        key = str(qn)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    # --- one run -----------------------------------------------------------

    def add_run(self, doc: dict, rv: RunVersions) -> None:
        run = doc.get("run") or {}
        rid = run.get("id") or "unknown-run"
        host = run.get("host") or (doc.get("context") or {}).get("host")
        act = self.pt[_local("run", rid)]
        self.d.activity(act, _dt(run.get("started")), _dt(run.get("ended")), {
            PROV_TYPE: self.pt["Run"], **_attrs(
                id=rid, kind=run.get("kind"), backend=run.get("backend"), label=run.get("label"),
                argv=run.get("argv"), cwd=run.get("cwd"), host=host, exit_code=run.get("exit_code"),
                lost_events=run.get("lost_events"), complete=run.get("complete"))})
        agent = self._agent(host, run.get("uid"), run.get("user"))
        self.d.wasAssociatedWith(act, agent)
        self._context(act, rid, host, doc.get("context") or {})
        fl = flows_of(doc)
        cells = self._cells(act, rid, doc.get("cells") or [])
        self._processes(act, rid, host, run.get("uid"), fl, cells)
        rename_cells = {(r.get("pid"), r.get("from"), r.get("to"), r.get("time")): r.get("cell")
                        for r in doc.get("renames") or []}
        _Files(self, rid, host, fl, rv, cells, rename_cells).add()

    def _agent(self, host: str | None, uid: int | None, user: str | None):
        ag = self.pt[_local("user", host or "unknown-host", "unknown" if uid is None else uid)]
        if self._once(ag):
            self.d.agent(ag, {PROV_TYPE: PROV_PERSON, **_attrs(user=user, uid=uid, host=host)})
        return ag

    def _context(self, act, rid: str, host: str | None, ctx: dict) -> None:
        if not ctx:
            return
        cpu = ctx.get("cpu") or {}
        ent = self.pt[_local("run", rid, "context")]
        self.d.entity(ent, {PROV_TYPE: self.pt["ExecutionContext"], **_attrs(
            host=ctx.get("host") or host, kernel=ctx.get("kernel"), kernel_version=ctx.get("kernel_version"),
            arch=ctx.get("arch"), os=(ctx.get("os_release") or {}).get("PRETTY_NAME"),
            cpu_model=cpu.get("model"), cpu_count=cpu.get("count"), memory_bytes=ctx.get("memory_bytes"),
            container=(ctx.get("container") or {}).get("runtime"))})
        self.d.used(act, ent)
        used = []
        for i in ctx.get("interpreters") or []:
            used.append((self.pt[_local("interpreter", i.get("name"), i.get("version"), i.get("path"))],
                         "Interpreter", _attrs(name=i.get("name"), version=i.get("version"), path=i.get("path"),
                                               implementation=i.get("implementation"))))
        for p in ctx.get("packages") or []:
            used.append((self.pt[_local("package", p.get("ecosystem"), p.get("name"), p.get("version"))],
                         "Package", _attrs(name=p.get("name"), version=p.get("version"),
                                           ecosystem=p.get("ecosystem"), hash=p.get("hash"))))
        for lib in ctx.get("libraries") or []:
            used.append((self.pt[_local("library", lib.get("build_id") or "no-build-id", lib.get("path"))],
                         "Library", _attrs(path=lib.get("path"), soname=lib.get("soname"),
                                           build_id=lib.get("build_id"), package=lib.get("package"))))
        for g in ctx.get("gpus") or []:
            used.append((self.pt[_local("gpu", g.get("uuid") or f"{host}-{g.get('index')}")],
                         "GPU", _attrs(name=g.get("name"), uuid=g.get("uuid"), index=g.get("index"),
                                       driver_version=g.get("driver_version"), cuda_version=g.get("cuda_version"),
                                       memory_total_bytes=g.get("memory_total_bytes"))))
        for qn, kind, attrs in sorted(used, key=lambda u: str(u[0])):
            if self._once(qn):
                self.d.entity(qn, {PROV_TYPE: self.pt[kind], **attrs})
            self.d.used(act, qn)

    def _cells(self, act, rid: str, cells: list[dict]) -> dict[str, object]:
        out = {}
        for c in sorted(cells, key=lambda c: (c.get("started") or "", c.get("index") or 0, str(c.get("id")))):
            cid = c.get("id") if c.get("id") is not None else f"index-{c.get('index')}"
            qn = self.pt[_local("run", rid, "cell", cid)]
            out[c.get("id")] = qn
            self.d.activity(qn, _dt(c.get("started")), _dt(c.get("ended")), {
                PROV_TYPE: self.pt["Cell"], **_attrs(
                    cell=c.get("id"), index=c.get("index"), execution_count=c.get("execution_count"),
                    code_sha256=c.get("code_sha256"), status=c.get("status")), "provtrace:run": act})
            self.d.wasStartedBy(qn, None, act, _dt(c.get("started")))
        # kernel state: each cell may use what the cells before it left in the kernel
        ordered = list(out.values())
        for before, after in zip(ordered, ordered[1:]):
            self.d.wasInformedBy(after, before, other_attributes={PROV_TYPE: self.pt["KernelState"]})
        return out

    def proc_qn(self, rid: str, key: ProcKey):
        return self.pt[_local("run", rid, "process", key.local)]

    def _processes(self, act, rid: str, host: str | None, run_uid: int | None,
                   fl: Flows, cells: dict) -> None:
        for key in sorted(fl.procs, key=lambda k: (k.pid, k.nth)):
            p = fl.procs[key]
            qn = self.proc_qn(rid, key)
            extra = {"provtrace:run": act}
            if p.get("cell") in cells:
                extra["provtrace:cell"] = cells[p.get("cell")]
            self.d.activity(qn, _dt(p.get("started")), _dt(p.get("ended")), {
                PROV_TYPE: self.pt["Process"], **_attrs(
                    pid=p.get("pid"), ppid=p.get("ppid"), exe=p.get("exe"), argv=p.get("argv"),
                    cwd=p.get("cwd"), uid=p.get("uid"), exit_code=p.get("exit_code"),
                    signal=p.get("signal")), **extra})
            starter = self.proc_qn(rid, fl.parent[key]) if key in fl.parent else act
            self.d.wasStartedBy(qn, None, starter, _dt(p.get("started")))
            if p.get("uid") is not None and p.get("uid") != run_uid:
                self.d.wasAssociatedWith(qn, self._agent(host, p.get("uid"), None))
        for w, r in fl.pipes:
            self.d.wasInformedBy(self.proc_qn(rid, r), self.proc_qn(rid, w),
                                 other_attributes={PROV_TYPE: self.pt["Pipe"]})

    def file(self, host: str | None, path: str, fl: Flows, kind: str | None = None):
        """The path's entity (what every version of it specializes)."""
        qn = self._host_ns(host)[_local(_path_raw(path, fl.b64.get(path)))]
        if self._once(qn):
            self.d.entity(qn, {PROV_TYPE: self.pt["File"], **_attrs(
                path=path, path_b64=fl.b64.get(path), kind=kind or "data")})
        return qn

    def version(self, host: str | None, v: FileVersion, fl: Flows, kind: str | None = None):
        """v's entity (once), prov:specializationOf its path's entity."""
        path_qn = self.file(host, v.path, fl, kind)
        qn = self._host_ns(host)[_local(_path_raw(v.path, fl.b64.get(v.path)), f"v{v.n}")]
        if self._once(qn):
            self.d.entity(qn, {PROV_TYPE: self.pt["FileVersion"], PROV_LABEL: f"{v.path}@{v.n}", **_attrs(
                path=v.path, version=v.n, how=v.how, sha256=v.sha256, written=v.written, writer_run=v.run,
                lineage_id=v.id)})
            self.d.specializationOf(qn, path_qn)
        return qn


class _Files:
    """One run's file relations, each bound to the version it touched (when known)."""

    def __init__(self, b: _Builder, rid: str, host: str | None, fl: Flows, rv: RunVersions,
                 cells: dict, rename_cells: dict) -> None:
        self.b, self.d, self.rid, self.host, self.fl, self.rv = b, b.d, rid, host, fl, rv
        self.cells, self.rename_cells = cells, rename_cells

    def ent(self, path: str, v: FileVersion | None, kind: str | None = None):
        return self.b.file(self.host, path, self.fl, kind) if v is None else \
            self.b.version(self.host, v, self.fl, kind)

    def unit(self, proc: ProcKey, cell: str | None):
        """The activity of an access: its notebook cell when it ran in one (as lineage), else its process."""
        return self.cells[cell] if cell in self.cells else self.b.proc_qn(self.rid, proc)

    def generate(self, ent, act, when: str | None, attrs: dict, v: FileVersion | None) -> None:
        """One generation per version (PROV-CONSTRAINTS 24), however many records name it."""
        if v is not None and str(ent) in self.b.generated:
            return
        self.b.generated.add(str(ent))
        self.d.wasGeneratedBy(ent, act, _dt(when), other_attributes=attrs or None)

    def add(self) -> None:
        fl, rv = self.fl, self.rv
        for a in fl.accesses:
            act = self.unit(a.proc, a.cell)
            key = (a.proc.pid, a.cell, a.path)
            if USE_ACCESS & set(a.access):
                v = rv.read.get((*key, a.first))
                self.d.used(act, self.ent(a.path, v, a.kind), _dt(a.first), other_attributes=_attrs(
                    access=",".join(a.access), bytes_read=a.bytes_read or None))
            if WRITE_ACCESS & set(a.access):
                v = rv.wrote.get((*key, a.last))
                self.generate(self.ent(a.path, v, a.kind), act, a.last, _attrs(
                    access=",".join(a.access), bytes_written=a.bytes_written or None), v)
                if v is not None and v.prev is not None:
                    self.d.wasDerivedFrom(self.ent(a.path, v, a.kind), self.ent(a.path, v.prev, a.kind), act,
                                          other_attributes={PROV_TYPE: PROV["Revision"]})
            if "delete" in a.access:
                self.d.wasInvalidatedBy(self.ent(a.path, rv.ended.get((*key, a.last)), a.kind), act, _dt(a.last))
        for proc_key, src, dst, when in fl.renames:
            act = self.unit(proc_key, self.rename_cells.get((proc_key.pid, src, dst, when)))
            moved, made = rv.renamed.get((proc_key.pid, src, dst, when), (None, None))
            s, t = self.ent(src, moved), self.ent(dst, made)
            self.d.wasInvalidatedBy(s, act, _dt(when), other_attributes=_attrs(access="rename"))
            self.generate(t, act, when, _attrs(access="rename"), made)
            self.d.wasDerivedFrom(t, s, act, other_attributes={PROV_TYPE: self.b.pt["Rename"]})
        done = set()
        for w, made, r, seen in content_derivations(fl, rv):
            out, src = self.ent(w.path, made, w.kind), self.ent(r.path, seen, r.kind)
            if (out, src) not in done:
                done.add((out, src))
                self.d.wasDerivedFrom(out, src, self.unit(w.proc, w.cell))
