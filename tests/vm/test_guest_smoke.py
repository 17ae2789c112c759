"""Daemon smoke test, the last step of every kernel of the VM matrix (vm/run-matrix).

A real `provtrace daemon` on a temporary socket traces a command sent through
that socket, the run is in its store with the file the command wrote, and the
daemon stops cleanly. Runs on any kernel with working eBPF (it is also an
ordinary privileged test here)."""

from __future__ import annotations

import os

import pytest

from tests.integration.helpers import pt, running_daemon, stored_run

pytestmark = pytest.mark.privileged


def test_daemon_traces_a_command_through_its_socket(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    with running_daemon() as d:
        r = pt("run", "--socket", d["socket"], "--json-out", str(tmp_path / "run.json"), "--",
               "sh", "-c", "echo x > f", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "f").read_text() == "x\n"
        import json  # noqa: PLC0415

        run_id = json.loads((tmp_path / "run.json").read_text())["run"]["id"]
        doc = stored_run(d["db"], run_id)
        written = [f for f in doc["files"] if f["path"] == str(tmp_path / "f")]
        assert written and "write" in written[0]["access"], doc["files"]
