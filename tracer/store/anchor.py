"""Anchors: the chain's head kept somewhere the store's owner cannot rewrite.

The hash chain proves that nothing *inside* the recorded history was changed,
but whoever can write the store can also cut its end and re-chain new records
on top. An anchor (the head hash and its sequence, noted at some moment and
kept elsewhere: another host, an append-only log, journald, a signed file)
closes that gap: `verify --expect-head HASH@SEQ` proves that every record up
to SEQ is still there, unchanged.

An anchor line, as `provtrace head` prints it and the daemon appends it:

    2026-12-07T18:45:00.123456Z provtrace-head 3fa9…@1200 db=/var/lib/provtrace/provtrace.db host=h1
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess
import tempfile
from dataclasses import dataclass

from ..errors import UsageError

SSH_NAMESPACE = "provtrace-head"
_ANCHOR = re.compile(r"^(?P<hash>[0-9a-f]{64})(?:@(?P<seq>\d+))?$")
_LINE = re.compile(r"\bprovtrace-head (?P<anchor>[0-9a-f]{64}@\d+)(?: db=(?P<db>\S+))?")


@dataclass(frozen=True)
class Anchor:
    hash: str
    seq: int | None = None

    def __str__(self) -> str:
        return self.hash if self.seq is None else f"{self.hash}@{self.seq}"


def parse_anchor(text: str) -> Anchor:
    m = _ANCHOR.match(text.strip().lower())
    if m is None:
        raise UsageError(f"not an anchor: {text!r}; expected HASH or HASH@SEQ as `provtrace head` prints it")
    return Anchor(m.group("hash"), int(m.group("seq")) if m.group("seq") else None)


def anchor_line(head: str, seq: int, db: str) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{now} provtrace-head {head}@{seq} db={os.path.abspath(db)} host={socket.gethostname()}"


def anchors_in_log(path: str, db: str) -> list[Anchor]:
    """The anchors a log holds for this store (lines naming another db are skipped)."""
    want = os.path.abspath(db)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read anchor log {path}: {e.strerror}") from None
    out = []
    for line in lines:
        m = _LINE.search(line)
        if m and (m.group("db") is None or m.group("db") == want):
            out.append(parse_anchor(m.group("anchor")))
    return out


def append_anchor(path: str, line: str) -> None:
    """One line, appended with O_APPEND (never truncates, never follows a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def sign_ssh(text: str, key: str) -> str:
    """An SSH signature (armored) of text, made by the site's own ssh-keygen.

    Check it with: ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n provtrace-head -s SIG < text
    """
    with tempfile.TemporaryDirectory(prefix="provtrace-sign-") as d:
        msg = os.path.join(d, "head")
        with open(msg, "w") as f:
            f.write(text)
        try:
            r = subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", key, "-n", SSH_NAMESPACE, msg],
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UsageError("ssh-keygen is not installed (apt-get install openssh-client)") from None
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["failed"])[-1]
            raise UsageError(f"ssh-keygen could not sign with {key}: {why}")
        with open(msg + ".sig") as f:
            return f.read()
