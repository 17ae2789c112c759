"""The one place where API dataclasses (records.py) and protobuf meet.

Unset protobuf fields become None; empty strings and zero counts that mean
"unknown" in proto3 become None too. google.protobuf.Struct holds numbers
as doubles, so context values above 2**53 lose precision (none do today).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Mapping

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from .gen import service_pb2 as svc
from .gen import types_pb2 as pb
from .records import (
    ApiEvent,
    CellEndReport,
    CellRecord,
    CellStartReport,
    KernelRecord,
    LineageEdge,
    LineageGraph,
    LineageNode,
    RunRecord,
)

_UTC = dt.timezone.utc

CELL_STATUS = {"running": pb.CELL_STATUS_RUNNING, "ok": pb.CELL_STATUS_OK, "error": pb.CELL_STATUS_ERROR}
RUN_KIND = {"command": pb.RUN_KIND_COMMAND, "notebook": pb.RUN_KIND_NOTEBOOK, "session": pb.RUN_KIND_SESSION}
CELL_SOURCE = {"iopub": pb.CELL_SOURCE_IOPUB, "report": pb.CELL_SOURCE_REPORT, "runner": pb.CELL_SOURCE_RUNNER}
DIRECTION = {"upstream": pb.LINEAGE_DIRECTION_UPSTREAM, "downstream": pb.LINEAGE_DIRECTION_DOWNSTREAM}
EXPORT_FORMAT = {
    "json": pb.EXPORT_FORMAT_JSON, "prov-json": pb.EXPORT_FORMAT_PROV_JSON,
    "prov-n": pb.EXPORT_FORMAT_PROV_N, "prov-xml": pb.EXPORT_FORMAT_PROV_XML,
    "openlineage": pb.EXPORT_FORMAT_OPENLINEAGE, "graphml": pb.EXPORT_FORMAT_GRAPHML,
    "dot": pb.EXPORT_FORMAT_DOT,
}


def _invert(table: Mapping[str, int]) -> dict[int, str]:
    return {v: k for k, v in table.items()}


def enum_name(table: Mapping[str, int], value: int) -> str | None:
    """The string for an enum value; None for UNSPECIFIED or an unknown number."""
    return _invert(table).get(value)


# -- scalars -----------------------------------------------------------------
def ts_to_pb(when: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(_UTC))
    return ts


def ts_from_pb(msg: Any, name: str) -> dt.datetime | None:
    if not msg.HasField(name):
        return None
    return getattr(msg, name).ToDatetime(tzinfo=_UTC)


def _opt(value: Any) -> Any:
    return value if value else None


def _set_ts(msg: Any, name: str, when: dt.datetime | None) -> None:
    ts = ts_to_pb(when)
    if ts is not None:
        getattr(msg, name).CopyFrom(ts)


def struct_to_pb(data: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    json_format.ParseDict(dict(data), out)
    return out


def struct_from_pb(msg: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


# -- records -----------------------------------------------------------------
def kernel_to_pb(k: KernelRecord) -> pb.Kernel:
    msg = pb.Kernel(
        session_id=k.session_id, pid=k.pid, pid_start_ns=k.pid_start_ns, uid=k.uid,
        connection_file=k.connection_file or "", notebook_path=k.notebook_path or "",
        kernel_name=k.kernel_name or "", language=k.language or "",
        state=pb.KERNEL_STATE_ALIVE if k.alive else pb.KERNEL_STATE_DEAD,
    )
    _set_ts(msg, "started", k.started)
    _set_ts(msg, "ended", k.ended)
    return msg


def kernel_from_pb(msg: pb.Kernel) -> KernelRecord:
    return KernelRecord(
        session_id=msg.session_id, pid=msg.pid, pid_start_ns=msg.pid_start_ns, uid=msg.uid,
        connection_file=_opt(msg.connection_file), notebook_path=_opt(msg.notebook_path),
        kernel_name=_opt(msg.kernel_name), language=_opt(msg.language),
        started=ts_from_pb(msg, "started"), ended=ts_from_pb(msg, "ended"),
        alive=msg.state != pb.KERNEL_STATE_DEAD,
    )


def cell_to_pb(c: CellRecord) -> pb.Cell:
    msg = pb.Cell(
        session_id=c.session_id, cell_id=c.cell_id or "", msg_id=c.msg_id or "",
        index=c.index if c.index is not None else -1, execution_count=c.execution_count or 0,
        code_sha256=c.code_sha256 or "", status=CELL_STATUS.get(c.status, pb.CELL_STATUS_UNSPECIFIED),
        end_reason=c.end_reason or "", error_name=c.error_name or "",
        reads=list(c.reads), writes=list(c.writes), processes=list(c.processes),
        sources=sorted(CELL_SOURCE[s] for s in c.sources if s in CELL_SOURCE),
        subshell_id=c.subshell_id or "",
    )
    _set_ts(msg, "started", c.started)
    _set_ts(msg, "ended", c.ended)
    return msg


def cell_from_pb(msg: pb.Cell) -> CellRecord:
    sources = _invert(CELL_SOURCE)
    return CellRecord(
        session_id=msg.session_id, cell_id=_opt(msg.cell_id), msg_id=_opt(msg.msg_id),
        index=msg.index if msg.index >= 0 else None, execution_count=_opt(msg.execution_count),
        code_sha256=_opt(msg.code_sha256), started=ts_from_pb(msg, "started"),
        ended=ts_from_pb(msg, "ended"), status=enum_name(CELL_STATUS, msg.status) or "running",
        end_reason=_opt(msg.end_reason), error_name=_opt(msg.error_name),
        reads=tuple(msg.reads), writes=tuple(msg.writes), processes=tuple(msg.processes),
        sources=frozenset(sources[s] for s in msg.sources if s in sources),
        subshell_id=_opt(msg.subshell_id),
    )


def run_to_pb(r: RunRecord) -> pb.Run:
    msg = pb.Run(
        id=r.id, kind=RUN_KIND.get(r.kind, pb.RUN_KIND_UNSPECIFIED), label=r.label or "",
        backend=r.backend or "", user=r.user or "", uid=r.uid,
        has_exit_code=r.exit_code is not None, exit_code=r.exit_code or 0,
    )
    _set_ts(msg, "started", r.started)
    _set_ts(msg, "ended", r.ended)
    if r.kernel is not None:
        msg.kernel.CopyFrom(kernel_to_pb(r.kernel))
    return msg


def run_from_pb(msg: pb.Run) -> RunRecord:
    return RunRecord(
        id=msg.id, kind=enum_name(RUN_KIND, msg.kind) or "command", uid=msg.uid,
        user=_opt(msg.user), label=_opt(msg.label), backend=_opt(msg.backend),
        started=ts_from_pb(msg, "started"), ended=ts_from_pb(msg, "ended"),
        exit_code=msg.exit_code if msg.has_exit_code else None,
        kernel=kernel_from_pb(msg.kernel) if msg.HasField("kernel") else None,
    )


def lineage_to_pb(g: LineageGraph) -> svc.LineageResponse:
    return svc.LineageResponse(
        nodes=[pb.LineageNode(id=n.id, kind=n.kind, label=n.label, run_id=n.run_id or "",
                              detail_json=json.dumps(dict(n.detail), ensure_ascii=False)) for n in g.nodes],
        edges=[pb.LineageEdge(source=e.source, target=e.target, relation=e.relation,
                              detail_json=json.dumps(dict(e.detail), ensure_ascii=False)) for e in g.edges],
        summary_json=json.dumps(dict(g.summary), ensure_ascii=False) if g.summary else "",
    )


def lineage_from_pb(msg: svc.LineageResponse) -> LineageGraph:
    return LineageGraph(
        nodes=tuple(LineageNode(n.id, n.kind, n.label, _opt(n.run_id), _detail(n.detail_json))
                    for n in msg.nodes),
        edges=tuple(LineageEdge(e.source, e.target, e.relation, _detail(e.detail_json))
                    for e in msg.edges),
        summary=_detail(msg.summary_json),
    )


def _detail(text: str) -> dict[str, Any]:
    """A detail_json field; a daemon from before the field existed sends ""."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def event_to_pb(e: ApiEvent) -> pb.Event:
    msg = pb.Event(seq=e.seq, kind=e.kind, session_id=e.session_id or "", run_id=e.run_id or "",
                   uid=e.uid, pid=e.pid or 0, cell_id=e.cell_id or "")
    _set_ts(msg, "time", e.time)
    if e.kernel is not None:
        msg.kernel.CopyFrom(kernel_to_pb(e.kernel))
    if e.cell is not None:
        msg.cell.CopyFrom(cell_to_pb(e.cell))
    if e.detail:
        msg.detail.CopyFrom(struct_to_pb(e.detail))
    return msg


