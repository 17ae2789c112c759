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
import sys
from pathlib import Path

import pytest

from provtrace.tracer.serve.client import DEFAULT_SOCKET
from provtrace.tracer.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "provtrace.service"
PROVTRACE = Path(sys.executable).parent / "provtrace"  # this venv's, the one setup.sh links
needs_systemd_tools = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                         reason="systemd-analyze is not installed")


def _service() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    cp.read(UNIT)
    return cp["Service"]


def _installed_command() -> str:
    """Where setup.sh links the provtrace command (its `ln -sfn` line)."""
    m = re.search(r'^ln -sfn "\$venv/bin/provtrace" (\S+)$', (ROOT / "setup.sh").read_text(), re.M)
    assert m, "setup.sh no longer links the provtrace command"
    return m.group(1)


@needs_systemd_tools
def test_unit_verifies(tmp_path):
    """The shipped unit, verified as it runs where setup.sh installed it: the
    same file with ExecStart's command being this venv's provtrace (verify
    checks that the command exists), so the test does not depend on the host's
    /usr/local/bin; test_exec_start_is_what_setup_installs ties the two."""
    text = UNIT.read_text()
    assert text.count("ExecStart=" + _installed_command() + " ") == 1
    unit = tmp_path / "provtrace.service"
    unit.write_text(text.replace("ExecStart=" + _installed_command() + " ", f"ExecStart={PROVTRACE} "))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@needs_systemd_tools
def test_unit_is_sandboxed():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=50", str(UNIT)],
                       capture_output=True, text=True)
    level = re.search(r"Overall exposure level for provtrace.service: ([\d.]+)", r.stdout)
    assert level, r.stdout[-500:] + r.stderr
    assert r.returncode == 0 and float(level.group(1)) <= 5.0, level.group(0)


def test_exec_start_is_what_setup_installs_and_a_daemon_command_the_cli_accepts():
    argv = shlex.split(_service()["ExecStart"])
    assert argv[0] == _installed_command() == "/usr/local/bin/provtrace"
    args = build_parser().parse_args(argv[1:])
    assert args.verb == "daemon"
    assert args.socket == DEFAULT_SOCKET == "/run/provtrace/provtrace.sock"


def test_writable_paths_are_exactly_the_store_and_the_socket():
    svc = _service()
    assert svc["StateDirectory"] == "provtrace" and svc["StateDirectoryMode"] == "0700"
    assert svc["RuntimeDirectory"] == "provtrace" and svc["RuntimeDirectoryMode"] == "0755"
    assert svc["ProtectSystem"] == "strict"
    assert set(svc["ReadWritePaths"].split()) == {"/var/lib/provtrace", "/run/provtrace"}
