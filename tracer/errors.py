"""Typed errors. Each message says what failed, on what, and what to do.

The CLI turns any TracerError into one line on stderr and a non-zero exit;
tracebacks appear only with --debug.
"""

from __future__ import annotations


class TracerError(Exception):
    """Base of every error provtrace raises on purpose."""

    exit_code = 1


class UsageError(TracerError):
    """The user asked for something malformed (bad flag, unknown run id)."""

    exit_code = 2


class CaptureUnavailable(TracerError):
    """A capture backend cannot run here; the message says why and how to fix it."""


class ProbeLoadError(CaptureUnavailable):
    """bcc failed to compile or attach the probes."""


class BTFError(CaptureUnavailable):
    """The running kernel's BTF is missing or lacks a struct/member we need."""

    def __init__(self, what: str, path: str = "/sys/kernel/btf/vmlinux",
                 fields: list[str] | None = None) -> None:
        self.what = what
        self.path = path
        self.fields = fields or []  # the struct members missing, when that is the cause
        super().__init__(f"BTF {path}: {what}")


class CommandNotFound(TracerError):
    """The command to trace could not be executed."""

    exit_code = 127

    def __init__(self, argv0: str, reason: str) -> None:
        self.argv0 = argv0
        super().__init__(f"cannot run {argv0!r}: {reason}")


class StoreError(TracerError):
    """The SQLite store is unreadable, of a newer schema, or otherwise unusable."""


class StoreWriteError(StoreError):
    """The store could not take a write (a full disk, an I/O error): what was
    being written is counted as lost, and the command being traced goes on."""


class RunNotFound(UsageError):
    def __init__(self, ref: str, db: str) -> None:
        self.ref = ref
        super().__init__(f"no run {ref!r} in store {db} (list them with: provtrace runs)")


class ChainBroken(StoreError):
    """The tamper-evident chain does not verify."""

    def __init__(self, seq: int, why: str) -> None:
        self.seq = seq
        super().__init__(f"chain broken at record {seq}: {why}")


class StorageCorrupt(StoreError):
    """SQLite's own structures are damaged (pages, indexes): not a chain question.

    Exit code 4, so that scripts tell a damaged file (restore it) from a
    rewritten history (investigate it)."""

    exit_code = 4

    def __init__(self, db: str, problems: list[str]) -> None:
        self.problems = problems
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"storage of {db} is corrupt: {problems[0]}{more}; the chain was not checked "
                         "(restore the file from a backup; PRAGMA integrity_check lists every problem)")


class AnchorMismatch(StoreError):
    """The chain verifies, but not up to an anchored head: history was cut or rewritten."""

    exit_code = 5


class ProcessError(TracerError):
    """An operation on a specific process failed (carries pid and name, like psutil)."""

    def __init__(self, pid: int, name: str | None, msg: str) -> None:
        self.pid = pid
        self.name = name
        label = f"pid {pid}" + (f" ({name})" if name else "")
        super().__init__(f"{label}: {msg}")
