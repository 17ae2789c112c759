"""Connection files: every malformed shape is a ConnectionFileError, never a crash."""

from __future__ import annotations

import json
import os

import pytest

from provtrace.tracer.correlate.connection import ConnectionFileError, parse_connection_file

GOOD = {
    "shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003, "control_port": 5004,
    "hb_port": 5005, "ip": "127.0.0.1", "key": "abc", "transport": "tcp",
    "signature_scheme": "hmac-sha256", "kernel_name": "python3",
}


def _write(tmp_path, content, name="kernel-1.json"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def test_good_file(tmp_path):
    info = parse_connection_file(_write(tmp_path, GOOD))
    assert info.ports["iopub"] == 5002 and info.key == b"abc" and not info.uses_curve
    assert info.as_jupyter_dict()["shell_port"] == 5001


def test_curve_keys_are_kept(tmp_path):
    data = dict(GOOD, curve_publickey="A" * 40, curve_secretkey="B" * 40)
    info = parse_connection_file(_write(tmp_path, data))
    assert info.uses_curve and info.as_jupyter_dict()["curve_secretkey"] == b"B" * 40


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b'{"shell_port": 50', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (dict(GOOD, iopub_port="x"), "iopub_port"),
        ({k: v for k, v in GOOD.items() if k != "hb_port"}, "hb_port"),
        (dict(GOOD, shell_port=True), "shell_port"),
        (dict(GOOD, shell_port=70000), "shell_port"),
        (dict(GOOD, key=5), "key"),
        (dict(GOOD, signature_scheme="rot13"), "signature_scheme"),
        (dict(GOOD, transport="udp"), "transport"),
        (dict(GOOD, curve_publickey="A" * 40), "curve"),
        (dict(GOOD, curve_publickey="short", curve_secretkey="short"), "Z85"),
        (b" " * (70 * 1024), "larger than"),
    ],
)
def test_bad_files(tmp_path, content, words):
    with pytest.raises(ConnectionFileError) as err:
        parse_connection_file(_write(tmp_path, content))
    assert words in str(err.value) and str(tmp_path) in str(err.value)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ConnectionFileError, match="cannot read"):
        parse_connection_file(tmp_path / "nope.json")
    with pytest.raises(ConnectionFileError, match="not a regular file"):
        parse_connection_file(tmp_path)  # a directory
    if os.geteuid() != 0:
        path = _write(tmp_path, GOOD)
        path.chmod(0)
        with pytest.raises(ConnectionFileError, match="cannot read"):
            parse_connection_file(path)


def test_symlink_and_fifo_are_refused_without_blocking(tmp_path):
    real = _write(tmp_path, GOOD)
    link = tmp_path / "kernel-link.json"
    link.symlink_to(real)
    with pytest.raises(ConnectionFileError, match="symlink"):
        parse_connection_file(link)
    fifo = tmp_path / "kernel-fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ConnectionFileError, match="not a regular file"):
        parse_connection_file(fifo)  # would block forever if opened blocking


def test_owner_is_recorded(tmp_path):
    assert parse_connection_file(_write(tmp_path, GOOD)).owner_uid == os.geteuid()
