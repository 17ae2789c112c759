"""The checked-in generated code is what proto/gen.sh makes from the protos.

Two checks, so that a newer generator somewhere never fails the build while a
.proto edited without regenerating always does:
- the descriptors embedded in the generated modules equal what protoc makes of
  the .proto files now (any protoc version agrees on these);
- with the generator that requirements.lock pins, the files are byte for byte
  what proto/gen.sh writes.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "tracer" / "serve" / "gen"
PROTO = ROOT / "proto"


def _locked(name: str) -> str:
    m = re.search(rf"^{re.escape(name)}==(\S+)", (ROOT / "requirements.lock").read_text(), re.M)
    assert m, f"{name} is not in requirements.lock"
    return m.group(1)


def _without_json_names(msgs) -> None:
    """protoc's descriptor sets carry json_name; the copies embedded in generated code do not."""
    for m in msgs:
        for f in m.field:
            f.ClearField("json_name")
        _without_json_names(m.nested_type)


def test_generated_descriptors_match_the_protos(tmp_path):
    from provtrace.tracer.serve.gen import service_pb2, types_pb2

    out = tmp_path / "set.pb"
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "provtrace" / "v1").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTO),
                    f"--descriptor_set_out={out}", *protos], check=True)
    fresh = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    generated = {m.DESCRIPTOR.name: descriptor_pb2.FileDescriptorProto.FromString(m.DESCRIPTOR.serialized_pb)
                 for m in (service_pb2, types_pb2)}
    assert sorted(fresh) == sorted(generated), "a .proto was added or removed: run bash proto/gen.sh"
    for name, proto in fresh.items():
        _without_json_names(proto.message_type)
        assert generated[name] == proto, f"{name} changed since the code was generated: run bash proto/gen.sh"


def test_generated_code_is_what_the_locked_generator_writes(tmp_path):
    have, want = version("grpcio-tools"), _locked("grpcio-tools")
    if have != want:
        pytest.skip(f"grpcio-tools {have} is not the locked {want} (bash setup.sh --venv-only .venv installs it); "
                    "the descriptor check above still guards the protos")
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(PROTO / "gen.sh"), str(tmp_path)], check=True, env=env)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    checked_in = sorted(p.name for p in GEN.iterdir() if p.is_file())
    assert fresh == checked_in, "run: bash proto/gen.sh"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, GEN, fresh, shallow=False)
    assert not mismatch and not errors, f"stale generated files {mismatch}; run: bash proto/gen.sh"


def test_declared_ranges_admit_only_runtimes_the_generated_code_accepts():
    """A library user who pip-installs provtrace must get a grpcio and protobuf that the code imports with."""
    grpc_code = (GEN / "service_pb2_grpc.py").read_text()
    needs_grpc = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_code).group(1)
    pb_code = (GEN / "service_pb2.py").read_text()
    needs_pb = re.search(r"# Protobuf Python Version: (\S+)", pb_code).group(1)
    deps = {Requirement(r).name: Requirement(r)
            for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, need in (("grpcio", needs_grpc), ("protobuf", needs_pb)):
        floors = [Version(s.version) for s in deps[name].specifier if s.operator in (">=", "==", "~=")]
        assert floors and max(floors) >= Version(need), \
            f"pyproject allows {deps[name]}, but the generated code needs {name}>={need}"


def test_enums_start_with_unspecified():
    from provtrace.tracer.serve.gen import types_pb2

    for enum in types_pb2.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.name
    assert types_pb2.DESCRIPTOR.package == "provtrace.v1"


def test_importing_the_api_does_nothing_visible():
    code = ("import threading, provtrace.tracer.serve.server, provtrace.tracer.serve.client, "
            "provtrace.tracer.correlate.notebook, provtrace.tracer.correlate.iopub; "
            "print(threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1" and out.stderr == ""
