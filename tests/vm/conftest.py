"""Tests marked `vm` boot kernels under QEMU (vm/run-matrix): minutes each, and
a few hundred MB of Debian packages. They run when PROVTRACE_VM=1, and in CI
(CI=true) unless PROVTRACE_VM=0: there the one fast kernel, Debian's 6.1,
proves the probes on a kernel other than this machine's (docs/kernels.md)."""

from __future__ import annotations

import os

import pytest


def vm_tests_enabled(env=os.environ) -> bool:
    chosen = env.get("PROVTRACE_VM")
    if chosen is not None:
        return chosen == "1"
    return env.get("CI") == "true"


def pytest_collection_modifyitems(config, items):
    if vm_tests_enabled():
        return
    skip = pytest.mark.skip(reason="boots a kernel under QEMU: set PROVTRACE_VM=1 (docs/kernels.md; CI runs it)")
    for item in items:
        if item.get_closest_marker("vm"):
            item.add_marker(skip)
