"""What the eBPF probes need from a kernel, asked of the kernel itself.

Three things differ between the kernels users run and break the probes when
they are absent (docs/kernels.md):

- the BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8): asked by creating
  one, the way libbpf probes map types, never by comparing version numbers
  (distribution kernels backport);
- the tracepoints the probes attach to (tracefs `format` files);
- the struct members read through BTF offsets (renamed or moved fields, such
  as task_struct's `state` that became `__state` in 5.14).

`missing()` names every one that is absent, so that `doctor` can say exactly
what is wrong and `provtrace run` can fall back to ptrace with the reason
recorded as a gap, instead of failing inside bcc.

PROVTRACE_ASSUME_MISSING=ringbuf (comma-separated) makes `missing()` report a
feature as absent although the kernel has it. It exists only so that tests on
a kernel that has everything can check the degraded path; it is a fake, and
says so in every message it causes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from dataclasses import dataclass

from ..errors import CaptureUnavailable

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_RINGBUF = 27
_PAGE = 4096
ASSUME_ENV = "PROVTRACE_ASSUME_MISSING"


@dataclass(frozen=True)
class Missing:
    """One thing the probes need that this kernel does not have."""

    feature: str  # "ringbuf", "tracepoint", "btf_field"
    detail: str   # what exactly, in words

    def __str__(self) -> str:
        return self.detail


def _assumed_missing() -> set[str]:
    return {w.strip() for w in os.environ.get(ASSUME_ENV, "").split(",") if w.strip()}


def ringbuf_supported() -> bool | None:
    """Whether the kernel can create a BPF ring buffer map: True or False, or
    None when it cannot be asked (not permitted: not root, or no bpf())."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    # max_entries, map_flags, then fields left zero. 128 bytes covers them.
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = _BPF_MAP_TYPE_RINGBUF, 0, 0, _PAGE
    fd = libc.syscall(nr, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return True
    err = ctypes.get_errno()
    if err in (errno.EPERM, errno.EACCES, errno.ENOSYS):
        return None
    return False  # EINVAL: an unknown map type, the answer of kernels before 5.8


def missing_btf_fields(wanted: dict[str, tuple[str, str]] | None = None,
                       btf_path: str | None = None) -> list[Missing]:
    """Every wanted (struct, member) that the kernel's BTF lacks, by name.
    With the default table this is kernel_offsets(), cached per kernel."""
    from pathlib import Path  # noqa: PLC0415

    from ..errors import BTFError  # noqa: PLC0415
    from . import btf  # noqa: PLC0415

    path = btf_path or btf.VMLINUX_BTF
    try:
        if wanted is None:
            btf.kernel_offsets(path)
        else:
            btf.offsets_of(btf.Btf(Path(path).read_bytes(), path), wanted)
    except BTFError as e:
        if not e.fields:
            raise  # no BTF to read at all: the caller's own message says so
        return [Missing("btf_field", f"BTF field {f} is missing: renamed or moved in this kernel")
                for f in e.fields]
    return []


def missing_tracepoints(roots: tuple[str, ...] | None = None) -> list[Missing]:
    from .ebpf import TRACEFS_ROOTS, TRACEPOINTS, tracepoint_fields  # noqa: PLC0415

    roots = roots or TRACEFS_ROOTS
    if not any(os.path.isdir(os.path.join(r, "events")) for r in roots):
        return []  # tracefs not mounted: its own check says so, not a missing tracepoint
    return [Missing("tracepoint", f"tracepoint {c}/{n} is missing")
            for c, n in TRACEPOINTS if tracepoint_fields(c, n, roots) is None]


def missing(roots: tuple[str, ...] | None = None, btf_path: str | None = None) -> list[Missing]:
    """Everything the probes need and this kernel lacks; empty when all is there.
    A check that cannot be made (no BTF file at all, no tracefs) is left to the
    caller's own message, not reported here."""
    out: list[Missing] = []
    assumed = _assumed_missing()
    if "ringbuf" in assumed:
        out.append(Missing("ringbuf", f"BPF ring buffer reported missing by {ASSUME_ENV} (a test fake)"))
    elif ringbuf_supported() is False:
        out.append(Missing("ringbuf", "BPF ring buffer (BPF_MAP_TYPE_RINGBUF) is not supported: "
                                      "the kernel is older than 5.8 or lacks it"))
    try:
        out += missing_tracepoints(roots)
    except OSError:
        pass
    try:
        out += missing_btf_fields(btf_path=btf_path)
    except CaptureUnavailable:
        pass  # no readable BTF: reported by its own check
    return out


def reason(found: list[Missing]) -> str:
    """One line for a list of missing features."""
    return "; ".join(str(m) for m in found)


def require() -> None:
    """Raise KernelLacks naming everything the probes need and the kernel lacks."""
    found = missing()
    if found:
        raise KernelLacks(found)


class KernelLacks(CaptureUnavailable):
    """This kernel lacks something the eBPF probes need (docs/kernels.md)."""

    def __init__(self, found: list[Missing]) -> None:
        self.missing = found
        super().__init__(f"this kernel cannot run the eBPF probes: {reason(found)}; "
                         "trace with --backend ptrace (see 'provtrace doctor')")
