"""W3C PROV: provtrace.run/1 documents as one ProvDocument (PROV-JSON, PROV-N, PROV-XML).

The model, in PROV terms:
  - Activities: the run, each process, each notebook cell. A process
    wasStartedBy its parent (the root process by the run); a cell wasStartedBy
    the run. A pipe reader wasInformedBy its writer.
  - Entities: files by absolute path, as file://HOST URIs (data and temp
    files; libraries as `provtrace:Library` entities named by build-id),
    and the execution context the run `used`: host, interpreters, packages,
    libraries, GPUs.
  - used / wasGeneratedBy / wasInvalidatedBy (delete, rename away) with the
    access times; wasDerivedFrom for content (a process read A and wrote B,
    pipes and renames followed) and for renames (prov:type provtrace:Rename).
  - Agent: the user (host + uid) the run wasAssociatedWith.
  - Every entity, activity and agent has a prov:label; a notebook cell
    wasInformedBy the cell run before it (prov:type provtrace:KernelState).

A file entity is the path, not one version of its content, so an export of
several runs may show one file generated more than once.
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

PT_URI = "urn:provtrace:"
PROV_PERSON = PROV["Person"]


def prov_document(docs: list[dict]) -> ProvDocument:
    b = _Builder()
    for doc in docs:
        b.add_run(doc)
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


def serialize(docs: list[dict], fmt: str) -> bytes:
    """fmt: json | provn | xml (the prov library's names)."""
    text = prov_document(docs).serialize(format=fmt, **({"indent": 2} if fmt == "json" else {}))
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _local(*parts: object, path: str | None = None) -> str:
    """A PROV-N-safe local name: each part percent-encoded, joined with '/'; a path goes last, slashes kept."""
    out = "/".join(quote(str(p), safe="") for p in parts) + (quote(path, safe="/") if path else "")
    # PN_LOCAL may not end with '.'
    return out[:-1] + "%2E" if out.endswith(".") else out


def _path_local(path: str, b64: str | None) -> str:
    raw = base64.b64decode(b64) if b64 else path.encode("utf-8", "surrogateescape")
    out = quote(raw, safe="/")
    return out[:-1] + "%2E" if out.endswith(".") else out


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

    # --- identifiers -------------------------------------------------------

    def _host_ns(self, host: str | None):
        host = host or "unknown-host"
        if host not in self.hosts:
            prefix = "f_" + re.sub(r"[^A-Za-z0-9_-]", "_", host)
            while prefix in {ns.prefix for ns in self.hosts.values()}:
                prefix += "_"
            self.hosts[host] = self.d.add_namespace(prefix, f"file://{quote(host, safe='')}")
        return self.hosts[host]

    def _once(self, qn) -> bool:
        key = str(qn)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    # --- one run -----------------------------------------------------------

    def add_run(self, doc: dict) -> None:
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
        self._files(rid, host, fl)
        self._cell_io(host, doc.get("cells") or [], cells, fl)

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
            used.append((self.pt[_local("interpreter", i.get("name"), i.get("version"), path=i.get("path"))],
                         "Interpreter", _attrs(name=i.get("name"), version=i.get("version"), path=i.get("path"),
                                               implementation=i.get("implementation"))))
        for p in ctx.get("packages") or []:
            used.append((self.pt[_local("package", p.get("ecosystem"), p.get("name"), p.get("version"))],
                         "Package", _attrs(name=p.get("name"), version=p.get("version"),
                                           ecosystem=p.get("ecosystem"), hash=p.get("hash"))))
        for lib in ctx.get("libraries") or []:
            used.append((self.pt[_local("library", lib.get("build_id") or "no-build-id", path=lib.get("path"))],
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

    def _proc_qn(self, rid: str, key: ProcKey):
        return self.pt[_local("run", rid, "process", key.local)]

    def _processes(self, act, rid: str, host: str | None, run_uid: int | None,
                   fl: Flows, cells: dict) -> None:
        for key in sorted(fl.procs, key=lambda k: (k.pid, k.nth)):
            p = fl.procs[key]
            qn = self._proc_qn(rid, key)
            extra = {"provtrace:run": act}
            if p.get("cell") in cells:
                extra["provtrace:cell"] = cells[p.get("cell")]
            self.d.activity(qn, _dt(p.get("started")), _dt(p.get("ended")), {
                PROV_TYPE: self.pt["Process"], **_attrs(
                    pid=p.get("pid"), ppid=p.get("ppid"), exe=p.get("exe"), argv=p.get("argv"),
                    cwd=p.get("cwd"), uid=p.get("uid"), exit_code=p.get("exit_code"),
                    signal=p.get("signal")), **extra})
            starter = self._proc_qn(rid, fl.parent[key]) if key in fl.parent else act
            self.d.wasStartedBy(qn, None, starter, _dt(p.get("started")))
            if p.get("uid") is not None and p.get("uid") != run_uid:
                self.d.wasAssociatedWith(qn, self._agent(host, p.get("uid"), None))
        for w, r in fl.pipes:
            self.d.wasInformedBy(self._proc_qn(rid, r), self._proc_qn(rid, w),
                                 other_attributes={PROV_TYPE: self.pt["Pipe"]})

    def _file(self, host: str | None, path: str, fl: Flows, kind: str | None = None):
        qn = self._host_ns(host)[_path_local(path, fl.b64.get(path))]
        if self._once(qn):
            self.d.entity(qn, {PROV_TYPE: self.pt["File"], **_attrs(
                path=path, path_b64=fl.b64.get(path), kind=kind or "data")})
        return qn

    def _files(self, rid: str, host: str | None, fl: Flows) -> None:
        for a in fl.accesses:
            ent = self._file(host, a.path, fl, a.kind)
            proc = self._proc_qn(rid, a.proc)
            if USE_ACCESS & set(a.access):
                self.d.used(proc, ent, _dt(a.first), other_attributes=_attrs(
                    access=",".join(a.access), bytes_read=a.bytes_read or None))
            if WRITE_ACCESS & set(a.access):
                self.d.wasGeneratedBy(ent, proc, _dt(a.last), other_attributes=_attrs(
                    access=",".join(a.access), bytes_written=a.bytes_written or None))
            if "delete" in a.access:
                self.d.wasInvalidatedBy(ent, proc, _dt(a.last))
        for proc_key, src, dst, when in fl.renames:
            proc = self._proc_qn(rid, proc_key)
            s, t = self._file(host, src, fl), self._file(host, dst, fl)
            self.d.wasInvalidatedBy(s, proc, _dt(when), other_attributes=_attrs(access="rename"))
            self.d.wasGeneratedBy(t, proc, _dt(when), other_attributes=_attrs(access="rename"))
        for dv in fl.derivations:
            attrs = {PROV_TYPE: self.pt["Rename"]} if dv.how == "rename" else {}
            self.d.wasDerivedFrom(self._file(host, dv.out, fl), self._file(host, dv.src, fl),
                                  self._proc_qn(rid, dv.proc), other_attributes=attrs or None)

    def _cell_io(self, host: str | None, cells: list[dict], qns: dict, fl: Flows) -> None:
        """A cell's own reads and writes (renames followed), as the notebook user sees them."""
        for c in sorted(cells, key=lambda c: str(qns.get(c.get("id")))):
            qn = qns.get(c.get("id"))
            for path in c.get("reads") or []:
                self.d.used(qn, self._file(host, path, fl))
            for path in c.get("writes") or []:
                self.d.wasGeneratedBy(self._file(host, path, fl), qn, _dt(c.get("ended")))
