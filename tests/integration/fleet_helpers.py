"""Helpers for the fleet tests: hosts simulated as separate stores with their
own host ids, a real PostgreSQL (conftest `pg`), checks that the central
store holds exactly what each host committed."""

from __future__ import annotations

import os
import socket
import threading
import time

import psycopg

from provtrace.tracer.store import sqlite as S


def synthetic_store(path: str, files: int, uid: int = 0, user: str = "root", start_us: int | None = None) -> str:
    """A real store file with one run of `files` FILE records (paths /data/f<i>):
    volume for the fault tests without tracing thousands of commands."""
    start_us = start_us or int(time.time() * 1e6)
    store = S.Store(path)
    try:
        rid = store.new_run(f"synthetic-{os.path.basename(path)}-{uid}",
                            {"id": f"synthetic-{os.path.basename(path)}-{uid}", "kind": "command",
                             "backend": "ptrace", "uid": uid, "user": user, "host": "sim",
                             "started": "2026-12-07T00:00:00.000000Z", "start_us": start_us})
        store.append(rid, S.PROCESS, {"pid": 4242, "ppid": 1, "exe": "/bin/true", "argv": ["true"],
                                      "cwd": "/", "uid": uid, "started_us": start_us, "ended_us": start_us + 10,
                                      "exit_code": 0, "cell": None})
        for i in range(files):
            store.append(rid, S.FILE, [4242, 1 if i % 2 else 2, 10, 10, i, i + 1, None, "d"], p1=f"/data/f{i}")
            if i % 1000 == 999:
                store.flush()
        store.end_run(rid, {"ended": "2026-12-07T00:00:01.000000Z", "exit_code": 0, "lost_events": 0,
                            "complete": True})
    finally:
        store.close()
    return path


def local_chain(db: str) -> tuple[int, str]:
    """(records, head hash hex) of a local store, after `verify` proves its chain."""
    store = S.Store(db, readonly=True)
    try:
        n = store.verify()
        return n, store.head()
    finally:
        store.close()


def assert_central_matches(url: str, host: str, db: str) -> None:
    """The central store holds every record the host committed, once, in a chain
    that recomputes to the host's head, and no loss is recorded for it."""
    n, head = local_chain(db)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq, rid, kind, p1, p2, body, hash FROM records WHERE host_id=%s ORDER BY seq",
                            (host,)).fetchall()
        losses = conn.execute("SELECT seq_from, seq_to, reason FROM losses WHERE host_id=%s", (host,)).fetchall()
        central_head = conn.execute("SELECT head_seq, head_hash FROM hosts WHERE host_id=%s", (host,)).fetchone()
    assert [r[0] for r in rows] == list(range(1, n + 1)), "missing or duplicated records centrally"
    prev = S.GENESIS
    for seq, rid, kind, p1, p2, body, h in rows:
        prev = S.chain_hash(prev, rid, kind, p1 and bytes(p1), p2 and bytes(p2), body)
        assert prev == bytes(h), f"central chain breaks at {seq}"
    assert prev.hex() == head
    assert central_head[0] == n and bytes(central_head[1]).hex() == head
    assert losses == []


def held_mid_batch(url: str, host: str):
    """Lock host's row: a shipper's next ingest then waits inside its
    transaction, its batch staged and uncommitted (a deterministic 'mid-batch')."""
    conn = psycopg.connect(url)
    conn.execute("SELECT 1 FROM hosts WHERE host_id=%s FOR UPDATE", (host,))
    return conn


def shipper_waiting(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name='provtrace' "
                                 "AND wait_event_type='Lock'").fetchone())


def central_head(url: str, host: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT head_seq FROM hosts WHERE host_id=%s", (host,)).fetchone()
    return row[0] if row else 0


class Proxy:
    """A TCP relay to PostgreSQL: the 'network' between a host and the database.
    cut() closes it and every connection through it, as a network cut would."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it; the port closes
        except OSError:
            pass
        self.sock.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
