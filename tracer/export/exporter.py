"""The export dispatcher: a format name -> bytes, and writing them out.

Every exporter is a pure function of a list of provtrace.run/1 documents and
the file versions their accesses touched (versioned.versions_for); the CLI
loads both from the store (one run, or all of them) and writes the bytes to a
file, atomically, or to stdout for `-o -`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable

from ..atomic import atomic_write
from ..errors import TracerError
from .versioned import Versions

log = logging.getLogger(__name__)


class ExportError(TracerError):
    """The export could not be written (bad destination, unknown format)."""


def _prov(fmt: str) -> Callable[[list[dict], Versions | None], bytes]:
    def render(docs: list[dict], versions: Versions | None) -> bytes:
        from . import prov  # noqa: PLC0415  (prov and lxml load only when asked for)

        return prov.serialize(docs, fmt, versions)
    return render


def _openlineage(docs: list[dict], _versions: Versions | None) -> bytes:
    from . import openlineage  # noqa: PLC0415

    return openlineage.serialize(docs)


def _graphml(docs: list[dict], versions: Versions | None) -> bytes:
    from . import graph_formats  # noqa: PLC0415

    return graph_formats.graphml(docs, versions)


def _dot(docs: list[dict], versions: Versions | None) -> bytes:
    from . import graph_formats  # noqa: PLC0415

    return graph_formats.dot(docs, versions)


def _json(docs: list[dict], single: bool) -> bytes:
    # One run: exactly `show --json`. --all: a JSON list of such documents.
    body = docs[0] if single else docs
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


FORMATS: dict[str, Callable[[list[dict], Versions | None], bytes]] = {
    "prov-json": _prov("json"),
    "prov-n": _prov("provn"),
    "prov-xml": _prov("xml"),
    "openlineage": _openlineage,
    "graphml": _graphml,
    "dot": _dot,
}
FORMAT_NAMES = (*FORMATS, "json")


def render(docs: list[dict], fmt: str, *, single: bool = False, versions: Versions | None = None) -> bytes:
    """The export of docs in fmt; `single` marks a one-run export (matters for json);
    versions: the file versions their accesses touched (without them, paths only)."""
    if fmt == "json":
        return _json(docs, single)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMAT_NAMES)}")
    log.debug("export format=%s runs=%d", fmt, len(docs))
    return FORMATS[fmt](docs, versions)


def needs_versions(fmt: str) -> bool:
    """Whether fmt shows file versions (worth asking the store for them)."""
    return fmt in ("prov-json", "prov-n", "prov-xml", "graphml", "dot")


def write(data: bytes, dest: str) -> None:
    """Write to dest ('-' is stdout) atomically: a reader never sees half an export,
    and a symlink planted at dest or near it is never written through (atomic.py)."""
    if dest == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if os.path.isdir(dest):
        raise ExportError(f"cannot write export to {dest}: it is a directory; give a file name")
    try:
        atomic_write(dest, data)
    except OSError as e:
        raise ExportError(f"cannot write export to {dest}: {e.strerror or e}; "
                          "check the folder exists and is writable") from e
