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
