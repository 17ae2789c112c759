import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVING_STATUS_UNSPECIFIED: _ClassVar[ServingStatus]
    SERVING_STATUS_SERVING: _ClassVar[ServingStatus]
    SERVING_STATUS_NOT_SERVING: _ClassVar[ServingStatus]
SERVING_STATUS_UNSPECIFIED: ServingStatus
SERVING_STATUS_SERVING: ServingStatus
SERVING_STATUS_NOT_SERVING: ServingStatus

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("version", "daemon_pid", "caller_uid", "caller_pid", "backend", "kernels_watched", "status", "failed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DAEMON_PID_FIELD_NUMBER: _ClassVar[int]
    CALLER_UID_FIELD_NUMBER: _ClassVar[int]
    CALLER_PID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    KERNELS_WATCHED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    version: str
    daemon_pid: int
    caller_uid: int
    caller_pid: int
    backend: str
    kernels_watched: int
    status: ServingStatus
    failed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., daemon_pid: _Optional[int] = ..., caller_uid: _Optional[int] = ..., caller_pid: _Optional[int] = ..., backend: _Optional[str] = ..., kernels_watched: _Optional[int] = ..., status: _Optional[_Union[ServingStatus, str]] = ..., failed: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterKernelRequest(_message.Message):
    __slots__ = ("pid", "connection_file", "notebook_path", "kernel_name", "language", "session_id")
    PID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FILE_FIELD_NUMBER: _ClassVar[int]
    NOTEBOOK_PATH_FIELD_NUMBER: _ClassVar[int]
    KERNEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    connection_file: str
    notebook_path: str
    kernel_name: str
    language: str
    session_id: str
    def __init__(self, pid: _Optional[int] = ..., connection_file: _Optional[str] = ..., notebook_path: _Optional[str] = ..., kernel_name: _Optional[str] = ..., language: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class RegisterKernelResponse(_message.Message):
    __slots__ = ("kernel",)
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    kernel: _types_pb2.Kernel
    def __init__(self, kernel: _Optional[_Union[_types_pb2.Kernel, _Mapping]] = ...) -> None: ...

class ReportCellStartRequest(_message.Message):
    __slots__ = ("session_id", "cell_id", "msg_id", "execution_count", "code_sha256", "code", "started", "index", "subshell_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SUBSHELL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    msg_id: str
    execution_count: int
    code_sha256: str
    code: str
    started: _timestamp_pb2.Timestamp
    index: int
    subshell_id: str
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ..., msg_id: _Optional[str] = ..., execution_count: _Optional[int] = ..., code_sha256: _Optional[str] = ..., code: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., index: _Optional[int] = ..., subshell_id: _Optional[str] = ...) -> None: ...

class ReportCellEndRequest(_message.Message):
    __slots__ = ("session_id", "cell_id", "msg_id", "execution_count", "ended", "status", "error_name")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_NAME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    msg_id: str
    execution_count: int
    ended: _timestamp_pb2.Timestamp
    status: _types_pb2.CellStatus
    error_name: str
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ..., msg_id: _Optional[str] = ..., execution_count: _Optional[int] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[_types_pb2.CellStatus, str]] = ..., error_name: _Optional[str] = ...) -> None: ...

class ReportCellResponse(_message.Message):
    __slots__ = ("cell",)
    CELL_FIELD_NUMBER: _ClassVar[int]
    cell: _types_pb2.Cell
    def __init__(self, cell: _Optional[_Union[_types_pb2.Cell, _Mapping]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("kind", "limit")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    kind: _types_pb2.RunKind
    limit: int
    def __init__(self, kind: _Optional[_Union[_types_pb2.RunKind, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[_types_pb2.Run, _Mapping]]] = ...) -> None: ...

class ListCellsRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListCellsResponse(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[_types_pb2.Cell]
    def __init__(self, cells: _Optional[_Iterable[_Union[_types_pb2.Cell, _Mapping]]] = ...) -> None: ...

class LineageRequest(_message.Message):
    __slots__ = ("path", "direction", "depth", "at", "all_versions", "no_kernel_state")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NO_KERNEL_STATE_FIELD_NUMBER: _ClassVar[int]
    path: str
    direction: _types_pb2.LineageDirection
    depth: int
    at: str
    all_versions: bool
    no_kernel_state: bool
    def __init__(self, path: _Optional[str] = ..., direction: _Optional[_Union[_types_pb2.LineageDirection, str]] = ..., depth: _Optional[int] = ..., at: _Optional[str] = ..., all_versions: _Optional[bool] = ..., no_kernel_state: _Optional[bool] = ...) -> None: ...

class LineageResponse(_message.Message):
    __slots__ = ("nodes", "edges", "summary_json")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_types_pb2.LineageNode]
    edges: _containers.RepeatedCompositeFieldContainer[_types_pb2.LineageEdge]
    summary_json: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[_types_pb2.LineageNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[_types_pb2.LineageEdge, _Mapping]]] = ..., summary_json: _Optional[str] = ...) -> None: ...

class StaleRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StaleResponse(_message.Message):
    __slots__ = ("result_json",)
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    result_json: str
    def __init__(self, result_json: _Optional[str] = ...) -> None: ...

class GetContextRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetContextResponse(_message.Message):
    __slots__ = ("context",)
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    context: _struct_pb2.Struct
    def __init__(self, context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("session_id", "kinds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("run_id", "format", "all")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    format: _types_pb2.ExportFormat
    all: bool
    def __init__(self, run_id: _Optional[str] = ..., format: _Optional[_Union[_types_pb2.ExportFormat, str]] = ..., all: _Optional[bool] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TraceCommandRequest(_message.Message):
    __slots__ = ("pid", "argv", "cwd", "env", "label")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PID_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    pid: int
    argv: _containers.RepeatedScalarFieldContainer[str]
    cwd: str
    env: _containers.ScalarMap[str, str]
    label: str
    def __init__(self, pid: _Optional[int] = ..., argv: _Optional[_Iterable[str]] = ..., cwd: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., label: _Optional[str] = ...) -> None: ...

class TraceCommandResponse(_message.Message):
    __slots__ = ("run_id", "started")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    started: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FinishCommandRequest(_message.Message):
    __slots__ = ("run_id", "exit_code", "ended")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    exit_code: int
    ended: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FinishCommandResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
