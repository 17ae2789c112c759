"""Issue 12: each `kill -9` of a daemon left its private .grpc-* folder behind; the
next daemon on that socket folder removes the stale ones, and only those."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from provtrace.tracer.serve.proxy import PublicSocket

# What the daemon does with its socket: the public side, and gRPC listening in the
# private folder (proxy.py); then it waits to be killed.
HOLDER = """
import socket, sys, time
from provtrace.tracer.serve.proxy import PublicSocket
public = PublicSocket(sys.argv[1])
public.open()
grpc = socket.socket(socket.AF_UNIX)
grpc.bind(public.private_path)
grpc.listen()
print(public.private_dir, flush=True)
time.sleep(600)
"""


def killed_holder(path: str) -> str:
    """A real process that owned the socket, killed with SIGKILL; its private folder."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
    private = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.isdir(private)  # what kill -9 leaves
    return private


def grpc_dirs(folder) -> set[str]:
    return {n for n in os.listdir(folder) if n.startswith(".grpc-")}


def test_stale_private_folders_are_removed_and_live_ones_kept(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a daemon's socket folder is root's")
    path = str(tmp_path / "provtrace.sock")
    stale = [killed_holder(path) for _ in range(2)]
    older = tmp_path / ".grpc-k3v9x1q0"  # an older provtrace's name, without a pid; nobody listens
    older.mkdir(mode=0o700)
    (older / "grpc.sock").touch()
    live_other = tmp_path / f".grpc-{os.getpid()}-otherdaemon"  # a daemon on another socket, alive
    live_other.mkdir(mode=0o700)
    listening = tmp_path / ".grpc-listening"  # older name, but someone listens: in use
    listening.mkdir(mode=0o700)
    held = socket.socket(socket.AF_UNIX)
    held.bind(str(listening / "grpc.sock"))
    held.listen()
    public = PublicSocket(path)
    try:
        public.open()
        mine = os.path.basename(public.private_dir)
        assert mine.startswith(f".grpc-{os.getpid()}-")
        assert grpc_dirs(tmp_path) == {mine, live_other.name, listening.name}
        assert not any(os.path.exists(p) for p in stale)
    finally:
        public.close()
        held.close()
    assert grpc_dirs(tmp_path) == {live_other.name, listening.name}  # its own, gone at a clean stop
