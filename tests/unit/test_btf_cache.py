"""The BTF offsets cache is trusted only when it is ours, and written without
following a symlink (root may run with a user's HOME)."""

from __future__ import annotations

import json
import os

import pytest

from provtrace.tracer.capture.btf import VMLINUX_BTF, kernel_offsets

pytestmark = pytest.mark.skipif(not os.path.exists(VMLINUX_BTF), reason="no kernel BTF here")


def test_a_symlink_at_the_cache_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "provtrace").mkdir()
    # the user's own cache folder, where root runs with the user's HOME: another
    # uid may plant names there (without root, a folder anyone may write to)
    if os.geteuid() == 0:
        os.chown(tmp_path / "provtrace", 65534, 65534)
    else:
        (tmp_path / "provtrace").chmod(0o777)
    cache = tmp_path / "provtrace" / "btf-offsets.json"
    cache.symlink_to(victim)
    offsets = kernel_offsets(cache_dir=str(tmp_path))
    assert victim.read_text() == "keep me"
    assert not cache.is_symlink() and json.loads(cache.read_text())["offsets"] == offsets


def test_a_cache_others_may_write_is_not_trusted(tmp_path):
    true_offsets = kernel_offsets(cache_dir=str(tmp_path))
    cache = tmp_path / "provtrace" / "btf-offsets.json"
    doc = json.loads(cache.read_text())
    doc["offsets"] = {k: 4096 for k in doc["offsets"]}  # planted: steer what the probes read
    cache.write_text(json.dumps(doc))
    os.chmod(cache, 0o666)
    assert kernel_offsets(cache_dir=str(tmp_path)) == true_offsets
    if os.geteuid() == 0:  # another user's file, however private
        cache.write_text(json.dumps(doc))
        os.chmod(cache, 0o600)
        os.chown(cache, 65534, 65534)
        assert kernel_offsets(cache_dir=str(tmp_path)) == true_offsets


def test_a_kernel_without_task_xacct_loses_only_those_offsets():
    """ioac.rchar/wchar exist only with CONFIG_TASK_XACCT: without them the other offsets stand."""
    from pathlib import Path  # noqa: PLC0415

    from provtrace.tracer.capture.btf import OPTIONAL, Btf, _offsets  # noqa: PLC0415
    from provtrace.tracer.errors import BTFError  # noqa: PLC0415

    real = Btf(Path(VMLINUX_BTF).read_bytes(), VMLINUX_BTF)
    full = _offsets(real)
    offset_of = real.offset_of

    def no_xacct(struct_name, member):
        if "ioac" in member:
            raise BTFError(f"struct {struct_name} has no member {member}", VMLINUX_BTF)
        return offset_of(struct_name, member)
    real.offset_of = no_xacct
    partial = _offsets(real)
    assert set(full) - set(partial) == {n for n in OPTIONAL if "IOAC" in n}
    assert {"RSS_STRIDE", "RSS_COUNT", "TASK_UTIME", "TASK_PID"} <= set(partial)
