"""Reading execute_request and execute_reply off a Jupyter server's kernel websocket.

Two wire forms reach the server from a browser:
- legacy: one JSON text (or jupyter_server's binary framing when buffers
  ride along) holding channel, header, metadata and content;
- `v1.kernel.websocket.jupyter.org`: offsets, the channel, then the raw
  message parts (header, parent_header, metadata, content, buffers).
Replies come from the kernel as ZMQ frames: [identities..., DELIM, HMAC,
header, parent_header, metadata, content, buffers...].

Only what the daemon needs is read, and only for these two message types;
anything malformed yields None (the server still forwards it as it would).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import Any, Callable, Sequence

from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
)

from .reporter import CellEnd, CellStart

log = logging.getLogger(__name__)

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
_MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError)

Unpack = Callable[[bytes], Any]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def execute_request(ws_msg: str | bytes, subprotocol: str | None, unpack: Unpack) -> CellStart | None:
    """A CellStart for a shell execute_request sent by a browser, else None."""
    try:
        if subprotocol == V1_PROTOCOL:
            msg = _v1_request(ws_msg, unpack)
        else:
            msg = _legacy_request(ws_msg)
        if msg is None:
            return None
        return _start(msg)
    except _MALFORMED as exc:
        log.debug("event=unreadable-ws-message error=%r", str(exc))
        return None


def execute_reply(frames: Sequence[Any], unpack: Unpack) -> CellEnd | None:
    """A CellEnd for a kernel's execute_reply (ZMQ frames, identities included), else None."""
    try:
        parts = [bytes(f.bytes if hasattr(f, "bytes") else f) for f in frames]
        delim = parts.index(b"<IDS|MSG>")
        header, parent, _metadata, content = parts[delim + 2: delim + 6]
        if unpack(header).get("msg_type") != "execute_reply":
            return None
        parent_header, body = unpack(parent), unpack(content)
        status = body.get("status")
        count = body.get("execution_count")
        return CellEnd(
            msg_id=str(parent_header["msg_id"]), cell_id=None,
            status="ok" if status == "ok" else "error",
            execution_count=count if isinstance(count, int) and count > 0 else None,
            error_name=_text(body.get("ename")) or (status if status not in ("ok", "error") else None),
            ended=_now())
    except _MALFORMED as exc:
        log.debug("event=unreadable-zmq-reply error=%r", str(exc))
        return None


def _v1_request(ws_msg: str | bytes, unpack: Unpack) -> dict | None:
    if not isinstance(ws_msg, bytes):
        return None
    channel, parts = deserialize_msg_from_ws_v1(ws_msg)
    if channel != "shell":
        return None
    header = unpack(parts[0])
    if header.get("msg_type") != "execute_request":
        return None
    return {"header": header, "metadata": unpack(parts[2]), "content": unpack(parts[3])}


def _legacy_request(ws_msg: str | bytes) -> dict | None:
    if isinstance(ws_msg, bytes):
        msg = deserialize_binary_message(ws_msg)
    elif "execute_request" in ws_msg:  # cheap filter: most messages are not
        msg = json.loads(ws_msg)
    else:
        return None
    if msg.get("channel", "shell") != "shell" or msg["header"].get("msg_type") != "execute_request":
        return None
    return msg


def _start(msg: dict) -> CellStart | None:
    header, metadata, content = msg["header"], msg.get("metadata") or {}, msg.get("content") or {}
    msg_id = _text(header.get("msg_id"))
    if not msg_id:
        return None
    code = content.get("code")
    sha = hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest() if isinstance(code, str) else None
    return CellStart(msg_id=msg_id, cell_id=_text(metadata.get("cellId")), code_sha256=sha,
                     subshell_id=_text(header.get("subshell_id")), started=_now())


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
