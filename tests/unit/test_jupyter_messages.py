"""Reading execute_request/execute_reply in every wire form a Jupyter server sees,
built with jupyter_client's real Session and jupyter_server's real serializers."""

from __future__ import annotations

import hashlib
import json

import pytest
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from provtrace.tracer.jupyter import messages
from provtrace.tracer.jupyter.kernels import notebook_path, session_name_in

SESSION = Session(key=b"secret")
CODE = "open('x.txt', 'w').write('é')"


def _request(msg_type="execute_request", cell_id="cell-1", **header):
    msg = SESSION.msg(msg_type, content={"code": CODE, "silent": False}, metadata={"cellId": cell_id})
    msg["header"].update(header)
    return msg


def _legacy(msg, channel="shell") -> str:
    return json.dumps({**msg, "channel": channel}, default=str)


def _v1(msg, channel="shell") -> bytes:
    return serialize_msg_to_ws_v1(msg, channel, SESSION.pack)


@pytest.mark.parametrize("wire", ["legacy", "legacy-binary", "v1"])
def test_execute_request_in_each_wire_form(wire):
    msg = _request(subshell_id="sub-1")
    if wire == "legacy":
        raw, proto = _legacy(msg), None
    elif wire == "legacy-binary":  # jupyter_server's framing when buffers ride along
        raw, proto = serialize_binary_message({**msg, "channel": "shell", "buffers": [b"\0buf"]}), None
    else:
        raw, proto = _v1(msg), messages.V1_PROTOCOL
    start = messages.execute_request(raw, proto, SESSION.unpack)
    assert start is not None
    assert (start.msg_id, start.cell_id, start.subshell_id) == (msg["header"]["msg_id"], "cell-1", "sub-1")
    assert start.code_sha256 == hashlib.sha256(CODE.encode()).hexdigest()


@pytest.mark.parametrize("raw,proto", [
    (_legacy(_request("kernel_info_request")), None),
    (_legacy(_request(), channel="control"), None),
    (_v1(_request("comm_msg")), messages.V1_PROTOCOL),
    (_v1(_request(), channel="stdin"), messages.V1_PROTOCOL),
    ("{not json execute_request", None),
    ('{"header": 3, "msg_type": "execute_request"}', None),
    (b"\x01\x00", messages.V1_PROTOCOL),
    (b"\xff" * 40, None),
    ("a legacy text frame sent under v1", messages.V1_PROTOCOL),
])
def test_other_and_malformed_requests_are_not_cells(raw, proto):
    assert messages.execute_request(raw, proto, SESSION.unpack) is None


def _reply_frames(content, msg_type="execute_reply", parent_id="req-1"):
    msg = SESSION.msg(msg_type, content=content, parent={"msg_id": parent_id, "msg_type": "execute_request"})
    return [b"identity", *SESSION.serialize(msg)]  # as a ROUTER-side socket delivers it


@pytest.mark.parametrize("content,status,count,error", [
    ({"status": "ok", "execution_count": 4}, "ok", 4, None),
    ({"status": "error", "execution_count": 5, "ename": "ZeroDivisionError"}, "error", 5, "ZeroDivisionError"),
    ({"status": "aborted", "execution_count": 0}, "error", None, "aborted"),
])
def test_execute_reply(content, status, count, error):
    end = messages.execute_reply(_reply_frames(content), SESSION.unpack)
    assert (end.msg_id, end.status, end.execution_count, end.error_name) == ("req-1", status, count, error)


def test_non_replies_and_broken_frames_are_not_cell_ends():
    assert messages.execute_reply(_reply_frames({"status": "ok"}, "kernel_info_reply"), SESSION.unpack) is None
    assert messages.execute_reply([b"no delimiter"], SESSION.unpack) is None
    assert messages.execute_reply([b"<IDS|MSG>", b"sig", b"{}"], SESSION.unpack) is None
    frames = _reply_frames({"status": "ok"})
    frames[-3] = b"not json"  # the parent header
    assert messages.execute_reply(frames, SESSION.unpack) is None


def test_notebook_path_from_jpy_session_name(tmp_path):
    assert notebook_path("/srv/nb/../a.ipynb", "/elsewhere") == "/srv/a.ipynb"
    assert notebook_path("sub/a.ipynb", tmp_path) == f"{tmp_path}/a.ipynb"  # an API path: the kernel's cwd
    assert notebook_path("sub/a.ipynb", None) is None and notebook_path("", "/x") is None
    conn = tmp_path / "kernel.json"
    conn.write_text(json.dumps({"jupyter_session": "/srv/a.ipynb", "shell_port": 1}))
    assert session_name_in(str(conn)) == "/srv/a.ipynb"
    conn.write_text("[1, 2")
    assert session_name_in(str(conn)) is None and session_name_in(str(tmp_path / "gone.json")) is None