def event_from_pb(msg: pb.Event) -> ApiEvent:
    return ApiEvent(
        kind=msg.kind, uid=msg.uid, time=ts_from_pb(msg, "time") or dt.datetime.now(_UTC), seq=msg.seq,
        session_id=_opt(msg.session_id), run_id=_opt(msg.run_id), pid=_opt(msg.pid),
        cell_id=_opt(msg.cell_id),
        kernel=kernel_from_pb(msg.kernel) if msg.HasField("kernel") else None,
        cell=cell_from_pb(msg.cell) if msg.HasField("cell") else None,
        detail=struct_from_pb(msg.detail) if msg.HasField("detail") else {},
    )


# -- requests ----------------------------------------------------------------
def start_report_from_pb(req: svc.ReportCellStartRequest, code_sha256: str | None) -> CellStartReport:
    return CellStartReport(
        session_id=req.session_id, source="report", cell_id=_opt(req.cell_id), msg_id=_opt(req.msg_id),
        execution_count=_opt(req.execution_count), code_sha256=code_sha256,
        started=ts_from_pb(req, "started"), index=req.index if req.HasField("index") else None,
        subshell_id=_opt(req.subshell_id),
    )


def end_report_from_pb(req: svc.ReportCellEndRequest) -> CellEndReport:
    return CellEndReport(
        session_id=req.session_id, source="report",
        status=enum_name(CELL_STATUS, req.status) or "", cell_id=_opt(req.cell_id),
        msg_id=_opt(req.msg_id), execution_count=_opt(req.execution_count),
        ended=ts_from_pb(req, "ended"), error_name=_opt(req.error_name),
    )
