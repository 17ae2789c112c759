import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CellStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CELL_STATUS_UNSPECIFIED: _ClassVar[CellStatus]
    CELL_STATUS_RUNNING: _ClassVar[CellStatus]
    CELL_STATUS_OK: _ClassVar[CellStatus]
    CELL_STATUS_ERROR: _ClassVar[CellStatus]

class KernelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KERNEL_STATE_UNSPECIFIED: _ClassVar[KernelState]
    KERNEL_STATE_ALIVE: _ClassVar[KernelState]
    KERNEL_STATE_DEAD: _ClassVar[KernelState]

class RunKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_KIND_UNSPECIFIED: _ClassVar[RunKind]
    RUN_KIND_COMMAND: _ClassVar[RunKind]
    RUN_KIND_NOTEBOOK: _ClassVar[RunKind]
    RUN_KIND_SESSION: _ClassVar[RunKind]

class CellSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CELL_SOURCE_UNSPECIFIED: _ClassVar[CellSource]
    CELL_SOURCE_IOPUB: _ClassVar[CellSource]
    CELL_SOURCE_REPORT: _ClassVar[CellSource]
    CELL_SOURCE_RUNNER: _ClassVar[CellSource]

class LineageDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINEAGE_DIRECTION_UNSPECIFIED: _ClassVar[LineageDirection]
    LINEAGE_DIRECTION_UPSTREAM: _ClassVar[LineageDirection]
    LINEAGE_DIRECTION_DOWNSTREAM: _ClassVar[LineageDirection]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_JSON: _ClassVar[ExportFormat]
    EXPORT_FORMAT_PROV_JSON: _ClassVar[ExportFormat]
    EXPORT_FORMAT_PROV_N: _ClassVar[ExportFormat]
    EXPORT_FORMAT_PROV_XML: _ClassVar[ExportFormat]
    EXPORT_FORMAT_OPENLINEAGE: _ClassVar[ExportFormat]
    EXPORT_FORMAT_GRAPHML: _ClassVar[ExportFormat]
    EXPORT_FORMAT_DOT: _ClassVar[ExportFormat]
CELL_STATUS_UNSPECIFIED: CellStatus
CELL_STATUS_RUNNING: CellStatus
CELL_STATUS_OK: CellStatus
CELL_STATUS_ERROR: CellStatus
KERNEL_STATE_UNSPECIFIED: KernelState
KERNEL_STATE_ALIVE: KernelState
KERNEL_STATE_DEAD: KernelState
RUN_KIND_UNSPECIFIED: RunKind
RUN_KIND_COMMAND: RunKind
RUN_KIND_NOTEBOOK: RunKind
RUN_KIND_SESSION: RunKind
CELL_SOURCE_UNSPECIFIED: CellSource
CELL_SOURCE_IOPUB: CellSource
CELL_SOURCE_REPORT: CellSource
CELL_SOURCE_RUNNER: CellSource
LINEAGE_DIRECTION_UNSPECIFIED: LineageDirection
LINEAGE_DIRECTION_UPSTREAM: LineageDirection
LINEAGE_DIRECTION_DOWNSTREAM: LineageDirection
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_JSON: ExportFormat
EXPORT_FORMAT_PROV_JSON: ExportFormat
EXPORT_FORMAT_PROV_N: ExportFormat
EXPORT_FORMAT_PROV_XML: ExportFormat
EXPORT_FORMAT_OPENLINEAGE: ExportFormat
EXPORT_FORMAT_GRAPHML: ExportFormat
EXPORT_FORMAT_DOT: ExportFormat

class Kernel(_message.Message):
    __slots__ = ("session_id", "pid", "pid_start_ns", "uid", "connection_file", "notebook_path", "kernel_name", "language", "started", "ended", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_START_NS_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FILE_FIELD_NUMBER: _ClassVar[int]
    NOTEBOOK_PATH_FIELD_NUMBER: _ClassVar[int]
    KERNEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pid: int
    pid_start_ns: int
    uid: int
    connection_file: str
    notebook_path: str
    kernel_name: str
    language: str
    started: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    state: KernelState
    def __init__(self, session_id: _Optional[str] = ..., pid: _Optional[int] = ..., pid_start_ns: _Optional[int] = ..., uid: _Optional[int] = ..., connection_file: _Optional[str] = ..., notebook_path: _Optional[str] = ..., kernel_name: _Optional[str] = ..., language: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[KernelState, str]] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("session_id", "cell_id", "msg_id", "index", "execution_count", "code_sha256", "started", "ended", "status", "end_reason", "error_name", "reads", "writes", "processes", "sources", "subshell_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_NAME_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SUBSHELL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    msg_id: str
    index: int
    execution_count: int
    code_sha256: str
    started: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    status: CellStatus
    end_reason: str
    error_name: str
    reads: _containers.RepeatedScalarFieldContainer[str]
    writes: _containers.RepeatedScalarFieldContainer[str]
    processes: _containers.RepeatedScalarFieldContainer[int]
    sources: _containers.RepeatedScalarFieldContainer[CellSource]
    subshell_id: str
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ..., msg_id: _Optional[str] = ..., index: _Optional[int] = ..., execution_count: _Optional[int] = ..., code_sha256: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[CellStatus, str]] = ..., end_reason: _Optional[str] = ..., error_name: _Optional[str] = ..., reads: _Optional[_Iterable[str]] = ..., writes: _Optional[_Iterable[str]] = ..., processes: _Optional[_Iterable[int]] = ..., sources: _Optional[_Iterable[_Union[CellSource, str]]] = ..., subshell_id: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "kind", "label", "backend", "user", "uid", "started", "ended", "has_exit_code", "exit_code", "kernel")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: RunKind
    label: str
    backend: str
    user: str
    uid: int
    started: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    has_exit_code: bool
    exit_code: int
    kernel: Kernel
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[RunKind, str]] = ..., label: _Optional[str] = ..., backend: _Optional[str] = ..., user: _Optional[str] = ..., uid: _Optional[int] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., has_exit_code: _Optional[bool] = ..., exit_code: _Optional[int] = ..., kernel: _Optional[_Union[Kernel, _Mapping]] = ...) -> None: ...

class LineageNode(_message.Message):
    __slots__ = ("id", "kind", "label", "run_id", "detail_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    label: str
    run_id: str
    detail_json: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., label: _Optional[str] = ..., run_id: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class LineageEdge(_message.Message):
    __slots__ = ("source", "target", "relation", "detail_json")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    relation: str
    detail_json: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., relation: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "kind", "session_id", "run_id", "uid", "pid", "cell_id", "kernel", "cell", "detail")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    kind: str
    session_id: str
    run_id: str
    uid: int
    pid: int
    cell_id: str
    kernel: Kernel
    cell: Cell
    detail: _struct_pb2.Struct
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., session_id: _Optional[str] = ..., run_id: _Optional[str] = ..., uid: _Optional[int] = ..., pid: _Optional[int] = ..., cell_id: _Optional[str] = ..., kernel: _Optional[_Union[Kernel, _Mapping]] = ..., cell: _Optional[_Union[Cell, _Mapping]] = ..., detail: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
