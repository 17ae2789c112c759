"""Schemas of tabular data files: columns, their types, and a row count where cheap.

A schema belongs to one version of a file: store/fingerprint.py takes it in
the same read as the sha256 and keeps it in the same FINGERPRINT record, so
the pair (sha256, schema) always describes the same bytes.

    {"format": "csv"|"tsv"|"parquet"|"arrow"|"jsonl",
     "columns": [{"name", "type"}], "rows": int|None,
     "sampled": bool}            # the types come from the first max_bytes only
  | {"format", "error": "..."}   # recognised by name but not readable as such

Formats are recognised by name (FORMATS). Types use one vocabulary for
every format: int64, float64, bool, string, date, timestamp, null (no value
seen), and Arrow's own names for the rest (list<item: int64>, struct<...>,
decimal128(10, 2)), with Arrow's `double` and `float` spelled float64 and
float32 so a CSV and a Parquet of the same table read alike.

Cost is bounded: text formats read at most max_bytes (SchemaPolicy) from
the start of the file and infer types from what they read, counting rows
only when the whole file fit; Parquet reads only its footer, and Arrow IPC
only its metadata. pyarrow is optional (the `schema` extra): without it a
Parquet or Arrow file records an error saying so, and text formats still work.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass

# name suffix -> format
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_BUDGET_S = 5.0
_INFER_ROWS = 10_000  # rows of a text sample that types are inferred from
_ARROW_NAMES = {"double": "float64", "float": "float32", "halffloat": "float16",
                "large_string": "string", "large_utf8": "string", "utf8": "string", "date32[day]": "date",
                "date64[ms]": "date"}
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|nan)", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_BOOLS = {"true", "false", "True", "False", "TRUE", "FALSE"}


@dataclass(frozen=True)
class SchemaPolicy:
    """Whether schemas are taken, and their cost: bytes read per file, and seconds
    for one run's files together (after that, the rest are skipped and say so)."""
    enabled: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    budget_s: float = DEFAULT_BUDGET_S


OFF = SchemaPolicy(enabled=False)


def format_of(path: str) -> str | None:
    """The tabular format path's name says, or None."""
    _stem, ext = os.path.splitext(path)
    return FORMATS.get(ext.lower())


def read_schema(fd: int, fmt: str, size_bytes: int, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """The schema of the open file fd (read from offset 0; the caller owns fd).

    Never raises for what is in the file: content that is not the format
    its name says gives {"format", "error"}."""
    try:
        if fmt in ("csv", "tsv"):
            return _text_table(fd, fmt, size_bytes, max_bytes)
        if fmt == "jsonl":
            return _json_lines(fd, size_bytes, max_bytes)
        return _arrow_file(fd, fmt, size_bytes, max_bytes)
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as e:
        return {"format": fmt, "error": _one_line(e)}


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _head(fd: int, size_bytes: int, max_bytes: int) -> tuple[bytes, bool]:
    """(the first max_bytes of fd, cut at the last whole line when truncated; truncated)."""
    data = os.pread(fd, min(size_bytes, max_bytes) + 1, 0)
    if len(data) <= max_bytes:
        return data, False
    data = data[:max_bytes]
    end = data.rfind(b"\n")
    return (data[:end + 1] if end >= 0 else b""), True


# -- CSV / TSV ---------------------------------------------------------------------
def _text_table(fd: int, fmt: str, size_bytes: int, max_bytes: int) -> dict:
    data, truncated = _head(fd, size_bytes, max_bytes)
    text = data.decode("utf-8-sig", errors="replace")
    if not text.strip():
        return {"format": fmt, "columns": [], "rows": 0 if not truncated else None, "sampled": truncated}
    delimiter = "\t" if fmt == "tsv" else _delimiter(text[:65536])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, [])
    types: list[str] = ["null"] * len(header)
    rows = 0
    for row in reader:
        if not row:
            continue
        rows += 1
        if rows <= _INFER_ROWS:
            for i, value in enumerate(row[:len(header)]):
                types[i] = _merge(types[i], _text_type(value))
    return {"format": fmt, "columns": [{"name": n, "type": t} for n, t in zip(_names(header), types)],
            "rows": None if truncated else rows, "sampled": truncated or rows > _INFER_ROWS}


def _delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _names(header: list[str]) -> list[str]:
    """Column names as read; an empty one is called by its position (`column 3`)."""
    return [h.strip() or f"column {i + 1}" for i, h in enumerate(header)]


def _text_type(value: str) -> str:
    v = value.strip()
    if not v:
        return "null"
    if _INT.fullmatch(v):
        return "int64"
    if _FLOAT.fullmatch(v):
        return "float64"
    if v in _BOOLS:
        return "bool"
    if _DATE.fullmatch(v):
        return "date"
    if _TIMESTAMP.fullmatch(v):
        return "timestamp"
    return "string"


def _merge(a: str, b: str) -> str:
    """The type that holds values of both a and b."""
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if {a, b} == {"int64", "float64"}:
        return "float64"
    if {a, b} == {"date", "timestamp"}:
        return "timestamp"
    return "string"


# -- JSON lines -------------------------------------------------------------------
def _json_lines(fd: int, size_bytes: int, max_bytes: int) -> dict:
    data, truncated = _head(fd, size_bytes, max_bytes)
    types: dict[str, str] = {}
    rows = 0
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return {"format": "jsonl", "error": f"line {n} is not JSON"}
        if not isinstance(obj, dict):
            return {"format": "jsonl", "error": f"line {n} is not a JSON object"}
        rows += 1
        if rows <= _INFER_ROWS:
            for key, value in obj.items():
                types[key] = _merge(types.get(key, "null"), _json_type(value))
    return {"format": "jsonl", "columns": [{"name": k, "type": t} for k, t in types.items()],
            "rows": None if truncated else rows, "sampled": truncated or rows > _INFER_ROWS}


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return _text_type(value) if _DATE.match(value) else "string"
    return "list" if isinstance(value, list) else "struct"


# -- Parquet and Arrow IPC (pyarrow) -------------------------------------------------
def _arrow_file(fd: int, fmt: str, size_bytes: int, max_bytes: int) -> dict:
    try:
        import pyarrow as pa  # noqa: PLC0415 -- optional, and slow to import
        import pyarrow.ipc  # noqa: PLC0415,F401
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        return {"format": fmt, "error": "pyarrow is not installed (pip install 'provtrace[schema]')"}
    # pyarrow reads through a file object on our fd: no second open, no symlink followed
    with os.fdopen(os.dup(fd), "rb") as f:
        try:
            if fmt == "parquet":
                meta = pq.ParquetFile(f).metadata
                schema, rows = meta.schema.to_arrow_schema(), meta.num_rows
            else:
                schema, rows = _ipc_schema(pa, f, size_bytes, max_bytes)
        except pa.ArrowException as e:
            return {"format": fmt, "error": _one_line(e)}
    return {"format": fmt, "columns": [{"name": fld.name, "type": arrow_type(fld.type)} for fld in schema],
            "rows": rows, "sampled": False}


def _ipc_schema(pa, f, size_bytes: int, max_bytes: int):
    """(schema, rows): the IPC file format (Feather v2), else the stream format.
    Rows are counted only when the file is within max_bytes."""
    try:
        reader = pa.ipc.open_file(f)
    except pa.ArrowInvalid:
        f.seek(0)
        return pa.ipc.open_stream(f).schema, None
    rows = None
    if size_bytes <= max_bytes:
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return reader.schema, rows


def arrow_type(t) -> str:
    text = str(t)
    if text.startswith("timestamp"):
        return "timestamp"
    return _ARROW_NAMES.get(text, text)
