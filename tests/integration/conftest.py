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


@pytest.fixture(scope="session")
def pg():
    """One real PostgreSQL 15 server for the session (tests/pgserver.py); each test makes its own database."""
    from tests.pgserver import PgServer, available  # noqa: PLC0415

    why = available()
    if why:
        pytest.skip(why)
    server = PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def fleet_db(pg, request):
    """A fresh database with the fleet schema migrated; yields its URL."""
    from provtrace.tracer.fleet.migrate import migrate  # noqa: PLC0415

    name = "fleet_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    pg.psql(f"DROP DATABASE IF EXISTS {name}")
    url = pg.create_db(name)
    migrate(url)
    return url
