"""The checked-in generated code is what proto/gen.sh makes from the protos."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "tracer" / "api" / "gen"


def test_generated_code_is_fresh(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "proto" / "gen.sh"), str(tmp_path)], check=True, env=env)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    checked_in = sorted(p.name for p in GEN.iterdir() if p.is_file())
    assert fresh == checked_in, "run: bash proto/gen.sh"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, GEN, fresh, shallow=False)
    assert not mismatch and not errors, f"stale generated files {mismatch}; run: bash proto/gen.sh"


def test_enums_start_with_unspecified():
    from provtrace.tracer.api.gen import types_pb2

    for enum in types_pb2.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.name
    assert types_pb2.DESCRIPTOR.package == "provtrace.v1"


def test_importing_the_api_does_nothing_visible():
    code = ("import threading, provtrace.tracer.api.server, provtrace.tracer.api.client, "
            "provtrace.tracer.correlate.notebook, provtrace.tracer.correlate.iopub; "
            "print(threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1" and out.stderr == ""
