"""Tests marked `vm` boot kernels under QEMU (vm/run-matrix) and run only with
PROVTRACE_VM=1: minutes each, and a few hundred MB of Debian packages."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PROVTRACE_VM") == "1":
        return
    skip = pytest.mark.skip(reason="boots a kernel under QEMU: set PROVTRACE_VM=1 (docs/kernels.md)")
    for item in items:
        if item.get_closest_marker("vm"):
            item.add_marker(skip)
