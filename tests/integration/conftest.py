"""Fixtures shared by the integration tests that talk to a daemon process."""

from __future__ import annotations

import os

import pytest

from .helpers import running_daemon


@pytest.fixture(scope="module")
def daemon():
    """One real `provtrace daemon` per test module (root: eBPF)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    with running_daemon() as d:
        yield d


@pytest.fixture
def work(tmp_path):
    """An empty working folder for a traced command."""
    d = tmp_path / "w"
    d.mkdir()
    return d
