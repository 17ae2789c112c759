"""What the probes need from a kernel, detected in both directions (docs/kernels.md).

Present: this kernel has the ring buffer, the four tracepoints and every BTF
field, and doctor says so. Absent: a BTF field asked by its pre-5.14 name
(task_struct.state, now __state) is named as moved; a tracefs tree without
one tracepoint is named; and a kernel without the ring buffer, which cannot
be booted here (no Debian kernel older than 5.8 is in the archive), is stood in
for by PROVTRACE_ASSUME_MISSING=ringbuf, a labelled fake: `provtrace run`
then traces with ptrace, warns once, and the run records why."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from provtrace.tracer.capture import btf, ebpf, features
from provtrace.tracer.errors import BTFError

from .helpers import accesses, pt

pytestmark = pytest.mark.privileged


def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root: creating a BPF map")


def test_this_kernel_has_everything_the_probes_need():
    _root()
    assert features.ringbuf_supported() is True
    assert features.missing() == []
    checks = {c["check"]: c for c in json.loads(pt("doctor", "--json", check=True).stdout)["checks"]}
    for name in ("ring buffer", "tracepoints", "BTF offsets"):
        assert checks[name]["ok"], checks[name]
    assert checks["ring buffer"]["detail"] == "BPF_MAP_TYPE_RINGBUF supported"


def test_a_renamed_btf_field_is_named_with_every_other_one():
    """task_struct.state became __state in 5.14: a probe written for the other side of
    that rename asks this kernel's real BTF for a name it does not have (on 5.10 the
    old name is there and the new one is missing; on 6.x the other way round)."""
    parsed = btf.Btf(open(btf.VMLINUX_BTF, "rb").read())
    have = [m for m in ("state", "__state") if _has(parsed, "task_struct", m)]
    assert len(have) == 1, have
    gone = "__state" if have == ["state"] else "state"
    found = features.missing_btf_fields({"GONE": ("task_struct", gone), "HAVE": ("task_struct", have[0]),
                                         "NEVER": ("file", "f_no_such_member")})
    assert [m.feature for m in found] == ["btf_field", "btf_field"]
    text = features.reason(found)
    assert f"task_struct.{gone} " in text and "file.f_no_such_member" in text
    assert f"task_struct.{have[0]} " not in text and "renamed or moved" in text
    with pytest.raises(BTFError) as e:
        btf.offsets_of(parsed, {**btf.WANTED, "GONE": ("task_struct", gone)})
    assert e.value.fields == [f"task_struct.{gone} (struct task_struct has no member {gone})"]


def _has(parsed, struct_name: str, member: str) -> bool:
    try:
        parsed.offset_of(struct_name, member)
    except BTFError:
        return False
    return True


def test_a_missing_tracepoint_is_named(tmp_path):
    """A tracefs tree holding this kernel's real format files, less one."""
    real = next(r for r in ebpf.TRACEFS_ROOTS if os.path.isdir(os.path.join(r, "events")))
    for cat, name in ebpf.TRACEPOINTS:
        if (cat, name) == ("sched", "sched_process_exec"):
            continue
        dst = tmp_path / "events" / cat / name
        dst.mkdir(parents=True)
        shutil.copyfile(os.path.join(real, "events", cat, name, "format"), dst / "format")
    found = features.missing_tracepoints((str(tmp_path),))
    assert [str(m) for m in found] == ["tracepoint sched/sched_process_exec is missing"]
    from provtrace.tracer.doctor import _tracepoints_check  # noqa: PLC0415

    check = _tracepoints_check((str(tmp_path),))
    assert not check["ok"] and "sched/sched_process_exec" in check["detail"]
    assert features.missing_tracepoints((str(tmp_path / "not-mounted"),)) == []


def test_no_ring_buffer_falls_back_to_ptrace_with_the_reason_recorded(tmp_path):
    _root()
    env = {**os.environ, features.ASSUME_ENV: "ringbuf"}
    db, out = str(tmp_path / "s.db"), tmp_path / "out"
    r = pt("run", "--db", db, "--json-out", str(tmp_path / "run.json"), "--",
           "sh", "-c", f"cat /etc/hostname > {out}", env=env)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("provtrace:")]
    assert len(warnings) == 1 and "ring buffer" in warnings[0] and "ptrace" in warnings[0], r.stderr
    assert "Traceback" not in r.stderr
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["run"]["backend"] == "ptrace"
    assert doc["run"]["gaps"].get("ebpf_unavailable") == 1
    detail = next(g for g in doc["run"]["gap_details"] if g["what"] == "ebpf_unavailable")["detail"]
    assert "ring buffer" in detail
    # the run is still captured: its write is there
    assert "write" in accesses(doc, out), doc["files"]

    # asked for eBPF by name, there is no fallback: one line, not a traceback
    r = pt("run", "--db", db, "--backend", "ebpf", "--", "true", env=env)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "ring buffer" in r.stderr and "--backend ptrace" in r.stderr
    checks = {c["check"]: c for c in json.loads(pt("doctor", "--json", env=env).stdout)["checks"]}
    assert not checks["ring buffer"]["ok"] and "test fake" in checks["ring buffer"]["detail"]
