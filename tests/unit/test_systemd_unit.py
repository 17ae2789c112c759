"""The shipped systemd unit is valid, sandboxed, and starts the daemon the CLI knows.

systemd is not PID 1 here (nor in CI), so the unit cannot be started; what
systemd's own tools check offline is checked: `systemd-analyze verify` and
`systemd-analyze security --offline`.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from provtrace.tracer.api.client import DEFAULT_SOCKET
from provtrace.tracer.cli import build_parser

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "provtrace.service"
needs_systemd_tools = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                         reason="systemd-analyze is not installed")


def _service() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    cp.read(UNIT)
    return cp["Service"]


@needs_systemd_tools
def test_unit_verifies():
    r = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@needs_systemd_tools
def test_unit_is_sandboxed():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=50", str(UNIT)],
                       capture_output=True, text=True)
    level = re.search(r"Overall exposure level for provtrace.service: ([\d.]+)", r.stdout)
    assert level, r.stdout[-500:] + r.stderr
    assert r.returncode == 0 and float(level.group(1)) <= 5.0, level.group(0)


def test_exec_start_is_a_daemon_command_the_cli_accepts():
    argv = shlex.split(_service()["ExecStart"])
    assert argv[0] == "/usr/local/bin/provtrace"  # where setup.sh links it
    args = build_parser().parse_args(argv[1:])
    assert args.verb == "daemon"
    assert args.socket == DEFAULT_SOCKET == "/run/provtrace/provtrace.sock"


def test_writable_paths_are_exactly_the_store_and_the_socket():
    svc = _service()
    assert svc["StateDirectory"] == "provtrace" and svc["StateDirectoryMode"] == "0700"
    assert svc["RuntimeDirectory"] == "provtrace" and svc["RuntimeDirectoryMode"] == "0755"
    assert svc["ProtectSystem"] == "strict"
    assert set(svc["ReadWritePaths"].split()) == {"/var/lib/provtrace", "/run/provtrace"}
